"""Reading, validation and normalisation; bad input gives a clear error, never a NaN."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import Wav2Vec2FeatureExtractor

from agegender_sb import AgeGenderClassifier, AudioError, load_audio
from agegender_sb.audio import normalize, validate_batch


@pytest.fixture(scope="module")
def clf(tiny_checkpoint):
    return AgeGenderClassifier.from_hparams(source=tiny_checkpoint)


def test_normalize_matches_feature_extractor():
    """Padded-batch normalisation equals transformers' extractor on each unpadded signal."""
    rng = np.random.RandomState(0)
    signals = [(3 * rng.randn(n) + 0.5).astype(np.float32) for n in (1000, 640, 400)]
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    wavs = torch.zeros(3, 1000)
    for i, x in enumerate(signals):
        wavs[i, : len(x)] = torch.from_numpy(x)
    lens = torch.tensor([len(x) / 1000 for x in signals])
    ours = normalize(wavs, lens)
    for i, x in enumerate(signals):
        ref = fe(x, sampling_rate=16000)["input_values"][0]
        assert np.abs(ours[i, : len(x)].numpy() - ref).max() < 1e-5
        assert torch.all(ours[i, len(x):] == 0)
    assert torch.allclose(normalize(wavs[:1]), ours[:1], atol=1e-6)


@pytest.mark.parametrize(
    "subtype, fmt, name",
    [("PCM_16", "WAV", "a.wav"), ("PCM_32", "WAV", "b.wav"), ("FLOAT", "WAV", "c.wav"),
     ("PCM_16", "FLAC", "d.flac"), ("VORBIS", "OGG", "e.ogg"),
     ("PCM_16", "NIST", "SA1.WAV")],  # SPHERE with a .WAV name, as in TIMIT
)
def test_formats_read_by_content(tmp_path, subtype, fmt, name):
    x = (0.2 * np.sin(np.linspace(0, 500, 8000))).astype(np.float32)
    path = tmp_path / name
    sf.write(path, x, 16000, subtype=subtype, format=fmt)
    wav = load_audio(path)
    assert wav.shape == (8000,)
    tol = 0.05 if fmt == "OGG" else 1e-3
    assert np.abs(wav.numpy() - x).max() < tol


def test_resampling_and_channel_mixing(tmp_path):
    rng = np.random.RandomState(1)
    x = (0.1 * rng.randn(8000, 3)).astype(np.float32)
    sf.write(tmp_path / "x.wav", x, 8000, subtype="FLOAT")
    wav = load_audio(tmp_path / "x.wav")
    assert wav.shape == (16000,)
    import torchaudio

    expected = torchaudio.functional.resample(torch.from_numpy(x.mean(axis=1)), 8000, 16000)
    assert torch.allclose(wav, expected, atol=1e-6)


def _write(path, data, sr=16000, subtype="FLOAT"):
    sf.write(path, np.asarray(data, dtype=np.float32), sr, subtype=subtype)
    return path


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda d: d / "missing.wav", FileNotFoundError, "missing.wav: no such file"),
        (lambda d: (d / "notes.wav").write_text("hello") and d / "notes.wav", AudioError,
         "notes.wav: not a readable audio file"),
        (lambda d: _write(d / "empty.wav", np.zeros(0)), AudioError,
         "empty.wav: the file contains no audio samples"),
        (lambda d: _write(d / "short.wav", np.ones(399) * 0.1), AudioError,
         "short.wav: too short: 399 samples"),
        (lambda d: _write(d / "short8k.wav", np.ones(150) * 0.1, sr=8000), AudioError,
         "short8k.wav: too short: 300 samples"),
        (lambda d: _write(d / "nan.wav", np.r_[np.zeros(1000), np.nan]), AudioError,
         "nan.wav: the audio contains 1 NaN or infinite samples"),
        (lambda d: _write(d / "inf.wav", np.r_[np.zeros(1000), np.inf, -np.inf]), AudioError,
         "inf.wav: the audio contains 2 NaN or infinite samples"),
        (lambda d: d, AudioError, "is a directory"),
    ],
    ids=["missing", "not-audio", "empty", "short", "short-after-resampling", "nan", "inf", "dir"],
)
def test_bad_files(tmp_path, clf, make, error, message):
    path = make(tmp_path)
    with pytest.raises(error, match=message.replace(".", r"\.")):
        clf.predict_file(path)
    with pytest.raises(error):
        clf.classify_file(str(path))


@pytest.mark.parametrize(
    "wavs, lens, message",
    [
        (torch.zeros(1, 2, 800), None, r"wavs: expected shape \[time\] or \[batch, time\], got "
                                       r"\(1, 2, 800\) \(mix channels to mono first\)"),
        (torch.zeros(2, 800, dtype=torch.int16), None, "expected floating-point samples"),
        (np.zeros(800), None, "expected a torch.Tensor, got ndarray"),
        (torch.zeros(0, 800), None, "the batch is empty"),
        (torch.zeros(2, 800), torch.tensor([1.0]), r"wav_lens: expected shape \[2\]"),
        (torch.zeros(2, 800), torch.tensor([1.0, 0.0]), r"relative lengths must lie in \(0, 1\]"),
        (torch.zeros(2, 800), torch.tensor([1.0, 0.4]), r"wavs\[1\]: too short: 320 samples"),
        (torch.tensor([[0.0] * 500 + [float("nan")]]), None,
         r"wavs\[0\]: the audio contains 1 NaN"),
        (torch.zeros(300), None, r"wavs\[0\]: too short: 300 samples"),
    ],
)
def test_bad_tensors(clf, wavs, lens, message):
    with pytest.raises(AudioError, match=message):
        clf.predict_batch(wavs, lens)
    with pytest.raises(AudioError, match=message):
        clf.encode_batch(wavs, lens)


def test_nan_in_padding_is_ignored(clf):
    wavs = torch.randn(2, 1000) * 0.1
    clean = clf.predict_batch(wavs[1:, :500])
    wavs[1, 500:] = float("nan")
    pred = clf.predict_batch(wavs, torch.tensor([1.0, 0.5]))
    assert torch.allclose(pred.age_raw[1], clean.age_raw[0], atol=1e-5)


def test_silence_and_minimum_length_give_finite_outputs(clf, tmp_path):
    for wav in (torch.zeros(16000), torch.zeros(400), torch.randn(400)):
        pred = clf.predict_batch(wav)
        for t in (pred.age, pred.gender_logits, pred.gender_probs, pred.embedding):
            assert torch.isfinite(t).all()
    _write(tmp_path / "zeros.wav", np.zeros(4000), subtype="PCM_16")
    assert torch.isfinite(clf.predict_file(tmp_path / "zeros.wav").age).all()


def test_validate_batch_defaults():
    wavs, lens = validate_batch(torch.zeros(800, dtype=torch.float64))
    assert wavs.shape == (1, 800) and wavs.dtype == torch.float32 and lens.tolist() == [1.0]


def test_embedding_normalize_flag_refused(clf):
    with pytest.raises(ValueError, match="no embedding normaliser"):
        clf.encode_batch(torch.zeros(800), normalize=True)
