"""Errors found in the field, each one clear line (exit 2 from the command line), and inputs
that must work: empty turn lists and Annotations, Turn objects among tuples, vad_options with a
list value, float64 samples beyond float32's range, a low --vad-threshold."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf
import torch

from agegender_sb import AgeGenderClassifier, AudioError, Turn
from agegender_sb.cli import main
from agegender_sb.errors import SettingsError, TurnError
from agegender_sb.speech.turns import turns_from_tuples


@pytest.fixture(scope="module")
def clf(tiny_checkpoint):
    return AgeGenderClassifier.from_hparams(source=tiny_checkpoint)


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "two.wav"
    rng = np.random.default_rng(0)
    sf.write(str(path), (0.1 * rng.standard_normal(32000)).astype(np.float32), 16000)
    return path


def test_empty_turns_are_one_clear_error(clf, wav):
    with pytest.raises(TurnError, match=r"two\.wav: no speaker turns given"):
        clf.predict_segments(wav, [], vad=None)


def test_empty_annotation_is_one_clear_error(clf, wav):
    core = pytest.importorskip("pyannote.core")
    with pytest.raises(TurnError, match=r"two\.wav: no speaker turns given"):
        clf.predict_segments(wav, core.Annotation(), vad=None)


def test_turns_and_tuples_mixed(clf, wav):
    assert turns_from_tuples([Turn(0.0, 1.0, "a"), (1.0, 2.0, "b")]) == [
        Turn(0.0, 1.0, "a"), Turn(1.0, 2.0, "b")]
    mixed = clf.predict_segments(wav, [Turn(0.0, 1.0, "a"), (1.0, 2.0, "b")], vad=None)
    plain = clf.predict_segments(wav, [(0.0, 1.0, "a"), (1.0, 2.0, "b")], vad=None)
    assert [s.speaker for s in mixed.spans] == ["a", "b"]
    for m, p in zip(mixed.spans, plain.spans):
        assert torch.equal(m.prediction.age, p.prediction.age)


@pytest.mark.parametrize("options", [{"threshold": [0.3]}, {"min_speech_s": {"a": 1}}])
def test_vad_options_with_a_container_value(clf, options):
    with pytest.raises(SettingsError, match=r"^vad_options\['\w+'\] must be a number"):
        clf.analyzer(vad="silero", vad_options=options)


def test_float64_beyond_float32_is_refused_not_nan(clf):
    x = torch.zeros(2, 16000, dtype=torch.float64)
    x[0] = torch.randn(16000, dtype=torch.float64) * 0.1
    x[1] = torch.randn(16000, dtype=torch.float64) * 1e40
    with pytest.raises(AudioError, match=r"^wavs\[1\]: samples up to .* overflow float32"):
        clf.predict_batch(x)
    # float64 within float32's range: the float32 numbers, finite
    pred = clf.predict_batch(x[:1])
    assert torch.isfinite(pred.age).all()
    assert torch.equal(pred.age, clf.predict_batch(x[:1].float()).age)


def test_low_vad_threshold_from_the_command(tmp_path, wav, tiny_checkpoint, capsys):
    out = tmp_path / "t.csv"
    assert main(["predict", str(wav), "--source", tiny_checkpoint, "-o", str(out),
                 "--vad-threshold", "0.005", "--quiet"]) in (0, 1)
    assert "neg_threshold" not in capsys.readouterr().err
    assert len(list(csv.DictReader(out.open()))) == 1
    assert main(["predict", str(wav), "--source", tiny_checkpoint, "-o", str(tmp_path / "u.csv"),
                 "--vad-threshold", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()  # argparse: usage, then the one error line
    assert "--vad-threshold: expected a number between 0 and 1" in err.splitlines()[-1]
    assert "neg_threshold" not in err
