"""Tiny wav2vec2 encoders and a padded batch for the CPU-speed and fast-path tests."""

from __future__ import annotations

import torch

from agegender_sb.model.encoder import Wav2Vec2Encoder

KWARGS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
              conv_dim=[16] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
              feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)


def encoder_pair(seed=0, **overrides):
    """The same random weights twice: with the CPU speed modules, and with transformers'
    own (``onednn_linear=False``)."""
    torch.manual_seed(seed)
    fast = Wav2Vec2Encoder({**KWARGS, **overrides}).eval()
    plain = Wav2Vec2Encoder({**KWARGS, **overrides}, onednn_linear=False).eval()
    with torch.no_grad():  # non-zero biases and layer-norm affines: the tests are stricter
        for p in fast.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    plain.load_state_dict(fast.state_dict())
    return fast, plain


def padded_batch(seed=1):
    """Three signals of 12000, 7000 and 3001 samples, zero-padded, with relative lengths."""
    g = torch.Generator().manual_seed(seed)
    wavs = torch.randn(3, 12000, generator=g)
    wavs[1, 7000:] = 0
    wavs[2, 3001:] = 0
    return wavs, torch.tensor([1.0, 7000 / 12000, 3001 / 12000])
