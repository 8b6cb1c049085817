"""The opt-in fast paths (bf16, int8): approximate, and only where asked for."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch
from tiny_encoders import encoder_pair, padded_batch

from agegender_sb import AgeGenderClassifier
from agegender_sb.backends.cpu_speed import FastFeatureEncoder, cached, plain_torch_modules
from agegender_sb.backends.fast_linear import OneDNNLinear, onednn_available
from agegender_sb.backends.fast_paths import (
    BF16Attention,
    BF16FeatureEncoder,
    BF16FeedForward,
    BF16Linear,
    BF16PositionalConv,
    bf16_available,
    enable_fast_path,
    native_bf16,
    resolve_fast_path,
)
from agegender_sb.model import wav2vec2 as w2v

needs_onednn = pytest.mark.skipif(not bf16_available(),
                                  reason="torch built without oneDNN's bfloat16 operators")


def _bf16(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to bfloat16, in float64."""
    return t.bfloat16().double()


# ---------------------------------------------------------------- bf16
@needs_onednn
@pytest.mark.parametrize("shape", [(1, 48), (7, 48), (2, 5, 48), (300, 48)])
def test_bf16_linear_is_the_bf16_rounded_product(shape):
    """Inputs, weights and bias rounded to bfloat16, exact (float64) products, the result
    rounded to bfloat16: BF16Linear agrees with that up to float32 accumulation; it is not
    the float32 result."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 40)
    x = torch.randn(*shape)
    exact = torch.nn.functional.linear(x, lin.weight, lin.bias)
    emulated = torch.nn.functional.linear(_bf16(x), _bf16(lin.weight), _bf16(lin.bias))
    lin.__class__ = BF16Linear
    with torch.inference_mode():
        out = lin(x)
    assert out.dtype == torch.float32 and out.shape == exact.shape
    # bfloat16 output rounding: half a unit in the last place, 2**-9 relative
    assert ((out.double() - emulated).abs() <= 2 ** -8 * emulated.abs() + 1e-6).all()
    assert (out - exact).abs().max() > 1e-5  # really bfloat16
    assert (out - exact).abs().max() < 0.02 * exact.abs().max()


@needs_onednn
def test_bf16_feed_forward_fuses_the_exact_gelu():
    torch.manual_seed(1)
    ff = w2v.Wav2Vec2FeedForward(w2v.Wav2Vec2Config(hidden_size=64, intermediate_size=96)).eval()
    x = 3 * torch.randn(2, 9, 64)
    d1, d2 = ff.intermediate_dense, ff.output_dense
    inner = torch.nn.functional.gelu(  # erf GELU on the exact bf16-input product
        torch.nn.functional.linear(_bf16(x), _bf16(d1.weight), _bf16(d1.bias)))
    emulated = torch.nn.functional.linear(_bf16(inner), _bf16(d2.weight), _bf16(d2.bias))
    exact = ff(x)
    ff.__class__ = BF16FeedForward
    with torch.inference_mode():
        out = ff(x)
    scale = emulated.abs().max()
    assert (out.double() - emulated).abs().max() < 0.01 * scale
    assert (out - exact).abs().max() > 1e-5


@needs_onednn
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_bf16_attention_honours_the_mask(implementation):
    torch.manual_seed(2)
    att = w2v.Wav2Vec2Attention(32, 4, implementation=implementation).eval()
    h = torch.randn(2, 9, 32)
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., 6:] = False  # the second row's last 3 frames are padding
    with torch.no_grad():
        ref = att(h, attention_mask=mask)
        att.__class__ = BF16Attention
        out = att(h, attention_mask=mask)
        h2 = h.clone()
        h2[1, 6:] = 100.0  # what padding holds must not reach the real frames
        out2 = att(h2, attention_mask=mask)
    assert out.dtype == torch.float32
    assert 0 < (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert (out2[1, :6] - out[1, :6]).abs().max() < 1e-6
    assert (out2[1, 6:] - out[1, 6:]).abs().max() > 0.1  # their own queries moved


@needs_onednn
def test_bf16_attention_falls_back_in_training():
    att = w2v.Wav2Vec2Attention(32, 4, dropout=0.0)
    h = torch.randn(1, 5, 32)
    ref = att(h)
    att.__class__ = BF16Attention
    out = att(h)  # parameters need gradients: the float32 path
    assert torch.equal(out, ref) and out.requires_grad


@needs_onednn
def test_bf16_fast_path_swaps_modules_and_keeps_the_state_dict():
    fast, plain = encoder_pair()
    keys = {k: v.clone() for k, v in fast.state_dict().items()}
    assert enable_fast_path(fast, "bf16") is fast
    m = fast.model
    assert type(m.feature_extractor) is BF16FeatureEncoder
    assert type(m.encoder.pos_conv_embed) is BF16PositionalConv
    layer = m.encoder.layers[0]
    assert type(layer.feed_forward) is BF16FeedForward
    assert type(layer.attention) is BF16Attention
    assert all(type(lin) is BF16Linear for lin in (layer.attention.q_proj,
                                                   layer.attention.out_proj))
    assert type(m.feature_projection.projection) is OneDNNLinear  # outside the transformer
    state = fast.state_dict()
    assert list(state) == list(keys)
    assert all(torch.equal(state[k], v) for k, v in keys.items())
    wavs, lens = padded_batch()
    separate_projections = []  # the fused path never calls q_proj on its own
    layer.attention.q_proj.register_forward_hook(lambda *a: separate_projections.append(1))
    with torch.inference_mode():
        f_frames, f_mask = fast(wavs, lens)  # a padded batch: with an attention mask
        p_frames, p_mask = plain(wavs, lens)
        f_feat = m.feature_extractor(wavs)
        p_feat = plain.model.feature_extractor(wavs)
    assert separate_projections == []
    assert torch.equal(f_mask, p_mask)
    assert f_frames.dtype == f_feat.dtype == torch.float32
    for f, p in ((f_feat, p_feat), (f_frames, p_frames)):
        dev = (f - p).abs().max()
        assert 1e-5 < dev < 0.05 * p.abs().max()
    plain_torch_modules(fast)  # what ONNX export calls: every class back
    assert type(m.feature_extractor) is w2v.Wav2Vec2FeatureEncoder
    assert type(layer.feed_forward) is w2v.Wav2Vec2FeedForward
    assert type(layer.attention) is w2v.Wav2Vec2Attention
    assert type(layer.attention.q_proj) is torch.nn.Linear
    with torch.inference_mode():
        assert (fast(wavs, lens)[0] - p_frames).abs().max() < 1e-5


@needs_onednn
def test_bf16_packed_weights_follow_weight_changes():
    fast, _ = encoder_pair()
    enable_fast_path(fast, "bf16")
    wavs, lens = padded_batch()
    with torch.inference_mode():
        fast(wavs, lens)  # fills the caches
    other, _ = encoder_pair(seed=7)
    fast.load_state_dict(other.state_dict())  # in-place copies: new tensor versions
    fresh, _ = encoder_pair(seed=7)
    enable_fast_path(fresh, "bf16")
    with torch.inference_mode():
        assert torch.equal(fast(wavs, lens)[0], fresh(wavs, lens)[0])


@needs_onednn
def test_bf16_training_and_gradients_take_the_float32_path():
    fast, plain = encoder_pair(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                        feat_proj_dropout=0.0, layerdrop=0.0, apply_spec_augment=False)
    enable_fast_path(fast, "bf16")
    fast.train()
    plain.train()
    wavs, _ = padded_batch()
    a, b = fast(wavs)[0], plain(wavs)[0]
    assert (a - b).abs().max() < 1e-5
    a.square().mean().backward()
    b.square().mean().backward()
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        if q.grad is not None:
            assert (p.grad - q.grad).norm() <= 1e-5 * q.grad.norm() + 1e-9, name


@needs_onednn
def test_bf16_classifier_is_close_to_float32(tiny_checkpoint):
    fp32 = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    fast = AgeGenderClassifier.from_hparams(source=tiny_checkpoint, fast_path="bf16")
    assert fast.fast_path == "bf16"
    assert type(fast.mods.model.age_head.dense) is torch.nn.Linear  # heads stay float32
    wavs, lens = padded_batch()
    a, b = fp32.predict_batch(wavs, lens), fast.predict_batch(wavs, lens)
    dev = (a.embedding - b.embedding).abs().max()
    assert 0 < dev < 0.05 * a.embedding.abs().max()
    assert (a.age_raw - b.age_raw).abs().max() < 0.02
    assert fast.fingerprint == fp32.fingerprint  # of the float32 weights


def test_bf16_operators_run_wherever_onednn_can_on_x86():
    """The bf16 tests skip without oneDNN's bfloat16 operators. On x86 builds with oneDNN those
    run (emulated where the CPU lacks bfloat16 arithmetic) exactly where the CPU has AVX-512
    BW/VL/DQ or AVX-NE-CONVERT (oneDNN's requirement), so a skip there would be a bug, and an
    AVX2-only CPU must be told so instead of failing inside oneDNN."""
    if not (onednn_available() and platform.machine().lower() in ("x86_64", "amd64")):
        pytest.skip("not an x86 build with oneDNN")
    flags = set(next((line.split(":", 1)[1].split() for line in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), []))
    capable = {"avx512bw", "avx512vl", "avx512dq"} <= flags or "avx_ne_convert" in flags
    assert bf16_available() == capable


def test_native_bf16_reads_the_cpu_flags():
    assert native_bf16("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    assert native_bf16("flags\t\t: fpu avx512f avx512_bf16\n")
    assert not native_bf16("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert not native_bf16("")  # no /proc/cpuinfo: not known to be there


def test_auto_resolves_by_the_cpu():
    expected = "bf16" if native_bf16() and bf16_available() else "int8"
    assert resolve_fast_path("auto") == expected
    assert resolve_fast_path("int8-cnn") == "int8-cnn"
    with pytest.raises(ValueError, match="kind must be one of"):
        resolve_fast_path("fp8")


@needs_onednn
def test_bf16_warns_where_the_cpu_emulates_it(monkeypatch):
    import agegender_sb.backends.fast_paths as fast_paths

    monkeypatch.setattr(fast_paths, "native_bf16", lambda cpuinfo=None: False)
    fast, _ = encoder_pair()
    with pytest.warns(RuntimeWarning, match="emulated"):
        enable_fast_path(fast, "bf16")
    assert resolve_fast_path("auto") == "int8"


def test_a_second_fast_path_is_refused():
    fast, _ = encoder_pair()
    enable_fast_path(fast, "int8")
    with pytest.raises(ValueError, match="already runs the 'int8' fast path"):
        enable_fast_path(fast, "bf16")


# ---------------------------------------------------------------- int8
def test_int8_fast_path_is_close_and_opt_in(tiny_checkpoint):
    fp32 = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    fast = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    assert enable_fast_path(fast.mods.model, "int8") is fast.mods.model
    model = fast.mods.model
    layer = model.encoder.model.encoder.layers[0]
    for lin in (layer.attention.q_proj, layer.feed_forward.intermediate_dense):
        assert isinstance(lin, torch.ao.nn.quantized.dynamic.Linear)
    assert not any(type(m) is torch.nn.Linear for m in model.encoder.model.encoder.modules())
    assert type(model.age_head.dense) is torch.nn.Linear  # heads stay float32
    assert type(model.encoder.model.feature_extractor) is FastFeatureEncoder
    wavs, lens = padded_batch()
    a, b = fp32.predict_batch(wavs, lens), fast.predict_batch(wavs, lens)
    scale = a.embedding.abs().max()
    dev = (a.embedding - b.embedding).abs().max()
    assert 0 < dev < 0.05 * scale  # approximate: it moves, but not far
    assert (a.age_raw - b.age_raw).abs().max() < 0.02


def test_fast_path_rejects_bad_requests():
    fast, _ = encoder_pair()
    with pytest.raises(ValueError, match="kind must be one of"):
        enable_fast_path(fast, "fp4")
    with pytest.raises(ValueError, match="no wav2vec2 transformer encoder"):
        enable_fast_path(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="run on the CPU"):
        enable_fast_path(fast.to("meta"))


def test_int8_cnn_quantises_the_strided_convolutions():
    fast, plain = encoder_pair(conv_dim=[64] * 7)
    n_keys = len(fast.state_dict())
    wavs, lens = padded_batch()
    with torch.inference_mode():
        fast.model.feature_extractor(wavs)  # a float32 pass first: its weights are cached
    enable_fast_path(fast, "int8-cnn")
    layers = fast.model.feature_extractor.conv_layers
    assert "int8_frames" not in layers[0].__dict__  # the 1-channel first convolution stays
    assert all(isinstance(layer.__dict__["int8_frames"], torch.ao.nn.quantized.dynamic.Linear)
               for layer in layers[1:])
    other = encoder_pair(conv_dim=[64] * 7)[0]
    enable_fast_path(other, "int8")
    assert len(fast.state_dict()) == len(other.state_dict()) != n_keys  # no extra tensors
    with torch.inference_mode():
        ref = plain.model.feature_extractor(wavs)
        out = fast.model.feature_extractor(wavs)
    # int8 rounding moves it by a few per cent; a wrong frame/weight order by about 100 %
    assert 0 < (out - ref).norm() < 0.1 * ref.norm()
    # the float32 weights the int8 twins replace are no longer held (only the first layer's)
    enc = fast.model.feature_extractor
    weights = cached(enc, None, also=enc._layout())  # what the pass cached
    assert weights[0][0] is not None
    assert all(w is None and b is None for w, b in weights[1:])
