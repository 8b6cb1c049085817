"""Speech detectors and speaker turns (agegender_sb.speech.detectors) on real speech and made-up
signals.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from paths import REPO

from agegender_sb.defaults import SAMPLE_RATE
from agegender_sb.speech.detectors import (
    DEFAULT_DETECTOR,
    FRAME_SAMPLES,
    EnergyDetector,
    SileroDetector,
    make_detector,
    speech_seconds,
)
from agegender_sb.speech.turns import (
    Turn,
    TurnError,
    check_turns,
    read_rttm,
    turns_from_annotation,
    turns_from_tuples,
)

ROOT = REPO
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None


@pytest.fixture(scope="module")
def utterances(speechocean):
    """The first four train utterances of speechocean762, 16 kHz float32 numpy arrays."""
    waves = []
    for line in (speechocean / "train" / "wav.scp").read_text().splitlines()[:4]:
        _, path = line.split(maxsplit=1)
        path = Path(path) if Path(path).is_absolute() else speechocean / path
        wav, rate = sf.read(str(path), dtype="float32")
        assert rate == SAMPLE_RATE and wav.ndim == 1
        waves.append(wav)
    return waves


@pytest.fixture(scope="module")
def silero():
    return SileroDetector()


@pytest.fixture(scope="module")
def energy():
    return EnergyDetector()


DETECTORS = ["silero", "energy"]


@pytest.fixture
def detector(request, silero, energy):
    return {"silero": silero, "energy": energy}[request.param]


def silence(seconds):
    return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)


def signal(*parts):
    return torch.from_numpy(np.concatenate(parts).astype(np.float32))


def check_spans(spans, length):
    """Spans are sorted, non-overlapping, non-empty int pairs inside [0, length]."""
    assert all(isinstance(s, int) and isinstance(e, int) for s, e in spans)
    assert all(0 <= s < e <= length for s, e in spans)
    assert all(e0 <= s1 for (_, e0), (s1, _) in zip(spans, spans[1:]))


# ---------------------------------------------------------------------------------------------
# Detectors on real speech
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("detector", DETECTORS, indirect=True)
def test_real_utterances_are_speech(detector, utterances):
    for wav in utterances:
        x = signal(silence(1.0), wav, silence(1.0))
        spans = detector(x)
        check_spans(spans, len(x))
        assert spans, "no speech found in a real utterance"
        start, end = SAMPLE_RATE, SAMPLE_RATE + len(wav)
        # Speech only around the utterance (padding 30 ms), and most of it found.
        assert spans[0][0] >= start - 0.05 * SAMPLE_RATE
        assert spans[-1][1] <= end + 0.05 * SAMPLE_RATE
        assert speech_seconds(spans) >= 0.4 * len(wav) / SAMPLE_RATE


@pytest.mark.parametrize("detector", DETECTORS, indirect=True)
def test_speech_then_long_silence_ends_with_the_utterance(detector, utterances):
    wav = utterances[0]
    x = signal(wav, silence(10.0))
    spans = detector(x)
    end = len(wav) / SAMPLE_RATE
    last = spans[-1][1] / SAMPLE_RATE
    # speechocean files end with ~0.5 s of room noise after the last word.
    assert end - 1.0 <= last <= end + 0.3
    assert speech_seconds(spans) <= end


def non_speech(kind, seconds):
    n = round(seconds * SAMPLE_RATE)
    rng = np.random.default_rng(7)
    hiss = rng.standard_normal(n).astype(np.float32) * 10 ** (-60 / 20)  # -60 dBFS RMS
    return {
        "zeros": np.zeros(n, np.float32),
        "dc": np.full(n, 0.3, np.float32),
        "hiss": hiss,
        "dc+hiss": hiss + np.float32(0.3),
    }[kind]


@pytest.mark.parametrize("seconds", [5, 45])
@pytest.mark.parametrize("kind", ["zeros", "dc", "hiss", "dc+hiss"])
@pytest.mark.parametrize("detector", DETECTORS, indirect=True)
def test_no_speech_in_silence_dc_or_faint_hiss(detector, kind, seconds):
    x = non_speech(kind, seconds)
    if kind.endswith("hiss"):
        assert 20 * math.log10(float(np.std(x))) == pytest.approx(-60, abs=0.1)
    assert detector(torch.from_numpy(x)) == []


def uneven_blocks(x):
    cuts = [0, 1, 1, 512, 1025, 7000, 7000, 40_000, len(x) - 3]
    return [x[a:b] for a, b in zip(cuts, cuts[1:] + [len(x)])]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: SileroDetector(), id="silero-jit"),
        pytest.param(
            lambda: SileroDetector(backend="onnx"),
            id="silero-onnx",
            marks=pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed"),
        ),
        pytest.param(lambda: EnergyDetector(), id="energy"),
    ],
)
def test_spans_do_not_depend_on_blocks(make, utterances):
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(SAMPLE_RATE * 20).astype(np.float32) * 0.003
    # Longer than one 512-frame ONNX group (16.4 s), length not a multiple of 512.
    x = signal(silence(0.7), utterances[0], silence(2.0), utterances[1], noise, utterances[2])
    x = x[: len(x) // FRAME_SAMPLES * FRAME_SAMPLES - 77]
    detector = make()
    whole = detector(x)
    assert len(whole) >= 3
    blocks = uneven_blocks(x)
    assert sum(len(b) for b in blocks) == len(x) and min(len(b) for b in blocks) == 0
    assert detector.detect(iter(blocks)) == whole
    assert detector.detect(x.split(SAMPLE_RATE)) == whole
    assert detector.detect(x.split(FRAME_SAMPLES)) == whole
    assert detector.detect([x]) == whole  # again: no state left from the last signal


@pytest.fixture(scope="module")
def threads():
    """The process's torch thread count, put back after the module's tests."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


@pytest.mark.parametrize(("num_threads", "inside"), [(1, 1), (None, 2)])
def test_silero_thread_setting_is_scoped(threads, utterances, num_threads, inside):
    torch.set_num_threads(2)
    seen = []

    def blocks():
        for block in torch.from_numpy(utterances[0]).split(8000):
            seen.append(torch.get_num_threads())
            yield block

    detector = SileroDetector(num_threads=num_threads)
    assert detector.detect(blocks())
    assert set(seen) == {inside}
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="NaN"):
        detector.detect([torch.zeros(1000), torch.tensor([float("nan")])])
    assert torch.get_num_threads() == 2


def silero_reference(x, **options):
    """Spans from silero's own ``get_speech_timestamps`` with a model of its own."""
    from silero_vad import get_speech_timestamps, load_silero_vad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # silero's loader: deprecation notices
        model = load_silero_vad()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fast on a busy machine, like the detector
    try:
        speeches = get_speech_timestamps(x, model, **options)
    finally:
        torch.set_num_threads(threads)
    return [(d["start"], d["end"]) for d in speeches]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ({}, {}),
        (
            {"threshold": 0.7, "min_silence_s": 0.3, "speech_pad_s": 0.1, "min_speech_s": 0.5},
            {
                "threshold": 0.7,
                "min_silence_duration_ms": 300,
                "speech_pad_ms": 100,
                "min_speech_duration_ms": 500,
            },
        ),
    ],
    ids=["defaults", "options"],
)
def test_silero_matches_get_speech_timestamps(utterances, ours, theirs):
    x = signal(silence(1.3), utterances[3], silence(0.4), utterances[1], silence(2.0))
    expected = silero_reference(x, **theirs)
    assert expected
    got = SileroDetector(**ours).detect(x.split(5000))
    assert len(got) == len(expected)
    for (s, e), (s_ref, e_ref) in zip(got, expected):
        assert abs(s - s_ref) <= FRAME_SAMPLES and abs(e - e_ref) <= FRAME_SAMPLES


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_silero_onnx_backend_gives_the_jit_spans(utterances, silero):
    x = signal(silence(0.5), utterances[2], silence(1.0), utterances[0])
    assert SileroDetector(backend="onnx").detect(x.split(3000)) == silero(x)


def test_silero_loads_once_and_lazily(utterances):
    detector = SileroDetector()
    assert detector._model is None
    x = torch.from_numpy(utterances[0])
    first = detector(x)
    model = detector._model
    assert model is not None
    assert detector(x) == first
    assert detector._model is model


def test_silero_leaves_torch_threads_alone():
    # silero_vad sets torch.set_num_threads(1) when imported: a fresh process shows whether
    # the detector puts the setting back.
    code = (
        "import torch; torch.set_num_threads(3)\n"
        "from agegender_sb.speech.detectors import SileroDetector\n"
        "SileroDetector()(torch.zeros(16000)); print(torch.get_num_threads())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "3"


# ---------------------------------------------------------------------------------------------
# Energy detector and the shared post-processing on made-up signals
# ---------------------------------------------------------------------------------------------


def tone(db, seconds, freq=440.0):
    """A sine whose standard deviation is ``db`` dBFS."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (math.sqrt(2) * 10 ** (db / 20) * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def test_energy_levels_are_std_in_dbfs():
    frames = torch.from_numpy(np.stack([tone(-20, 0.032), tone(-20, 0.032) + 0.5]))
    frames = frames[:, :FRAME_SAMPLES]
    expected = 20 * math.log10(float(np.std(frames[0].numpy().astype(np.float64))))
    levels = EnergyDetector.levels_db(frames)
    assert levels[0] == pytest.approx(expected, abs=1e-9)
    assert levels[0] == pytest.approx(-20, abs=0.05)
    assert levels[1] == pytest.approx(levels[0], abs=1e-6)  # a DC offset adds nothing


def test_energy_threshold_and_span_edges():
    x = signal(silence(1.0), tone(-40, 1.0), silence(1.0))
    spans = EnergyDetector()(x)
    # Frames touching the tone are speech; then 30 ms of padding each side.
    first = SAMPLE_RATE // FRAME_SAMPLES * FRAME_SAMPLES
    last = -(-2 * SAMPLE_RATE // FRAME_SAMPLES) * FRAME_SAMPLES
    assert spans == [(first - 480, last + 480)]
    assert EnergyDetector(threshold_db=-35)(x) == []
    assert EnergyDetector()(signal(silence(1.0), tone(-52, 1.0))) == []


@pytest.mark.parametrize(("dip_db", "expected"), [(-53, 1), (-70, 2)])
def test_energy_hysteresis(dip_db, expected):
    # A dip between the two thresholds (-50 and -56 dBFS) does not end a span; a deeper one does.
    x = signal(silence(0.5), tone(-30, 1.0), tone(dip_db, 0.5), tone(-30, 1.0), silence(0.5))
    assert len(EnergyDetector()(x)) == expected
    assert len(EnergyDetector(hysteresis_db=0)(x)) == 2


def test_min_speech_and_min_silence():
    burst = signal(silence(1.0), tone(-30, 0.2), silence(1.0))
    assert EnergyDetector()(burst) == []
    assert len(EnergyDetector(min_speech_s=0.1)(burst)) == 1
    gap = signal(silence(0.5), tone(-30, 1.0), silence(0.3), tone(-30, 1.0), silence(0.5))
    assert len(EnergyDetector()(gap)) == 2
    assert len(EnergyDetector(min_silence_s=0.5)(gap)) == 1


def test_short_and_empty_signals():
    detector = EnergyDetector()
    assert detector(torch.zeros(0)) == []
    assert detector.detect([]) == []
    assert detector(torch.from_numpy(tone(-20, 0.01))) == []  # shorter than min_speech
    # A loud partial last frame is measured on its own samples, not diluted by padding.
    x = signal(silence(0.2), tone(-20, 0.5 + 100 / SAMPLE_RATE))
    assert detector(x)[-1][1] == len(x)


@pytest.mark.parametrize(
    ("block", "error", "match"),
    [
        (torch.zeros(2, 100), ValueError, r"block 1: expected a 1-D"),
        (torch.zeros(100, dtype=torch.int16), TypeError, "block 1: expected floating-point"),
        (torch.tensor([0.0, float("nan")]), ValueError, "block 1: has NaN or Inf"),
        (np.zeros(100, np.float32), TypeError, "block 1: expected a torch.Tensor"),
    ],
)
@pytest.mark.parametrize("detector", DETECTORS, indirect=True)
def test_bad_blocks(detector, block, error, match):
    with pytest.raises(error, match=match):
        detector.detect([torch.zeros(600), block])


def test_make_detector():
    assert DEFAULT_DETECTOR == "silero"
    assert isinstance(make_detector(), SileroDetector)
    assert isinstance(make_detector("Silero", threshold=0.6), SileroDetector)
    assert make_detector("silero", threshold=0.6).neg_threshold == pytest.approx(0.45)
    assert make_detector("energy", threshold_db=-42).threshold_db == -42
    assert make_detector(None) is None and make_detector("none") is None
    with pytest.raises(ValueError, match="'silero', 'energy', 'none'"):
        make_detector("webrtc")
    with pytest.raises(ValueError, match="takes no options"):
        make_detector("none", threshold=0.5)
    with pytest.raises(TypeError):
        make_detector("energy", threshold=0.5)


@pytest.mark.parametrize(
    "options",
    [
        {"threshold": 1.5},
        {"threshold": 0.5, "neg_threshold": 0.6},
        {"min_speech_s": -1},
        {"speech_pad_s": float("nan")},
        {"backend": "tensorrt"},
        {"num_threads": 0},
    ],
)
def test_bad_silero_options(options):
    with pytest.raises(ValueError):
        SileroDetector(**options)


@pytest.mark.parametrize("options", [{"hysteresis_db": -1}, {"threshold_db": float("inf")}])
def test_bad_energy_options(options):
    with pytest.raises(ValueError):
        EnergyDetector(**options)


def test_speech_seconds():
    assert speech_seconds([(0, 8000), (16000, 48000)]) == 2.5
    assert speech_seconds([]) == 0.0


# ---------------------------------------------------------------------------------------------
# Speaker turns
# ---------------------------------------------------------------------------------------------

RTTM = """\
;; written by a diarisation pipeline
SPKR-INFO meeting 1 <NA> <NA> <NA> unknown spk_0 <NA> <NA>
SPEAKER meeting 1 12.500 3.250 <NA> <NA> spk_1 <NA> <NA>
SPEAKER meeting 1 0.000 10.000 <NA> <NA> spk_0 <NA> <NA>

# overlapping speech: both turns are kept
SPEAKER meeting 1 9.000 2.000 <NA> <NA> spk_1 <NA> <NA>
SPEAKER call 1 1 0.5 <NA> <NA> <NA> <NA> <NA>
"""


def test_read_rttm_file(tmp_path):
    path = tmp_path / "a.rttm"
    path.write_text(RTTM)
    assert read_rttm(path) == {
        "meeting": [Turn(0.0, 10.0, "spk_0"), Turn(9.0, 11.0, "spk_1"), Turn(12.5, 15.75, "spk_1")],
        "call": [Turn(1.0, 1.5, None)],
    }
    assert list(read_rttm(str(path))) == ["meeting", "call"]


def test_read_rttm_folder(tmp_path):
    (tmp_path / "a.rttm").write_text("SPEAKER one 1 0 1 <NA> <NA> x <NA> <NA>\n")
    (tmp_path / "b.rttm").write_text(
        "SPEAKER two 1 2 1 <NA> <NA> y <NA> <NA>\nSPEAKER two 1 0 1 <NA> <NA> z <NA> <NA>\n"
    )
    (tmp_path / "notes.txt").write_text("not an rttm file")
    assert read_rttm(tmp_path) == {
        "one": [Turn(0.0, 1.0, "x")],
        "two": [Turn(0.0, 1.0, "z"), Turn(2.0, 3.0, "y")],
    }
    (tmp_path / "c.rttm").write_text("SPEAKER one 1 5 1 <NA> <NA> x <NA> <NA>\n")
    with pytest.raises(TurnError, match=r"c\.rttm: file id 'one' is also in .*a\.rttm"):
        read_rttm(tmp_path)


def test_read_rttm_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.rttm"):
        read_rttm(tmp_path / "nope.rttm")
    with pytest.raises(TurnError, match=r"folder has no \*\.rttm file"):
        read_rttm(tmp_path)
    (tmp_path / "bin.rttm").write_bytes(b"\xff\xfe\x00SPEAKER")
    with pytest.raises(TurnError, match=r"bin\.rttm: not a text RTTM file"):
        read_rttm(tmp_path / "bin.rttm")


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("SPEAKER f 1 0.0 1.0 <NA> <NA> spk", "10 fields.*found 8"),
        ("SPEAKER f 1 0.0 1.0 <NA> <NA> spk <NA> <NA> extra", "found 11"),
        ("SPEAKER f 1 zero 1.0 <NA> <NA> spk <NA> <NA>", "must be numbers"),
        ("SPEAKER f 1 0.0 1s <NA> <NA> spk <NA> <NA>", "must be numbers"),
        ("SPEAKER f 1 -0.5 1.0 <NA> <NA> spk <NA> <NA>", "start must be a finite number >= 0"),
        ("SPEAKER f 1 inf 1.0 <NA> <NA> spk <NA> <NA>", "start must be a finite number >= 0"),
        ("SPEAKER f 1 0.0 nan <NA> <NA> spk <NA> <NA>", "duration must be a finite number > 0"),
        ("SPEAKER f 1 0.0 0 <NA> <NA> spk <NA> <NA>", "duration must be a finite number > 0"),
        ("SPEAKER f 1 0.0 -1 <NA> <NA> spk <NA> <NA>", "duration must be a finite number > 0"),
        ("SPAEKER f 1 0.0 1.0 <NA> <NA> spk <NA> <NA>", "unknown RTTM record type 'SPAEKER'"),
    ],
)
def test_read_rttm_errors_name_file_and_line(tmp_path, line, match):
    path = tmp_path / "bad.rttm"
    path.write_text(f";; header\nSPEAKER f 1 0 1 <NA> <NA> a <NA> <NA>\n\n{line}\n")
    with pytest.raises(TurnError, match=rf"bad\.rttm, line 4: .*{match}"):
        read_rttm(path)


def test_turns_from_tuples():
    assert turns_from_tuples([(1, 2), (0.5, 1.5, "b"), (3, 4, 7), (5, 6, None)]) == [
        Turn(1.0, 2.0, None),
        Turn(0.5, 1.5, "b"),
        Turn(3.0, 4.0, "7"),
        Turn(5.0, 6.0, None),
    ]
    with pytest.raises(TurnError, match=r"turn 1: expected \(start, end\[, speaker\]\)"):
        turns_from_tuples([(0, 1), (1, 2, "a", "extra")])
    with pytest.raises(TurnError, match="turn 0: expected"):
        turns_from_tuples([3.0])
    with pytest.raises(TurnError, match="turn 0: start and end must be numbers"):
        turns_from_tuples([("a", 1)])


def test_check_turns_sorts_clips_and_keeps_overlaps():
    turns = [Turn(5.0, 10.004, "a"), Turn(0.0, 6.0, "b"), Turn(0.0, 6.0, "a")]
    assert check_turns(turns, 10.0, "talk.wav") == [
        Turn(0.0, 6.0, "a"),
        Turn(0.0, 6.0, "b"),  # the same span, another speaker: kept
        Turn(5.0, 10.0, "a"),  # overlaps, ends within 10 ms past the end: clipped
    ]
    with pytest.raises(TurnError, match="^x: no speaker turns given"):
        check_turns([], 3.0, "x")  # nothing to analyse: said, not an empty result


@pytest.mark.parametrize(
    ("turn", "match"),
    [
        (Turn(5.0, 10.02, "a"), r"ends at 10\.02 s, past the end of the file \(10 s"),
        (Turn(10.0, 10.005, "a"), r"starts at 10 s, at or past the end"),
        (Turn(2.0, 2.0, "a"), "zero or negative length"),
        (Turn(3.0, 2.0, "a"), "zero or negative length"),
        (Turn(-0.1, 2.0, "a"), r"starts before the file"),
        (Turn(float("nan"), 2.0, "a"), "not finite"),
        (Turn(1.0, float("inf"), "a"), "not finite"),
        (Turn(1.0, 2.0, "a"), "is given twice"),
    ],
)
def test_check_turns_errors_name_the_file_and_turn(turn, match):
    turns = [Turn(1.0, 2.0, "a"), Turn(1.0, 2.0, "b"), turn]
    with pytest.raises(TurnError, match=rf"talk\.wav: turn Turn\(.*\) .*{match}") as info:
        check_turns(turns, 10.0, "talk.wav")
    assert repr(turn.start)[:3] in str(info.value)


def test_check_turns_rejects_bad_duration_and_items():
    with pytest.raises(TurnError, match="x.wav: duration"):
        check_turns([Turn(0, 1)], float("nan"), "x.wav")
    with pytest.raises(TypeError, match="expected Turn objects"):
        check_turns([(0, 1)], 2.0, "x.wav")


def test_turns_from_annotation():
    core = pytest.importorskip("pyannote.core")
    annotation = core.Annotation(uri="meeting")
    annotation[core.Segment(4.0, 6.5)] = "spk_1"
    annotation[core.Segment(0.0, 5.0)] = "spk_0"
    annotation[core.Segment(4.0, 6.5), "second"] = "spk_0"  # same span, two speakers
    assert turns_from_annotation(annotation) == [
        Turn(0.0, 5.0, "spk_0"),
        Turn(4.0, 6.5, "spk_0"),
        Turn(4.0, 6.5, "spk_1"),
    ]
    assert turns_from_annotation(core.Annotation()) == []
    with pytest.raises(TypeError, match="expected a pyannote.core.Annotation"):
        turns_from_annotation([(0, 1, "a")])


def test_turns_from_annotation_without_pyannote(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyannote.core", None)  # makes the import fail
    with pytest.raises(ImportError, match=r'pip install "agegender_sb\[pyannote\]"'):
        turns_from_annotation(object())
