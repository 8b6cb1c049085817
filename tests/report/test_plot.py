"""``agegender plot``: a corpus report drawn from tables the command wrote (files, windows,
speakers, turns), with and without a truth table; its metrics against an independent
computation (numpy MAE, UAR by hand); clear errors (no matplotlib, bad truth)."""

from __future__ import annotations

import csv
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agegender_sb.cli import main
from agegender_sb.report.plot import plot_report
from agegender_sb.report.scoring import read_predictions, voices

pytest.importorskip("matplotlib")

LABELS = ("female", "male", "child")


def _noise(path, seconds, seed):
    rng = np.random.RandomState(seed)
    n = int(seconds * 16000)
    x = 0.1 * rng.randn(n) * (1 + np.sin(np.arange(n) / (500 + 300 * seed)))
    sf.write(str(path), x.astype(np.float32), 16000)
    return str(path)


@pytest.fixture(scope="module")
def table(tmp_path_factory, tiny_checkpoint):
    """A table written by ``agegender predict``: 6 files of 3 speakers, one windowed."""
    d = tmp_path_factory.mktemp("plot")
    files = [_noise(d / f"u{i}.wav", 1.0 + 0.3 * i, seed=i) for i in range(5)]
    files.append(_noise(d / "long.wav", 7.0, seed=9))
    spk = d / "utt2spk"
    spk.write_text("u0 s1\nu1 s1\nu2 s2\nu3 s2\nu4 s3\nlong s3\n")
    out = d / "pred.csv"
    assert main(["predict", *files, "--source", tiny_checkpoint, "--vad", "none",
                 "--segments", "--max-whole", "3", "--window", "2", "--speakers", str(spk),
                 "-o", str(out), "-q"]) == 0
    return {"dir": d, "files": files, "table": out, "speakers": spk}


def _png_size(path) -> tuple[int, int]:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _csv_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_without_truth(table, tmp_path, capsys):
    png = tmp_path / "report.png"
    assert main(["plot", str(table["table"]), "-o", str(png), "--speakers",
                 str(table["speakers"])]) == 0
    width, height = _png_size(png)
    assert 1000 <= width <= 2000 and 500 <= height <= 2000, (width, height)
    assert png.stat().st_size > 20_000
    out = capsys.readouterr().out
    assert f"wrote {png}" in out
    assert "6 voice(s), 3 speaker(s) drawn" in out
    assert "MAE" not in out


def test_report_with_path_truth_metrics(table, tmp_path, capsys):
    """Truth by path (one age unknown, one gender unknown, one file not in the truth):
    MAE, accuracy, UAR and confusion against numpy and a hand count."""
    files = table["files"]
    truth = tmp_path / "truth.csv"
    given = {files[0]: (30, "male"), files[1]: (45, "female"), files[2]: ("", "female"),
             files[3]: (8, "child"), files[4]: (62, ""), }
    truth.write_text("path,age,gender\n" + "".join(
        f"{Path(p).name if i % 2 else p},{a},{g}\n" for i, (p, (a, g)) in
        enumerate(given.items())))  # by full path and by file name
    png = tmp_path / "with-truth.png"
    assert main(["plot", str(table["table"]), "-o", str(png), "--truth", str(truth)]) == 0
    width, height = _png_size(png)
    assert height > 900  # the second row of panels
    printed = capsys.readouterr().out

    # independently: the file rows of the CSV, matched by path
    rows = {r["path"]: r for r in _csv_rows(table["table"])
            if r["path"] and not r["start"] and not r["speaker"]}
    ages = [(float(rows[p]["age"]), float(a)) for p, (a, _) in given.items() if a != ""]
    mae = np.mean([abs(p - t) for p, t in ages])
    genders = [(rows[p]["gender"], g) for p, (_, g) in given.items() if g]
    recall = {}
    for lab in {g for _, g in genders}:
        of_lab = [p for p, g in genders if g == lab]
        recall[lab] = sum(p == lab for p in of_lab) / len(of_lab)
    uar = sum(recall.values()) / len(recall)
    acc = np.mean([p == g for p, g in genders])

    report = plot_report(table["table"], tmp_path / "again.png", truth=truth)
    m = report.metrics
    assert report.n_matched == 5
    assert m["n_age"] == 4 and m["n_gender"] == 4
    assert m["mae"] == pytest.approx(mae, abs=1e-9)
    assert m["uar"] == pytest.approx(uar, abs=1e-12)
    assert m["acc"] == pytest.approx(acc, abs=1e-12)
    confusion = [[sum(1 for p, g in genders if g == t and p == q) for q in LABELS]
                 for t in LABELS]
    assert m["confusion"] == confusion
    assert f"age MAE {mae:.2f} years over 4" in printed
    assert f"gender accuracy {acc:.3f}, UAR {uar:.3f} over 4" in printed


def test_report_with_speaker_truth(table, tmp_path):
    truth = tmp_path / "spk-truth.csv"
    truth.write_text("speaker,age,gender\ns1,20,f\ns2,70,m\ns3,35,M\nnobody,50,f\n")
    report = plot_report(table["table"], tmp_path / "spk.png", truth=truth,
                         speakers=table["speakers"])
    spk_rows = {r["speaker"]: r for r in _csv_rows(table["table"]) if not r["path"]}
    want = {"s1": (20, "female"), "s2": (70, "male"), "s3": (35, "male")}
    mae = np.mean([abs(float(spk_rows[s]["age"]) - a) for s, (a, _) in want.items()])
    correct = {g: [spk_rows[s]["gender"] == g for s, (_, gg) in want.items() if gg == g]
               for g in ("female", "male")}
    uar = np.mean([np.mean(v) for v in correct.values()])
    assert report.truth_key == "speaker" and report.n_matched == 3
    assert report.metrics["mae"] == pytest.approx(mae, abs=1e-9)
    assert report.metrics["uar"] == pytest.approx(uar, abs=1e-12)


def test_turn_table(tmp_path, tiny_checkpoint):
    """Speaker turns: voices are the file's speakers; the spread is their turns."""
    wav = _noise(tmp_path / "talk.wav", 6.0, seed=3)
    turns = tmp_path / "turns.csv"
    turns.write_text(f"path,start,end,speaker\n{wav},0,1.5,A\n{wav},1.5,3,B\n"
                     f"{wav},3,4.5,A\n{wav},4.5,6,B\n")
    out = tmp_path / "turns-pred.jsonl"
    assert main(["predict", str(turns), "--source", tiny_checkpoint, "--vad", "none",
                 "--segments", "-o", str(out), "-q"]) == 0
    rows, labels = read_predictions(out)
    assert labels == LABELS
    assert sorted(r["speaker"] for r in voices(rows)) == ["A", "B"]
    report = plot_report(out, tmp_path / "turns.svg")
    assert report.n_voices == 2 and report.n_speakers == 2
    assert (tmp_path / "turns.svg").read_text().lstrip().startswith("<?xml")


def test_errors_exit_2(table, tmp_path, capsys, monkeypatch):
    png = tmp_path / "x.png"
    bad = tmp_path / "bad-truth.csv"
    bad.write_text("path,gender\nu0.wav,robot\n")
    assert main(["plot", str(table["table"]), "-o", str(png), "--truth", str(bad)]) == 2
    assert f"{bad}, line 2: gender 'robot' is none of the model's labels" in \
        capsys.readouterr().err
    nokey = tmp_path / "nokey.csv"
    nokey.write_text("file,age\nu0.wav,3\n")
    assert main(["plot", str(table["table"]), "-o", str(png), "--truth", str(nokey)]) == 2
    assert "needs a 'path' or 'speaker' column" in capsys.readouterr().err
    notable = tmp_path / "plain.csv"
    notable.write_text("a,b\n1,2\n")
    assert main(["plot", str(notable), "-o", str(png)]) == 2
    assert "not a table written by agegender predict" in capsys.readouterr().err
    # matplotlib missing: a clear message and exit 2
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["plot", str(table["table"]), "-o", str(png)]) == 2
    assert 'pip install "agegender_sb[plots]"' in capsys.readouterr().err
    assert not png.exists()
