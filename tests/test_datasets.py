"""``agegender_sb.datasets.labeller``: age and gender columns for ``dataset.map(...,
batched=True)``, for every form the audio column takes (decoded arrays at any rate and
channel count, torchcodec-style decoders, encoded bytes, paths), against
``predict_file`` on the same audio written as a file; errors per example; the real
``datasets`` library where it works here."""

from __future__ import annotations

import io
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from agegender_sb.datasets import labeller

LABELS = ("female", "male", "child")


def _signal(seconds, rate, channels=1, seed=0):
    rng = np.random.RandomState(seed)
    n = int(seconds * rate)
    x = 0.1 * rng.randn(n, channels) * (1 + np.sin(np.arange(n) / 2000))[:, None]
    return x.astype(np.float32)


def _expected(clf, tmp_path, data, rate, name, **settings):
    """predict_file on the same samples written as a file (the independent path)."""
    path = tmp_path / f"{name}.wav"
    sf.write(str(path), data, rate, subtype="FLOAT")
    return clf.predict_file(path, **settings)


def _assert_row(out, i, pred):
    assert out["age"][i] == pytest.approx(float(pred.age[0]), abs=1e-4)
    for j, lab in enumerate(LABELS):
        assert out[lab][i] == pytest.approx(float(pred.gender_probs[0, j]), abs=1e-5)
    assert out["gender"][i] == pred.gender[0]
    assert out["error"][i] is None


class _Decoder:
    """What torchcodec's AudioDecoder gives (``datasets`` >= 4 decoding): a stand-in for
    the input only, since torchcodec cannot decode here (no FFmpeg libraries)."""

    def __init__(self, data, rate):
        self._samples = SimpleNamespace(data=torch.from_numpy(data.T.copy()), sample_rate=rate)

    def get_all_samples(self):
        return self._samples


def test_every_audio_form_equals_predict_file(clf, tmp_path):
    a = _signal(1.0, 8000, seed=1)
    b = _signal(1.5, 44100, channels=2, seed=2)
    c = _signal(2.0, 22050, seed=3)
    d = _signal(1.2, 16000, seed=4)
    buf = io.BytesIO()
    sf.write(buf, d, 16000, format="FLAC")
    e_path = tmp_path / "e.ogg"
    sf.write(str(e_path), _signal(1.1, 48000, seed=5), 48000, format="OGG")
    batch = {"audio": [
        {"array": a[:, 0], "sampling_rate": 8000, "path": None},      # datasets < 4, mono
        {"array": b.T, "sampling_rate": 44100},                        # [channels, time]
        _Decoder(c, 22050),                                            # datasets >= 4
        {"bytes": buf.getvalue(), "path": "d.flac"},                   # Audio(decode=False)
        {"bytes": None, "path": str(e_path)},
    ], "text": ["a", "b", "c", "d", "e"]}
    out = labeller(clf, vad=None)(batch)
    assert list(out) == ["age", "gender", *LABELS, "speech", "error"]
    _assert_row(out, 0, _expected(clf, tmp_path, a, 8000, "a", vad=None))
    _assert_row(out, 1, _expected(clf, tmp_path, b, 44100, "b", vad=None))
    _assert_row(out, 2, _expected(clf, tmp_path, c, 22050, "c", vad=None))
    _assert_row(out, 3, clf.predict_file(_write_flac(tmp_path, buf), vad=None))
    _assert_row(out, 4, clf.predict_file(e_path, vad=None))
    assert out["speech"] == pytest.approx([1.0, 1.5, 2.0, 1.2, 1.1], abs=1e-3)


def _write_flac(tmp_path, buf):
    path = tmp_path / "d.flac"
    path.write_bytes(buf.getvalue())
    return path


def test_long_examples_in_windows_and_batching(clf, tmp_path):
    long = _signal(7.0, 16000, seed=6)
    short = _signal(1.0, 16000, seed=7)
    batch = {"audio": [{"array": x[:, 0], "sampling_rate": 16000} for x in (long, short)]}
    one = labeller(clf, vad=None, max_whole=3, window=2)(batch)
    many = labeller(clf, vad=None, max_whole=3, window=2, batch_size=4)(batch)
    _assert_row(one, 0, _expected(clf, tmp_path, long, 16000, "long", vad=None, max_whole=3,
                                  window=2))
    assert one["age"] == pytest.approx(many["age"], abs=1e-4)


def test_errors_name_the_example(clf):
    batch = {"audio": [None, {"array": np.zeros(10, np.float32), "sampling_rate": 16000},
                       {"array": np.zeros(100)}, "text", {"array": _signal(1, 16000)[:, 0],
                                                          "sampling_rate": 16000}]}
    out = labeller(clf, vad=None)(batch)
    assert out["error"][0] == "audio[0]: no audio"
    assert out["error"][1] == ("audio[1]: too short: 10 samples (0.6 ms) at 16 kHz; the "
                               "encoder needs at least 400 samples (25 ms)")
    assert out["error"][2] == "audio[2]: an audio array without 'sampling_rate'"
    assert out["error"][3].startswith("audio[3]: not audio as datasets gives it")
    assert out["error"][4] is None and out["age"][4] is not None
    assert out["age"][:4] == [None] * 4 and out["speech"][:4] == [0.0] * 4
    assert all("agegender-" not in (e or "") for e in out["error"])  # no temporary names
    with pytest.raises(KeyError, match="no column 'speech'"):
        labeller(clf, audio_column="speech")(batch)


def test_real_speech_with_the_default_detector(clf, speechocean, tmp_path):
    line = (speechocean / "test" / "wav.scp").read_text().splitlines()[0]
    path = speechocean / line.split(maxsplit=1)[1]
    data, rate = sf.read(str(path), dtype="float32")
    silence = np.zeros(rate * 2, np.float32)
    padded = np.concatenate([silence, data, silence])
    out = labeller(clf)({"audio": [{"array": padded, "sampling_rate": rate},
                                   {"array": silence, "sampling_rate": rate}]})
    result = clf.analyse(_write(tmp_path / "padded.wav", padded, rate))
    assert out["age"][0] == pytest.approx(float(result.prediction.age[0]), abs=1e-4)
    assert out["speech"][0] == pytest.approx(result.speech, abs=1e-3)
    assert 0 < out["speech"][0] < len(padded) / rate - 3
    assert out["error"][1] == "no speech detected" and out["age"][1] is None


def _write(path, data, rate):
    sf.write(str(path), data, rate, subtype="FLOAT")
    return path


def test_pickles_as_its_fingerprint(clf):
    """datasets fingerprints map functions by pickling them: cheap, keyed by the weights."""
    fn = labeller(clf, vad=None)
    blob = pickle.dumps(fn)
    assert len(blob) < 2000 and clf.fingerprint.encode() in blob
    again = pickle.loads(blob)
    with pytest.raises(RuntimeError, match="one labeller per process"):
        again({"audio": [None]})


def test_datasets_hashes_the_labeller_by_model_and_settings(clf):
    datasets = pytest.importorskip("datasets")
    hash_ = datasets.fingerprint.Hasher.hash
    assert hash_(labeller(clf, vad=None)) == hash_(labeller(clf, vad=None))
    assert hash_(labeller(clf, vad=None)) != hash_(labeller(clf, vad=None, window=2))


def test_with_the_datasets_library(clf, tmp_path):
    datasets = pytest.importorskip("datasets")
    rates = [8000, 16000, 44100]
    signals = [_signal(1.0 + 0.2 * i, r, seed=i) for i, r in enumerate(rates)]
    encoded = []
    for x, r in zip(signals, rates):
        buf = io.BytesIO()
        sf.write(buf, x, r, format="WAV", subtype="FLOAT")
        encoded.append({"bytes": buf.getvalue(), "path": None})
    features = datasets.Features({"audio": datasets.Audio(decode=False),
                                  "id": datasets.Value("string")})
    fingerprints = {}
    try:
        ds = datasets.Dataset.from_dict({"audio": encoded, "id": ["a", "b", "c"]})
        ds = ds.cast_column("audio", datasets.Audio(decode=False))
    except pickle.PicklingError:
        # datasets 5.2 with pyarrow 24-26 on this machine's Python cannot hash an in-memory
        # Arrow table (pyarrow's MonthDayNano reports module 'builtins'), so from_dict
        # fails; the same Dataset with its fingerprints given runs map as usual.
        import pyarrow as pa

        table = pa.table({"audio": pa.array(encoded, type=features.arrow_schema.field(
            "audio").type), "id": ["a", "b", "c"]})
        ds = datasets.Dataset(table, info=datasets.DatasetInfo(features=features),
                              fingerprint="agegender-test")
        fingerprints = {"new_fingerprint": "agegender-test-labelled"}
    assert ds.features == features
    out = ds.map(labeller(clf, vad=None), batched=True, batch_size=2, **fingerprints)
    assert out.column_names == ["audio", "id", "age", "gender", *LABELS, "speech", "error"]
    for i, (x, r) in enumerate(zip(signals, rates)):
        pred = _expected(clf, tmp_path, x, r, f"ds{i}", vad=None)
        assert out[i]["age"] == pytest.approx(float(pred.age[0]), abs=1e-4)
        assert out[i]["gender"] == pred.gender[0]
