"""Reading, validation and normalisation; bad input gives a clear error, never a NaN."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import Wav2Vec2FeatureExtractor

from agegender_sb import AudioError, NoSpeechError, load_audio
from agegender_sb.audio import AudioFile, resampled_length, validate_batch
from agegender_sb.model.normalizer import normalize


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


def _noise_file(path, sample_rate, seconds=3.0, channels=1, seed=0):
    rng = np.random.RandomState(seed)
    x = (0.1 * rng.randn(int(round(seconds * sample_rate)), channels)).astype(np.float32)
    sf.write(path, x, sample_rate, subtype="FLOAT")
    return path, x


@pytest.mark.parametrize("sample_rate", [16001, 22051])
def test_odd_rates_resampled_in_bounded_time(tmp_path, sample_rate):
    """Rates whose ratio to 16 kHz has large terms (torchaudio's filter bank would grow with
    them) are resampled with soxr (very high quality), quickly, to the torchaudio length."""
    import soxr

    path, x = _noise_file(tmp_path / "odd.wav", sample_rate)
    t0 = time.perf_counter()
    wav = load_audio(path)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"{elapsed:.1f} s to resample 3 s of audio at {sample_rate} Hz"
    n = math.ceil(x.shape[0] * 16000 / sample_rate)  # torchaudio's output length
    assert wav.shape == (n,) and resampled_length(x.shape[0], sample_rate) == n
    ref = torch.from_numpy(soxr.resample(x[:, 0], sample_rate, 16000, quality="VHQ"))
    m = min(n, ref.shape[0])
    assert abs(ref.shape[0] - n) <= 1
    assert float((wav[:m] - ref[:m]).abs().max()) < 1e-6


@pytest.mark.parametrize("channels", [1, 2])
def test_44k1_is_resampled_by_torchaudio_exactly(tmp_path, channels):
    """44.1 kHz (the reference path): exactly torchaudio's resampling of the channel mean."""
    import torchaudio

    path, x = _noise_file(tmp_path / "cd.wav", 44100, channels=channels)
    wav = load_audio(path)
    expected = torchaudio.functional.resample(torch.from_numpy(x).mean(dim=1), 44100, 16000)
    assert wav.shape == expected.shape == (48000,)
    assert torch.equal(wav, expected)


def test_audio_file_windows_at_16001_equal_slices_of_whole(tmp_path):
    path, _ = _noise_file(tmp_path / "odd.wav", 16001, seconds=5.0)
    whole = load_audio(path)
    with AudioFile(path) as audio:
        assert (audio.sample_rate, audio.frames, audio.n16) == (16001, 5 * 16001, whole.shape[0])
        assert audio.duration == pytest.approx(5.0)
        for start, end in [(0, 16000), (16000, 48000), (12345, 23456), (64000, whole.shape[0]),
                           (0, whole.shape[0])]:
            wav = audio.read(start, end)
            assert wav.shape == (end - start,)
            assert float((wav - whole[start:end]).abs().max()) < 1e-4, (start, end)
        # the blocks of a stretch join up to the stretch
        blocks = list(audio.blocks(1000, 70000, seconds=1.0))
        assert all(b.shape[0] >= 400 for b in blocks)
        assert float((torch.cat(blocks) - whole[1000:70000]).abs().max()) < 1e-4


def test_file_names_that_are_not_utf8_are_read(tmp_path):
    """A name holding a byte that is not UTF-8 (as Python gives it: ``os.fsdecode``, with a
    lone surrogate) is read like any other file."""
    name = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.wav")
    x = (0.1 * np.random.RandomState(0).randn(8000)).astype(np.float32)
    sf.write(os.fsencode(name), x, 16000, subtype="FLOAT")  # soundfile takes bytes as they are
    assert torch.equal(load_audio(name), torch.from_numpy(x))
    with AudioFile(Path(name)) as audio:
        assert audio.n16 == 8000


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
    assert torch.isfinite(clf.predict_file(tmp_path / "zeros.wav", vad=None).age).all()
    # with the speech detector (the default), silence has no age and no gender
    with pytest.raises(NoSpeechError, match=r"zeros\.wav: no speech detected"):
        clf.predict_file(tmp_path / "zeros.wav")


def test_validate_batch_defaults():
    wavs, lens = validate_batch(torch.zeros(800, dtype=torch.float64))
    assert wavs.shape == (1, 800) and wavs.dtype == torch.float32 and lens.tolist() == [1.0]


def test_embedding_normalize_flag_refused(clf):
    with pytest.raises(ValueError, match="no embedding normaliser"):
        clf.encode_batch(torch.zeros(800), normalize=True)
