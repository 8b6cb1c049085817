"""Our plain-torch wav2vec2 against transformers' ``Wav2Vec2Model`` (the reference).

Same random weights through ``state_dict`` (which must have the same keys and shapes), fp32 on
the CPU. Tolerance: 1e-6 absolute on the last hidden state at valid frames (identical operations
in the same order; measured differences are 0 to ~5e-7), for pre- and post-layer-norm
transformers, layer- and group-norm feature encoders, both attention kernels, with and
without padding.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Wav2Vec2Config as HFConfig
from transformers import Wav2Vec2Model as HFModel

from agegender_sb.errors import SettingsError
from agegender_sb.model.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model, time_mask

TOL = 1e-6
TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
            conv_dim=[16, 16, 16, 16, 16, 16, 24], conv_kernel=[10, 3, 3, 3, 3, 2, 2],
            conv_stride=[5, 2, 2, 2, 2, 2, 2], num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4, conv_bias=True, layer_norm_eps=1e-5,
            mask_time_prob=0.05)


def _pair(seed, attention="sdpa", **overrides):
    values = {**TINY, **overrides}
    torch.manual_seed(seed)
    hf_config = HFConfig(**values)
    hf_config._attn_implementation = attention
    hf = HFModel(hf_config).eval()
    with torch.no_grad():  # non-trivial biases and norm affines
        for p in hf.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    ours = Wav2Vec2Model(Wav2Vec2Config.from_mapping(values), implementation=attention).eval()
    theirs = hf.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.items()}
    ours.load_state_dict(theirs, strict=True)
    return ours, hf


def _batch(seed=3):
    g = torch.Generator().manual_seed(seed)
    wavs = torch.randn(3, 9000, generator=g)
    lengths = torch.tensor([9000, 6100, 2500])
    mask = (torch.arange(9000)[None, :] < lengths[:, None]).long()
    return wavs * mask, mask


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("norm,stable", [("layer", True), ("layer", False), ("group", False)])
def test_matches_transformers(norm, stable, attention):
    ours, hf = _pair(7, attention, feat_extract_norm=norm, do_stable_layer_norm=stable)
    wavs, mask = _batch()
    with torch.no_grad():
        # one signal, no mask
        single = ours(wavs[:1])
        assert (single - hf(wavs[:1]).last_hidden_state).abs().max() < TOL
        # a padded batch: valid frames as transformers gives them
        out = ours(wavs, attention_mask=mask)
        ref = hf(wavs, attention_mask=mask).last_hidden_state
    frames = ours.frame_lengths(mask.sum(-1))
    assert frames.tolist() == hf._get_feat_extract_output_lengths(mask.sum(-1)).tolist()
    for i, n in enumerate(frames.tolist()):
        assert (out[i, :n] - ref[i, :n]).abs().max() < TOL
    assert out.shape == ref.shape


def test_training_mode_masks_and_drops_like_transformers_configures():
    """SpecAugment and LayerDrop only in training; eval stays deterministic."""
    ours, _ = _pair(1, layerdrop=0.0, mask_time_prob=0.5, mask_time_length=2,
                    hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                    feat_proj_dropout=0.0)
    wav = torch.randn(1, 9000)
    with torch.no_grad():
        eval_out = ours(wav)
        assert torch.equal(eval_out, ours(wav))
        ours.train()
        torch.manual_seed(0)
        train_out = ours(wav)
    assert not torch.allclose(train_out, eval_out)  # masked frames replaced
    ours.config.mask_time_prob = 0.0
    with torch.no_grad():
        assert (ours(wav) - eval_out).abs().max() < TOL  # no other training-only change
    ours.config.layerdrop = 1.0  # every layer dropped: the stable encoder's final norm only
    with torch.no_grad():
        dropped = ours(wav)
        features = ours.feature_projection(ours.feature_extractor(wav).transpose(1, 2))
        expected = ours.encoder.layer_norm(features + ours.encoder.pos_conv_embed(features))
    assert (dropped - expected).abs().max() < TOL


def test_time_mask_spans_stay_inside_valid_frames():
    torch.manual_seed(0)
    lengths = torch.tensor([200, 50, 5])
    mask = time_mask(lengths, 200, prob=0.3, span=10, min_masks=2)
    assert not mask[1, 50:].any() and not mask[2].any()  # 5 frames: no span of 10 fits
    assert mask[0].sum() >= 10 and mask[1].sum() >= 10  # at least min_masks spans (may overlap)
    # the expected count: prob * length / span spans of span frames (overlaps lower it)
    counts = [int(time_mask(torch.tensor([1000]), 1000, 0.2, 10)[0].sum()) for _ in range(20)]
    assert 120 < sum(counts) / 20 <= 200
    # never more spans than fit end to end (transformers' cap): 5 spans of 10 in 50 frames,
    # however many min_masks asks for, cover about two thirds of them (20 would cover ~all)
    cover = [float(time_mask(torch.tensor([50]), 50, 1.0, 10, min_masks=20)[0].float().mean())
             for _ in range(50)]
    assert 0.5 < sum(cover) / 50 < 0.85


def test_configuration_is_checked():
    with pytest.raises(SettingsError, match="unknown field"):
        Wav2Vec2Config.from_mapping({"hidden_sise": 32})
    with pytest.raises(SettingsError, match="adapter"):
        Wav2Vec2Config.from_mapping({"add_adapter": True})
    with pytest.raises(SettingsError, match="feat_extract_norm"):
        Wav2Vec2Config(feat_extract_norm="batch")
    with pytest.raises(SettingsError, match="hidden_act"):
        Wav2Vec2Config(hidden_act="gelu_fast")
    with pytest.raises(SettingsError, match="same length"):
        Wav2Vec2Config(conv_dim=[8, 8], conv_kernel=[3], conv_stride=[2])
    with pytest.raises(SettingsError, match="multiple"):
        Wav2Vec2Model(Wav2Vec2Config(hidden_size=30, num_attention_heads=4,
                                    num_conv_pos_embedding_groups=2))
    # fields of transformers' config that the base model does not use are accepted
    assert Wav2Vec2Config.from_mapping({"vocab_size": 32, "final_dropout": 0.1}).hidden_size == 768
