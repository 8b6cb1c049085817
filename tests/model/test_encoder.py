"""Building the encoder for a loader that fills every weight next (``weights_loaded_next``):
no random numbers drawn, the same modules, and once loaded the same numbers."""

from __future__ import annotations

import threading

import torch

from agegender_sb.model.encoder import Wav2Vec2Encoder, weights_loaded_next

CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 37, "conv_dim": [16] * 7, "num_conv_pos_embeddings": 16,
          "num_conv_pos_embedding_groups": 2, "feat_extract_norm": "layer",
          "do_stable_layer_norm": True}


def _layout(encoder):
    return ([(k, tuple(v.shape), v.dtype, v.device.type) for k, v in encoder.state_dict().items()],
            [type(m).__qualname__ for m in encoder.modules()])  # parametrized classes: per module


def test_an_encoder_built_to_be_loaded_draws_no_random_numbers():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    others = []
    with weights_loaded_next() as built:
        enc = Wav2Vec2Encoder(CONFIG)
        thread = threading.Thread(target=lambda: others.append(Wav2Vec2Encoder(CONFIG)))
        thread.start()
        thread.join()
    assert built == [enc]  # another thread's encoder is built as usual, and not listed
    torch.manual_seed(0)  # the thread drew from the same generator
    assert torch.equal(torch.get_rng_state(), before)
    with weights_loaded_next():
        Wav2Vec2Encoder(CONFIG)
    assert torch.equal(torch.get_rng_state(), before)  # nothing drawn inside
    plain = Wav2Vec2Encoder(CONFIG)  # after the block: initialised as usual
    assert not torch.equal(torch.get_rng_state(), before)
    assert _layout(enc) == _layout(plain) == _layout(others[0])

    enc.load_state_dict(plain.state_dict())
    x, lens = torch.randn(2, 4000), torch.tensor([1.0, 0.7])
    with torch.inference_mode():
        (a, mask_a), (b, mask_b) = enc.eval()(x, lens), plain.eval()(x, lens)
    assert torch.equal(a, b) and torch.equal(mask_a, mask_b)
