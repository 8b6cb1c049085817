"""ONNX export and the ONNX Runtime backend, against the torch path (tolerance 1e-4 here;
the issue's bar for the backend is 1e-3), on a tiny checkpoint in audEERING's layout."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from agegender_sb import (  # noqa: E402
    AgeGenderClassifier,
    AudioError,
    onnx_export,  # noqa: E402
)
from agegender_sb.onnx_export import OUTPUT_NAMES, OnnxAgeGender, export_onnx  # noqa: E402

LENGTHS = (400, 16000, 48000)
TOL = 1e-4


def audio(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(n) + 0.02).astype(np.float32)


@pytest.fixture(scope="module")
def clf(tiny_checkpoint):
    return AgeGenderClassifier.from_hparams(source=tiny_checkpoint)


@pytest.fixture(scope="module")
def onnx_path(clf, tmp_path_factory):
    return export_onnx(clf.mods.model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", clf.labels)


@pytest.fixture(scope="module")
def session(onnx_path):
    return OnnxAgeGender(onnx_path, threads=1)


def test_graph_signature_and_metadata(onnx_path, session):
    import onnx

    proto = onnx.load(str(onnx_path))
    assert [i.name for i in proto.graph.input] == ["signal"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1 and dims[1].dim_param  # batch 1, symbolic time
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["agegender_sb.labels"] == "female,male,child"
    assert meta["agegender_sb.logits_gender"] == "probabilities"
    assert session.labels == ("female", "male", "child") and session.outputs_probabilities
    out = session(audio(16000))
    assert out["hidden_states"].shape == (1, 32)
    assert out["logits_age"].shape == (1, 1)
    assert out["logits_gender"].shape == (1, 3)
    np.testing.assert_allclose(out["logits_gender"].sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("n", LENGTHS)
def test_parity_with_torch_dynamic_length(clf, session, n):
    wav = audio(n, seed=n)
    ref = clf.predict_batch(torch.from_numpy(wav))
    out = session(wav)
    np.testing.assert_allclose(out["logits_age"][:, 0], ref.age_raw.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(out["logits_gender"], ref.gender_probs.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(out["hidden_states"], ref.embedding.numpy(), atol=TOL, rtol=0)


def test_normalisation_inside_graph(session):
    wav = audio(16000, seed=3)
    a, b, c = session(wav), session(7.0 * wav), session(wav + 0.5)
    for k in OUTPUT_NAMES:
        np.testing.assert_allclose(a[k], b[k], atol=TOL, rtol=0, err_msg=k)
        np.testing.assert_allclose(a[k], c[k], atol=TOL, rtol=0, err_msg=k)


def test_input_checks(session):
    wav = audio(4000)
    a, b = session(wav), session(wav[None].astype(np.float64))
    for k in OUTPUT_NAMES:
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(AudioError, match="too short"):
        session(audio(399))
    with pytest.raises(AudioError, match="shape"):
        session(np.zeros((2, 4000), np.float32))
    with pytest.raises(AudioError, match="NaN"):
        session(np.r_[audio(1000), np.nan])


def test_export_leaves_model_untouched(clf, tmp_path):
    wav = torch.from_numpy(audio(4000))
    before = clf.predict_batch(wav)
    export_onnx(clf.mods.model, tmp_path / "again.onnx", clf.labels)
    conv = clf.mods.model.encoder.model.encoder.pos_conv_embed.conv
    assert hasattr(conv, "parametrizations")  # the fold happened on a copy only
    after = clf.predict_batch(wav)
    assert torch.equal(before.embedding, after.embedding)
    assert torch.equal(before.gender_logits, after.gender_logits)


def test_raw_logits_and_legacy_exporter(clf, tmp_path):
    p = export_onnx(clf.mods.model, tmp_path / "legacy.onnx", clf.labels, dynamo=False,
                    gender_probabilities=False)
    sess = OnnxAgeGender(p, threads=1)
    assert not sess.outputs_probabilities
    for n in (400, 16000):
        wav = audio(n, seed=n + 1)
        ref, out = clf.predict_batch(torch.from_numpy(wav)), sess(wav)
        np.testing.assert_allclose(out["logits_gender"], ref.gender_logits.numpy(), atol=TOL)
        np.testing.assert_allclose(out["logits_age"][:, 0], ref.age_raw.numpy(), atol=TOL)


def test_backend_switch_matches_torch_path(tiny_checkpoint, clf, tmp_path):
    onnx_clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint, backend="onnx",
                                                onnx_path=tmp_path / "b.onnx", onnx_threads=1)
    assert onnx_clf.backend == "onnx" and (tmp_path / "b.onnx").is_file()
    signals = [audio(n, seed=n) for n in (16000, 9000, 400)]
    wavs = torch.zeros(3, 16000)
    for i, x in enumerate(signals):
        wavs[i, : len(x)] = torch.from_numpy(x)
    lens = torch.tensor([len(x) / 16000 for x in signals])
    ref, out = clf.predict_batch(wavs, lens), onnx_clf.predict_batch(wavs, lens)
    for a, b in ((ref.age, out.age), (ref.gender_logits, out.gender_logits),
                 (ref.gender_probs, out.gender_probs), (ref.embedding, out.embedding)):
        assert torch.allclose(a, b, atol=1e-3 if a is ref.age else TOL, rtol=0)
    assert ref.gender == out.gender
    emb = onnx_clf.encode_batch(wavs, lens)
    assert torch.allclose(emb[:, 0], ref.embedding, atol=TOL)


def test_backend_reads_an_audeering_style_export(tiny_checkpoint, clf, onnx_path):
    """A file whose logits_gender holds probabilities (as audEERING's) gives the same results."""
    onnx_clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint, backend="onnx",
                                                onnx_path=onnx_path)
    wav = torch.from_numpy(audio(12000, seed=5))
    ref, out = clf.predict_batch(wav), onnx_clf.predict_batch(wav)
    assert torch.allclose(ref.gender_probs, out.gender_probs, atol=TOL)
    assert torch.allclose(ref.age_raw, out.age_raw, atol=TOL)


def test_backend_exports_once_into_savedir(tiny_checkpoint, tmp_path):
    AgeGenderClassifier.from_hparams(source=tiny_checkpoint, savedir=tmp_path, backend="onnx")
    files = list(tmp_path.glob("agegender-*.onnx"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    AgeGenderClassifier.from_hparams(source=tiny_checkpoint, savedir=tmp_path, backend="onnx")
    assert files[0].stat().st_mtime_ns == stamp  # reused, not exported again


def test_unknown_backend(tiny_checkpoint):
    with pytest.raises(ValueError, match="backend must be"):
        AgeGenderClassifier.from_hparams(source=tiny_checkpoint, backend="tensorrt")


def test_missing_onnxruntime_message(monkeypatch, tiny_checkpoint, onnx_path):
    real_import = builtins.__import__
    real_import_module = onnx_export.importlib.import_module

    def blocked(name):
        return name == "onnxruntime" or name.startswith("onnxruntime.")

    def fake_import(name, *args, **kwargs):
        if blocked(name):
            raise ModuleNotFoundError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    def fake_import_module(name, *args, **kwargs):
        if blocked(name):
            raise ModuleNotFoundError("No module named 'onnxruntime'")
        return real_import_module(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(onnx_export.importlib, "import_module", fake_import_module)
    with pytest.raises(ImportError, match=r'pip install "agegender_sb\[onnx\]"'):
        OnnxAgeGender(onnx_path)
    with pytest.raises(ImportError, match=r'pip install "agegender_sb\[onnx\]"'):
        AgeGenderClassifier.from_hparams(source=tiny_checkpoint, backend="onnx")
