"""Real speech is never refused: Silero's second look (agegender_sb.speech.relative) where it
finds nothing, and what must stay refused (silence, DC, steady noise, white-noise bursts).

The real-speech tests use speechocean762 (skipped where it is absent); the negatives always run.
All 440 utterances are measured by benchmarks/speech_detection.py (docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from agegender_sb import AgeGenderClassifier
from agegender_sb.defaults import SAMPLE_RATE
from agegender_sb.speech.detectors import SileroDetector, make_detector
from agegender_sb.speech.relative import RelativeLevel

# speechocean762 utterances of a 12-year-old boy in which Silero finds no speech (highest
# speech probability 0.024 and 0.060); "SHE MUST BE MADE TO STAY" is 069020075.
MISSED = ("SPEAKER6902/069020059.WAV", "SPEAKER6902/069020075.WAV")


@pytest.fixture(scope="module")
def silero():
    return SileroDetector()


@pytest.fixture(scope="module")
def silero_alone():
    return SileroDetector(fallback=False)


def _noise(kind, seconds=5.0):
    n = round(seconds * SAMPLE_RATE)
    rng = np.random.default_rng(11)
    t = np.arange(n) / SAMPLE_RATE
    on = (np.arange(n) // 8000) % 2 == 1  # half a second on, half off
    hiss = rng.standard_normal(n) * 1e-3  # -60 dBFS
    brown = np.cumsum(rng.standard_normal(n))
    brown -= np.convolve(brown, np.ones(801) / 801, "same")
    brown *= 0.1 / brown.std()
    signals = {
        "zeros": np.zeros(n),
        "dc": np.full(n, 0.3),
        "hiss -60 dBFS": hiss,
        "dc+hiss": 0.3 + hiss,
        "white -20 dBFS": rng.standard_normal(n) * 0.1,
        "white -6 dBFS": rng.standard_normal(n) * 0.5,
        "brown -20 dBFS": brown,
        "hum 50 Hz": 0.3 * np.sin(2 * np.pi * 50 * t),
        "white bursts": np.where(on, rng.standard_normal(n) * 0.1, rng.standard_normal(n) * 1e-4),
        "clicks": np.where(np.arange(n) % 4000 == 0, 0.9, hiss),
        "brown bursts": np.where(on, brown, brown * 1e-3),
    }
    return torch.from_numpy(signals[kind].astype(np.float32))


REFUSED = ["zeros", "dc", "hiss -60 dBFS", "dc+hiss", "white -20 dBFS", "white -6 dBFS",
           "brown -20 dBFS", "hum 50 Hz", "white bursts", "clicks"]


@pytest.mark.parametrize("kind", REFUSED)
def test_silence_dc_and_noise_stay_refused(silero, kind):
    assert silero(_noise(kind)) == []


def test_the_second_look_runs_only_where_silero_finds_nothing(silero, silero_alone):
    """Brown-noise bursts: shaped sound starting and stopping 40 dB above its floor. Silero
    finds nothing; the second look counts it (a known limit, docs/reliability.md): proof that
    the fallback is what answers, and that ``fallback=False`` switches it off."""
    x = _noise("brown bursts")
    assert silero_alone(x) == []
    spans = silero(x)
    assert spans and all(0 <= s < e <= len(x) for s, e in spans)
    # each span starts within a burst (+- the 30 ms padding and one frame)
    on = (torch.arange(len(x)) // 8000) % 2 == 1
    assert all(bool(on[min(s + 1000, len(x) - 1)]) for s, _ in spans)


def test_relative_level_scores():
    rng = np.random.default_rng(0)
    quiet = rng.standard_normal(20 * 512) * 1e-3
    loud_white = rng.standard_normal(10 * 512) * 0.1
    t = np.arange(10 * 512) / SAMPLE_RATE
    loud_shaped = 0.1 * np.sin(2 * np.pi * 200 * t) + 0.05 * np.sin(2 * np.pi * 430 * t)
    x = torch.from_numpy(np.concatenate([quiet, loud_white, loud_shaped]).astype(np.float32))
    rel = RelativeLevel()
    rel.observe(x[: 25 * 512].reshape(-1, 512))  # in two calls: the same as one
    rel.observe(x[25 * 512 :].reshape(-1, 512))
    scores = rel.scores()
    assert scores.tolist() == pytest.approx([0.0] * 20 + [0.4] * 10 + [1.0] * 10)
    assert RelativeLevel().scores().size == 0
    with pytest.raises(ValueError, match="max_flatness must be finite"):
        RelativeLevel(max_flatness=float("nan"))


def test_low_vad_threshold_derives_its_own_neg_threshold():
    """``--vad-threshold 0.005`` (below silero's 0.01 floor for neg_threshold) works; a bad
    threshold is refused in the user's terms, not as neg_threshold."""
    det = make_detector("silero", threshold=0.005)
    assert (det.threshold, det.neg_threshold) == (0.005, 0.005)
    assert make_detector("silero", threshold=0.5).neg_threshold == pytest.approx(0.35)
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"^threshold must be a number in \(0, 1\]"):
            make_detector("silero", threshold=bad)
    with pytest.raises(ValueError, match="fallback must be True or False"):
        SileroDetector(fallback="yes")


def _read(speechocean, rel):
    wav, rate = sf.read(str(speechocean / "WAVE" / rel), dtype="float32")
    assert rate == SAMPLE_RATE
    return torch.from_numpy(wav)


def test_the_missed_child_utterances_are_answered(speechocean, silero, silero_alone,
                                                  tiny_checkpoint):
    clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    for rel in MISSED:
        wav = _read(speechocean, rel)
        assert silero_alone(wav) == []  # what the second look is for
        spans = silero(wav)
        assert spans and 0.25 <= sum(e - s for s, e in spans) / SAMPLE_RATE <= len(wav) / 16000
        probs, score, index, labels = clf.classify_file(speechocean / "WAVE" / rel)
        assert probs.shape == (1, 3) and labels[0] in clf.labels
        assert clf.predict_file(speechocean / "WAVE" / rel).age.shape == (1,)


def test_quiet_child_speech_at_22050_hz_is_answered(speechocean, tiny_checkpoint, tmp_path):
    """The same two utterances 20 dB quieter (peaks near 0.06, about -57 dBFS on average) and
    resampled to 22.05 kHz, as 16-bit files: still answered by default (a floor of -50 dBFS
    refused them)."""
    import soxr

    clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    for rel in MISSED:
        wav = _read(speechocean, rel).numpy() * 0.1
        path = tmp_path / f"{Path(rel).stem}.wav"
        sf.write(str(path), soxr.resample(wav, SAMPLE_RATE, 22050), 22050, subtype="PCM_16")
        probs, _, _, labels = clf.classify_file(path)
        assert probs.shape == (1, 3) and labels[0] in clf.labels


def test_faint_shaped_bursts_below_the_floor_stay_refused(silero):
    """Tone bursts at about -66 dBFS over -90 dBFS hiss: 24 dB above their background but
    below the second look's -60 dBFS; refused (a floor of -70 would take them)."""
    n = 5 * SAMPLE_RATE
    t = np.arange(n) / SAMPLE_RATE
    on = (np.arange(n) // 8000) % 2 == 1
    hiss = np.random.default_rng(3).standard_normal(n) * 10 ** (-90 / 20)
    x = np.where(on, 10 ** (-63 / 20) * np.sin(2 * np.pi * 440 * t), hiss)
    x = torch.from_numpy(x.astype(np.float32))
    assert silero(x) == []
    louder = SileroDetector()
    louder._second_opinion = lambda: RelativeLevel(min_level_db=-70.0)
    assert louder(x)  # the same bursts count once the floor is below them


def test_speech_silero_finds_is_unchanged(speechocean, silero, silero_alone):
    """Where Silero finds speech, the second look is not asked: same spans."""
    lines = (speechocean / "test" / "wav.scp").read_text().splitlines()
    for line in lines[::40]:
        wav = _read(speechocean, line.split()[1].removeprefix("WAVE/"))
        spans = silero_alone(wav)
        assert spans and silero(wav) == spans


def test_the_command_answers_them_and_no_vad_fallback_takes_silero_alone(
        speechocean, tiny_checkpoint, tmp_path):
    import csv

    from agegender_sb.cli import main

    files = [str(speechocean / "WAVE" / rel) for rel in MISSED]
    out, alone = tmp_path / "t.csv", tmp_path / "alone.csv"
    assert main(["predict", *files, "--source", str(tiny_checkpoint), "-o", str(out), "-q"]) == 0
    assert main(["predict", *files, "--source", str(tiny_checkpoint), "-o", str(alone), "-q",
                 "--no-vad-fallback"]) == 0
    with open(out, newline="") as a, open(alone, newline="") as b:
        rows, rows_alone = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert all(r["age"] and not r["error"] for r in rows)
    assert all(r["error"] == "no speech detected" for r in rows_alone)
