"""agegender plot in the field: speakers pooled from file rows, only the panels there is
something for, per-band MAE drawn, model/settings and counts on the picture, and one-line
refusals (audio given as the table, NaN/inf truth ages, an unknown image format)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from agegender_sb.cli import main

pytest.importorskip("matplotlib")
from matplotlib import rc_context  # noqa: E402

from agegender_sb.report.plot import plot_report  # noqa: E402

COLUMNS = ["path", "speaker", "start", "end", "duration", "speech", "age", "female", "male",
           "child", "gender", "error"]
# path, speech seconds, age, (female, male, child) probabilities, error
FILES = [("s1_a.wav", 3.0, 20.0, (0.8, 0.1, 0.1), ""),
         ("s1_b.wav", 1.0, 40.0, (0.7, 0.2, 0.1), ""),
         ("s2_a.wav", 2.0, 9.0, (0.1, 0.1, 0.8), ""),
         ("quiet.wav", 0.0, None, None, "no speech detected"),
         ("broken.wav", None, None, None, "broken.wav: not an audio file")]
RECORD = {"agegender_sb": "0.2.0", "backend": "torch", "precision": "fp32",
          "model": {"fingerprint": "0123abcd4567ef89", "labels": ["female", "male", "child"],
                    "source": "models/tiny"},
          "analysis": {"window": 4.0, "hop": 4.0, "max_whole": 30.0,
                       "detector": "SileroDetector(threshold=0.5)"}}


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "t.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for name, speech, age, probs, error in FILES:
            gender = "" if probs is None else ("female", "male", "child")[int(np.argmax(probs))]
            w.writerow([name, "", "", "", 3.0, "" if speech is None else speech,
                        "" if age is None else age, *(probs or ("", "", "")), gender, error])
    (tmp_path / "t.csv.agegender.json").write_text(json.dumps(RECORD))
    (tmp_path / "utt2spk").write_text("s1_a s1\ns1_b s1\ns2_a s2\nquiet s3\n")
    return path


def test_speakers_pooled_from_file_rows(table, tmp_path, capsys):
    out = tmp_path / "r.png"
    assert main(["plot", str(table), "-o", str(out), "--speakers",
                 str(tmp_path / "utt2spk")]) == 0
    printed = capsys.readouterr().out
    assert "3 speaker(s) pooled here from the table's file rows" in printed
    truth = tmp_path / "truth.csv"
    truth.write_text("speaker,age,gender\ns1,30,female\ns2,10,child\n")
    report = plot_report(table, out, truth=truth, speakers=tmp_path / "utt2spk")
    # s1 pooled by seconds of speech: (3 * 20 + 1 * 40) / 4 = 25 years; s2: 9 years
    assert report.n_matched == 2
    assert report.metrics["mae"] == pytest.approx((abs(25 - 30) + abs(9 - 10)) / 2, abs=1e-3)
    assert report.metrics["acc"] == 1.0
    assert "speakers" in report.panels


def test_only_panels_with_content_and_bands_drawn(table, tmp_path):
    report = plot_report(table, tmp_path / "plain.png")
    assert report.panels == ["ages"]  # no speakers, no truth: no placeholder panels
    truth = tmp_path / "truth.csv"
    truth.write_text("path,age,gender\ns1_a.wav,22,female\ns2_a.wav,8,child\n"
                     "s1_b.wav,50,female\n")
    report = plot_report(table, tmp_path / "truth.png", truth=truth)
    assert report.panels == ["ages", "scatter", "confusion", "bands"]
    assert report.metrics["n_per_band"]["<15"] == 1


def test_model_settings_and_counts_on_the_picture(table, tmp_path, capsys):
    out = tmp_path / "r.svg"
    with rc_context({"svg.fonttype": "none"}):  # text kept as text, so it can be searched
        report = plot_report(table, out)
    svg = out.read_text()
    assert report.counts == {"answered": 3, "no speech": 1, "errors": 1}
    assert "files: 3 answered, 1 without speech, 1 error(s)" in svg
    assert "model models/tiny; weights 0123abcd4567ef89" in svg
    assert "window=4.0" in svg and "SileroDetector(threshold=0.5)" in svg
    assert main(["plot", str(table), "-o", str(tmp_path / "x.png")]) == 0
    assert "files: 3 answered, 1 without speech, 1 error(s)" in capsys.readouterr().out


def _one_line_exit_2(args, capsys, *needles):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_audio_given_as_the_table(tmp_path, capsys):
    wav = tmp_path / "meeting.wav"
    sf.write(str(wav), np.zeros(16000, np.float32), 16000)
    _one_line_exit_2(["plot", str(wav), "-o", str(tmp_path / "r.png")], capsys,
                     "meeting.wav: a binary file, not a table written by agegender predict")
    assert not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("age", ["nan", "inf", "-Infinity"])
def test_non_finite_truth_ages(table, tmp_path, capsys, age):
    truth = tmp_path / "truth.csv"
    truth.write_text(f"path,age\ns1_a.wav,{age}\n")
    _one_line_exit_2(["plot", str(table), "-o", str(tmp_path / "r.png"), "--truth",
                      str(truth)], capsys, "truth.csv, line 2: age", "not a finite number")


@pytest.mark.parametrize("name", ["r.xyz", "report"])
def test_unknown_image_format(table, tmp_path, capsys, name):
    _one_line_exit_2(["plot", str(table), "-o", str(tmp_path / name)], capsys,
                     name, "use one of:", ".png")
    assert not (tmp_path / name).exists()
