"""File analysis: window plan, windows read from the file, pooling, batching, bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from paths import REPO

from agegender_sb import AgeGenderClassifier, AudioError, load_audio
from agegender_sb.audio import AudioFile
from agegender_sb.inference.analysis import MAX_WHOLE_SECONDS, Analyzer, plan_windows
from agegender_sb.inference.results import AgeGenderPrediction

ROOT = REPO


def _noise(path, seconds, sample_rate=16000, channels=1, seed=0, subtype="FLOAT"):
    rng = np.random.RandomState(seed)
    n = int(round(seconds * sample_rate))
    x = 0.1 * rng.randn(n, channels) * (1 + np.sin(np.arange(n) / sample_rate))[:, None]
    sf.write(str(path), x.astype(np.float32), sample_rate, subtype=subtype)
    return Path(path)


def test_plan_windows_tail_and_overlap():
    # 4 s windows, 4 s hop, tails under 3 s merged into the previous window
    assert plan_windows(10, 4, 4, 3, sample_rate=1) == [(0, 4), (4, 10)]
    assert plan_windows(11, 4, 4, 3, sample_rate=1) == [(0, 4), (4, 8), (8, 11)]
    assert plan_windows(12, 4, 4, 3, sample_rate=1) == [(0, 4), (4, 8), (8, 12)]
    assert plan_windows(3, 4, 4, 3, sample_rate=1) == [(0, 3)]  # shorter than one window
    assert plan_windows(8, 4, 2, 3, sample_rate=1) == [(0, 4), (2, 6), (4, 8)]
    assert plan_windows(9, 4, 2, 3, sample_rate=1) == [(0, 4), (2, 6), (4, 8), (6, 9)]
    assert plan_windows(17, 4, 2, 3, sample_rate=2) == [(0, 8), (4, 12), (8, 17)]
    for n in range(1, 200):  # window 4, hop 3, tail 3
        bounds = plan_windows(n, 4, 3, 3, sample_rate=1)
        assert bounds[0][0] == 0 and bounds[-1][1] == n  # covers the signal
        assert all(b[0] <= a[1] for a, b in zip(bounds, bounds[1:]))  # without gaps
        assert all(e - s <= 6 for s, e in bounds)  # at most hop + tail long
        assert all(e - s >= 3 for s, e in bounds) or n < 3  # no window under the tail
    with pytest.raises(ValueError):
        plan_windows(10, 4, 5)
    with pytest.raises(ValueError):
        plan_windows(10, 0, None)
    with pytest.raises(ValueError, match="shorter than the encoder"):
        plan_windows(16000, 0.01)


def test_analyzer_checks_its_settings(clf):
    for bad in ({"window": 2, "hop": 3}, {"window": 0}, {"max_whole": -1},
                {"max_whole": float("inf")}, {"batch_size": 0}, {"trim": True}):
        with pytest.raises(ValueError):
            Analyzer(clf, **bad)


@pytest.mark.parametrize("sample_rate, channels", [(16000, 1), (8000, 1), (22050, 2),
                                                   (44100, 2), (48000, 2), (16001, 1)])
def test_windows_equal_slices_of_whole_signal(clf, tmp_path, sample_rate, channels):
    path = _noise(tmp_path / "x.wav", 21.3, sample_rate, channels)
    whole = load_audio(path)
    bounds = plan_windows(whole.shape[0], 4, 3, 3)
    assert bounds[-1][1] == whole.shape[0]
    with AudioFile(path) as audio:
        assert audio.n16 == whole.shape[0]
        for start, end in bounds:
            wav = audio.read(start, end)
            assert wav.shape[0] == end - start
            assert float((wav - whole[start:end]).abs().max()) < 1e-5
    # the analysis plans the same windows (in seconds)
    res = Analyzer(clf, window=4, hop=3, min_tail=3, max_whole=0).analyse(path)
    assert list(res.spans[0].windows) == [(s / 16000, e / 16000) for s, e in bounds]
    assert len(res.spans[0].window_predictions) == len(bounds)


def test_window_errors_name_the_file(clf, tmp_path):
    x = np.zeros(16000 * 12, dtype=np.float32)
    x[16000 * 9] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with AudioFile(tmp_path / "nan.wav") as audio:
        audio.read(0, 16000 * 8)  # the part before the NaN reads fine
        with pytest.raises(AudioError, match=r"nan\.wav \[8\.00-12\.00 s\].*NaN"):
            audio.read(16000 * 8, 16000 * 12)
    with pytest.raises(AudioError, match=r"nan\.wav \[8\.00-12\.00 s\].*NaN"):
        Analyzer(clf, max_whole=0).analyse(tmp_path / "nan.wav")
    with pytest.raises(AudioError, match=r"nan\.wav: the audio contains 1 NaN"):
        Analyzer(clf).analyse(tmp_path / "nan.wav")  # whole: the file's name alone
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        AudioFile(tmp_path / "missing.wav")
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        Analyzer(clf).analyse(tmp_path / "missing.wav")


def _independent(clf, path, bounds_s):
    """Run the classifier on slices of the whole-file signal and pool by hand."""
    whole = load_audio(path)
    ages, logits, weights = [], [], []
    for start, end in bounds_s:
        seg = whole[int(round(start * 16000)) : int(round(end * 16000))]
        pred = clf.predict_batch(seg)
        ages.append(float(pred.age[0]))
        logits.append(pred.gender_logits[0].double())
        weights.append(end - start)
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    age = float((w * torch.tensor(ages, dtype=torch.float64)).sum())
    mean_logits = (w[:, None] * torch.stack(logits)).sum(0)
    return age, mean_logits, torch.softmax(mean_logits, -1)


def test_long_file_pooling_matches_independent_computation(clf, tmp_path):
    path = _noise(tmp_path / "long.wav", 41.0, 22050, channels=2, seed=3)
    expected_bounds = [(4.0 * k, 4.0 * k + 4) for k in range(9)] + [(36.0, 41.0)]
    res = Analyzer(clf).analyse(path)  # defaults: whole up to 30 s, 4 s windows, 4 s hop
    (span,) = res.spans
    assert span.windowed and res.duration == pytest.approx(41.0)
    assert res.speech == pytest.approx(41.0) and res.error is None and span.speech_spans is None
    assert np.allclose(span.windows, expected_bounds)
    assert len(span.window_predictions) == len(expected_bounds)
    age, logits, probs = _independent(clf, path, expected_bounds)
    assert float(res.prediction.age[0]) == pytest.approx(age, abs=1e-4)
    assert torch.allclose(res.prediction.gender_logits[0].double(), logits, atol=1e-5)
    assert torch.allclose(res.prediction.gender_probs[0].double(), probs, atol=1e-5)
    assert res.prediction.gender == [clf.labels[int(probs.argmax())]]
    # the Python entries give the same
    pred = clf.predict_file(path, vad=None)
    assert torch.allclose(pred.gender_logits, res.prediction.gender_logits)
    assert torch.allclose(clf.analyzer(vad=None).analyse(path).prediction.age,
                          res.prediction.age)
    # overlapping windows: weights are window durations
    res2 = Analyzer(clf, window=5, hop=2.5, max_whole=0).analyse(path)
    bounds2 = [(2.5 * k, 2.5 * k + 5) for k in range(15)] + [(37.5, 41.0)]
    assert np.allclose(res2.spans[0].windows, bounds2)
    age2, logits2, _ = _independent(clf, path, bounds2)
    assert float(res2.prediction.age[0]) == pytest.approx(age2, abs=1e-4)
    assert torch.allclose(res2.prediction.gender_logits[0].double(), logits2, atol=1e-5)
    pred2 = clf.predict_file(path, window=5, hop=2.5, max_whole=0, vad=None)
    assert torch.allclose(pred2.gender_logits, res2.prediction.gender_logits)


def test_short_files_are_analysed_whole_as_before(clf, tmp_path):
    path = _noise(tmp_path / "short.wav", MAX_WHOLE_SECONDS, 16000)
    res = Analyzer(clf).analyse(path)
    (span,) = res.spans
    assert not span.windowed and list(span.windows) == [(0.0, MAX_WHOLE_SECONDS)]
    assert span.window_predictions is None
    ref = clf.predict_batch(load_audio(path))
    assert torch.equal(res.prediction.gender_logits, ref.gender_logits)
    assert torch.equal(clf.predict_file(path, vad=None).age, ref.age)


def test_results_do_not_depend_on_batch_size(clf, tmp_path):
    paths = [str(_noise(tmp_path / f"f{i}.wav", s, sr, seed=i))
             for i, (s, sr) in enumerate([(1.0, 16000), (2.7, 8000), (0.6, 16000),
                                          (33.0, 16000), (1.9, 44100)])]
    one = dict(Analyzer(clf, batch_size=1).analyse_many(paths))
    three = dict(Analyzer(clf, batch_size=3).analyse_many(paths))
    assert list(one) == paths and list(three) == paths
    for p in paths:
        a, b = one[p].prediction, three[p].prediction
        assert torch.allclose(a.gender_logits, b.gender_logits, atol=1e-5)
        assert torch.allclose(a.age, b.age, atol=1e-5)
        wa, wb = one[p].spans[0].window_predictions, three[p].spans[0].window_predictions
        assert (wa is None) == (wb is None) == (p != paths[3])
    assert torch.allclose(one[paths[3]].spans[0].window_predictions.age,
                          three[paths[3]].spans[0].window_predictions.age, atol=1e-5)
    # (path, turns) items are accepted too
    (path, res), = Analyzer(clf).analyse_many([(paths[0], None)])
    assert path == paths[0] and torch.allclose(res.prediction.age, one[paths[0]].prediction.age)


def test_pool_rejects_bad_weights(clf):
    pred = clf.predict_batch(torch.randn(2, 4000))
    for bad in ([0.0, 0.0], [1.0], [1.0, 1.0, 1.0], [2.0, -1.0], [float("nan"), 1.0]):
        with pytest.raises(ValueError, match="non-negative weights"):
            pred.pool(bad)
    same = pred.pool([1.0, 0.0])
    assert torch.allclose(same.gender_logits, pred.gender_logits[:1])
    assert torch.allclose(same.age, pred.age[:1]) and same.gender == pred.gender[:1]
    # take / cat are inverses over rows
    again = AgeGenderPrediction.cat([pred.take([1]), pred.take([0])])
    assert torch.equal(again.age, pred.age.flip(0)) and again.gender == pred.gender[::-1]


_CHILD = r"""
import resource, sys
from agegender_sb.cli import main
status = main(["predict", sys.argv[1], "--source", sys.argv[2], "-o", sys.argv[3], "-q",
               "--vad", sys.argv[4]])
print(status, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_kib(audio, checkpoint, out, vad):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(audio), checkpoint, str(out), vad],
                          capture_output=True, text=True, env=env, check=True)
    status, rss = proc.stdout.split()
    assert status == "0", proc.stderr
    return int(rss)


def _write_long_noise(path, seconds, sample_rate=16000):
    """Write noise block by block, so the test itself stays small."""
    rng = np.random.RandomState(0)
    with sf.SoundFile(str(path), "w", sample_rate, 1, subtype="PCM_16") as fh:
        for _ in range(int(seconds // 60)):
            fh.write((0.1 * rng.randn(60 * sample_rate)).astype(np.float32))
    return path


@pytest.mark.parametrize("vad, minutes", [("none", 20), ("silero", 10)])
def test_long_file_memory_is_bounded(tiny_checkpoint, tmp_path, vad, minutes):
    """A 20-minute file runs in the peak memory of a 1-minute one; so does a 10-minute one
    through the speech detector (which reads the file in blocks too).

    The 20-minute signal alone is 77 MB as float32 (10 minutes: 38 MB); reading it whole
    (``load_audio``) after the same run was measured to raise the child's peak RSS by about
    270 MB, far above the 20 MiB allowed here.
    """
    short = _write_long_noise(tmp_path / "short.wav", 60)
    long = _write_long_noise(tmp_path / "long.wav", minutes * 60)
    rss_short = _peak_rss_kib(short, tiny_checkpoint, tmp_path / "s.csv", vad)
    rss_long = _peak_rss_kib(long, tiny_checkpoint, tmp_path / "l.csv", vad)
    print(f"peak RSS ({vad}): 1 min {rss_short / 1024:.1f} MiB, {minutes} min "
          f"{rss_long / 1024:.1f} MiB")
    assert rss_long - rss_short < 20 * 1024, (rss_short, rss_long)
    rows = (tmp_path / "l.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"{long},,,,{minutes * 60}.000,")
    if vad == "none":  # analysed: all of it is speech, no error
        assert rows[1].startswith(f"{long},,,,1200.000,1200.000,") and rows[1].endswith(",")


def _speech(speechocean, seconds):
    """Real utterances (16 kHz) joined until ``seconds`` long."""
    parts, total = [], 0
    for line in (speechocean / "test" / "wav.scp").read_text().splitlines():
        x, sr = sf.read(speechocean / line.split()[1], dtype="float32")
        assert sr == 16000
        parts.append(x)
        total += len(x)
        if total >= seconds * sr:
            break
    return np.concatenate(parts)


def test_classify_file_windows_long_files_like_predict_file(clf, tmp_path, speechocean):
    path = tmp_path / "long.wav"
    sf.write(path, _speech(speechocean, 33), 16000)
    assert sf.info(path).duration > MAX_WHOLE_SECONDS
    probs, score, index, labels = clf.classify_file(str(path))
    pred = clf.predict_file(path)
    assert torch.equal(probs, pred.gender_probs) and labels == pred.gender
    assert torch.equal(index, pred.gender_probs.argmax(-1))
    res = clf.analyzer().analyse(path)  # the default analysis: windows over detected speech
    assert res.spans[0].windowed and 0 < res.speech <= res.duration
    assert torch.equal(res.prediction.gender_probs, probs)
    # windowed: not the same as one pass over the whole file
    whole = clf.predict_file(path, max_whole=60, vad=None)
    assert not torch.allclose(whole.gender_probs, pred.gender_probs, atol=1e-6)
    assert torch.equal(whole.gender_logits, clf.predict_batch(load_audio(path)).gender_logits)


def test_model_failure_on_one_file_does_not_stop_the_others(tiny_checkpoint, tmp_path):
    """A file the model fails on (here: a model that runs out of memory past 2 s) gets its own
    error naming it; its batch neighbours are analysed one by one and keep their results."""

    class SmallMemoryClassifier(AgeGenderClassifier):
        def run_model(self, wavs, wav_lens):
            if wavs.shape[-1] > 32000:
                raise RuntimeError("out of memory")
            return super().run_model(wavs, wav_lens)

    clf = SmallMemoryClassifier.from_hparams(source=tiny_checkpoint)
    rng = np.random.RandomState(0)
    paths = []
    for name, seconds in (("a", 1.0), ("big", 3.0), ("b", 1.5)):
        paths.append(str(tmp_path / f"{name}.wav"))
        sf.write(paths[-1], (0.1 * rng.randn(int(16000 * seconds))).astype(np.float32), 16000)
    results = dict(Analyzer(clf, batch_size=3).analyse_many(paths))
    assert list(results) == paths
    assert isinstance(results[paths[1]], RuntimeError)
    assert str(results[paths[1]]).startswith(f"{paths[1]}: the model failed")
    for p in (paths[0], paths[2]):
        expected = clf.predict_batch(load_audio(p))
        assert torch.allclose(results[p].prediction.age, expected.age, atol=1e-5)
    # one file alone: the error is raised, naming it
    with pytest.raises(RuntimeError, match=f"{paths[1]}: the model failed"):
        Analyzer(clf).analyse(paths[1])


def test_every_setting_that_decides_the_numbers_is_in_the_record():
    """The provenance record holds each analysis setting (batch_size excepted: results do not
    depend on it), so --resume refuses a table made with any other value."""
    import dataclasses

    from agegender_sb.inference.analysis import AnalysisSettings

    base = AnalysisSettings(detector=_FixedDetector([]))
    others = {"window": 8.0, "hop": 1.0, "max_whole": 10.0, "min_tail": 1.0,
              "detector": _FixedDetector([(0, 1)]), "trim": True, "context": 0.25}
    fields = {f.name for f in dataclasses.fields(AnalysisSettings)} - {"batch_size"}
    assert set(others) == fields
    for name, value in others.items():
        changed = dataclasses.replace(base, **{name: value})
        assert changed.record() != base.record(), name
        assert changed.record()[name] != base.record()[name], name
    assert dataclasses.replace(base, batch_size=4).record() == base.record()


class _FixedDetector:
    """A speech detector that finds the same spans (16 kHz samples) in whatever it is given:
    it stands in for the detector so that the test can say which samples are speech."""

    def __init__(self, spans):
        self.spans = list(spans)

    def detect(self, blocks):
        for _ in blocks:
            pass
        return list(self.spans)

    def __repr__(self):
        return f"_FixedDetector({self.spans})"


def test_context_is_kept_around_detected_speech(clf, tmp_path):
    """A long file with speech at 10-12 s and 20-21 s: the windows cut the speech joined end
    to end with the context around each region, and the model sees exactly those samples."""
    sr = 16000
    x = 0.1 * np.random.RandomState(3).randn(40 * sr).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(str(path), x, sr)
    speech = [(10 * sr, 12 * sr), (20 * sr, 21 * sr)]
    context = 0.5
    res = Analyzer(clf, detector=_FixedDetector(speech), context=context, max_whole=30
                   ).analyse(path)
    span = res.spans[0]
    regions = [(s - int(context * sr), e + int(context * sr)) for s, e in speech]
    assert span.windows == ((regions[0][0] / sr, regions[1][1] / sr),)  # one whole pass
    assert span.speech == 3.0
    joined = np.concatenate([x[s:e] for s, e in regions])
    ref = clf.predict_batch(torch.from_numpy(joined))
    assert torch.allclose(span.prediction.age, ref.age, atol=1e-5)
    no_context = Analyzer(clf, detector=_FixedDetector(speech), context=0.0, max_whole=30
                          ).analyse(path).spans[0]
    assert no_context.windows == ((10.0, 21.0),)
    assert not torch.allclose(no_context.prediction.age, ref.age, atol=1e-5)
