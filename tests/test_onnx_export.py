"""ONNX export / ONNX Runtime backend, on a tiny randomly initialised wav2vec2."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from agegender_sb import onnx_export  # noqa: E402
from agegender_sb.onnx_export import (  # noqa: E402
    OUTPUT_NAMES,
    OnnxAgeGender,
    OnnxExportAdapter,
    ReferenceAgeGenderModel,
    export_onnx,
)

LENGTHS = (400, 16000, 48000)


def tiny_config():
    return transformers.Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        conv_dim=[16] * 7,
        conv_kernel=[10, 3, 3, 3, 3, 2, 2],
        conv_stride=[5, 2, 2, 2, 2, 2, 2],
        conv_bias=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )


def audio(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(n) + 0.02).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ReferenceAgeGenderModel(tiny_config()).eval()


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="module")
def session(onnx_path):
    return OnnxAgeGender(onnx_path, threads=1)


def torch_reference(model, wav: np.ndarray):
    with torch.inference_mode():
        outs = OnnxExportAdapter(model).eval()(torch.from_numpy(wav)[None])
    return dict(zip(OUTPUT_NAMES, (o.numpy() for o in outs)))


def test_graph_signature(onnx_path, session):
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    assert [i.name for i in graph.input] == ["signal"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1 and dims[1].dim_param  # batch 1, symbolic time
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    out = session(audio(16000))
    assert out["hidden_states"].shape == (1, 32)
    assert out["logits_age"].shape == (1, 1)
    assert out["logits_gender"].shape == (1, 3)
    # audEERING compatibility: "logits_gender" are probabilities
    np.testing.assert_allclose(out["logits_gender"].sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("n", LENGTHS)
def test_parity_with_torch_dynamic_length(model, session, n):
    wav = audio(n, seed=n)
    ref = torch_reference(model, wav)
    out = session(wav)
    for k in OUTPUT_NAMES:
        np.testing.assert_allclose(out[k], ref[k], atol=1e-4, rtol=0, err_msg=k)


def test_package_forward_contract(model):
    wav = torch.from_numpy(audio(8000))[None]
    with torch.inference_mode():
        age, gender, emb = model(wav, torch.ones(1))
        h, a, g = OnnxExportAdapter(model, gender_probabilities=False)(wav)
    assert age.shape == (1,) and gender.shape == (1, 3) and emb.shape == (1, 32)
    torch.testing.assert_close(a[:, 0], age)
    torch.testing.assert_close(g, gender)
    torch.testing.assert_close(h, emb)


def test_normalisation_inside_graph(session):
    wav = audio(16000, seed=3)
    a, b = session(wav), session(7.0 * wav)
    c = session(wav + 0.5)  # DC offset is removed too
    for k in OUTPUT_NAMES:
        np.testing.assert_allclose(a[k], b[k], atol=1e-4, rtol=0, err_msg=k)
        np.testing.assert_allclose(a[k], c[k], atol=1e-4, rtol=0, err_msg=k)


def test_input_shapes(session):
    wav = audio(4000)
    a, b = session(wav), session(wav[None].astype(np.float64))
    for k in OUTPUT_NAMES:
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(ValueError, match="too short"):
        session(audio(399))
    with pytest.raises(ValueError, match="shape"):
        session(np.zeros((2, 4000), np.float32))


def test_export_leaves_model_untouched(model):
    # The fold of the positional conv's weight norm must not leak into the caller's module
    conv = model.encoder.model.encoder.pos_conv_embed.conv
    assert hasattr(conv, "parametrizations")
    wav = torch.from_numpy(audio(4000))[None]
    with torch.inference_mode():
        model(wav)  # would raise "'ParametrizedConv1d' object has no attribute 'weight'"


def test_legacy_exporter(model, tmp_path):
    p = export_onnx(model, tmp_path / "legacy.onnx", dynamo=False)
    sess = OnnxAgeGender(p, threads=1)
    for n in (400, 16000):
        wav = audio(n, seed=n + 1)
        ref, out = torch_reference(model, wav), sess(wav)
        for k in OUTPUT_NAMES:
            np.testing.assert_allclose(out[k], ref[k], atol=1e-4, rtol=0, err_msg=k)


def test_missing_onnxruntime_message(monkeypatch, onnx_path):
    real_import = builtins.__import__
    real_import_module = onnx_export.importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ModuleNotFoundError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    def fake_import_module(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ModuleNotFoundError("No module named 'onnxruntime'")
        return real_import_module(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(onnx_export.importlib, "import_module", fake_import_module)
    with pytest.raises(ImportError, match=r'pip install "agegender_sb\[onnx\]"'):
        OnnxAgeGender(onnx_path)
