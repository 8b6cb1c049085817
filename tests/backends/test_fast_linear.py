"""oneDNN Linear for CPU inference: same numbers as nn.Linear, and only where it applies."""

from __future__ import annotations

import pytest
import torch

from agegender_sb.backends.fast_linear import OneDNNLinear, onednn_available, use_onednn_linear
from agegender_sb.model.encoder import Wav2Vec2Encoder


def _pair(seed=0):
    torch.manual_seed(seed)
    plain = torch.nn.Linear(64, 96)
    fast = use_onednn_linear(torch.nn.Sequential(torch.nn.Linear(64, 96)))[0]
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def test_same_numbers_in_inference():
    plain, fast = _pair()
    x = torch.randn(3, 50, 64)
    with torch.inference_mode():
        assert fast._fast(x) == onednn_available()
        assert torch.allclose(fast(x), plain(x), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")
def test_fast_path_is_taken_on_this_machine():
    _, fast = _pair()
    with torch.no_grad():
        assert fast._fast(torch.randn(2, 64))
    assert not fast._fast(torch.randn(2, 64, dtype=torch.float64))
    container = torch.nn.Sequential(fast)
    use_onednn_linear(container, enabled=False)
    assert type(container[0]) is torch.nn.Linear


def test_training_and_autocast_take_the_usual_path():
    plain, fast = _pair(1)
    x = torch.randn(4, 64)
    assert not fast._fast(x)  # grad enabled and weight requires grad
    fast(x).sum().backward()
    plain(x).sum().backward()
    assert torch.allclose(fast.weight.grad, plain.weight.grad)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fast._fast(x)
        assert fast(x).dtype == torch.bfloat16


def test_encoder_uses_it_and_keeps_its_state_dict_keys():
    kwargs = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=37, conv_dim=[16] * 7, num_conv_pos_embeddings=16,
                  num_conv_pos_embedding_groups=2)
    fast = Wav2Vec2Encoder(kwargs).eval()
    plain = Wav2Vec2Encoder(kwargs, onednn_linear=False).eval()
    assert any(isinstance(m, OneDNNLinear) for m in fast.modules())
    assert not any(isinstance(m, OneDNNLinear) for m in plain.modules())
    assert list(fast.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 8000)
    with torch.inference_mode():
        assert torch.allclose(fast(x)[0], plain(x)[0], atol=1e-5)
