"""The ``agegender`` command: predict (files, folders, lists, turns, errors, long files, resume,
speakers, torchrun, speech detection), the table's safeguards (provenance, lock, outputs that
are inputs, awkward file names, broken folder entries), convert, info, export-onnx, exit
codes."""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from paths import REPO

from agegender_sb import AgeGenderClassifier, load_audio
from agegender_sb.batch.provenance import provenance_path
from agegender_sb.batch.tables import columns
from agegender_sb.cli import main

ROOT = REPO
LABELS = ("female", "male", "child")
COLUMNS = ["path", "speaker", "start", "end", "duration", "speech", "age", *LABELS, "gender",
           "error"]
NO_SPEECH = "no speech detected"


def _noise(path, seconds, sample_rate=16000, channels=1, seed=0, fmt=None):
    rng = np.random.RandomState(seed)
    n = int(round(seconds * sample_rate))
    x = 0.1 * rng.randn(n, channels) * (1 + np.sin(np.arange(n) / 3000))[:, None]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), sample_rate, format=fmt)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Good files (various rates, channels, formats), a long file, and broken inputs."""
    d = tmp_path_factory.mktemp("corpus")
    good = [
        _noise(d / "spk1" / "spk1-a.wav", 1.0, seed=1),
        _noise(d / "spk1" / "spk1-b.flac", 2.5, 44100, channels=2, seed=2),
        _noise(d / "spk2" / "sub" / "spk2-a.wav", 1.7, 8000, seed=3),
    ]
    long = _noise(d / "long" / "spk2-long.wav", 33.0, 22050, seed=4)
    short = _noise(d / "bad" / "short.wav", 0.01, seed=5)
    (d / "bad" / "notaudio.wav").write_text("this is not audio")
    (d / "spk1" / "notes.md").write_text("not an input")
    return {"dir": d, "good": [str(p) for p in good], "long": str(long), "short": str(short),
            "notaudio": str(d / "bad" / "notaudio.wav"), "missing": str(d / "missing.wav")}


@pytest.fixture(scope="module")
def speech_files(speechocean):
    """Three real utterances (16 kHz)."""
    lines = (speechocean / "test" / "wav.scp").read_text().splitlines()[:3]
    return [str(speechocean / line.split()[1]) for line in lines]


def _read(path):
    """A written table as dicts, file names byte-exact (line breaks, non-UTF-8 bytes)."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        text = fh.read()
    if str(path).endswith(".jsonl"):
        return [json.loads(line) for line in text.split("\n") if line]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    assert reader.fieldnames == COLUMNS
    return list(reader)


def _is_file_row(row):
    return row["path"] not in ("", None) and row["start"] in ("", None) and \
        row["speaker"] in ("", None)


def _file_rows(rows):
    return [r for r in rows if _is_file_row(r)]


def _run(*args):
    """``agegender predict ARGS -q`` (the default speech detector unless ARGS name one)."""
    return main(["predict", *map(str, args), "-q"])


def _predict(*args):
    """``agegender predict ARGS -q --vad none``: every sample analysed, as the reference
    does (the synthetic noise of these tests is not speech for a speech detector)."""
    if "--vad" not in args:
        args = (*args, "--vad", "none")
    return _run(*args)


def _check_row(row, pred, i=0):
    """A written row against an independent prediction (rounded to the table's decimals)."""
    assert float(row["age"]) == pytest.approx(float(pred.age[i]), abs=0.006)
    for j, lab in enumerate(LABELS):
        assert float(row[lab]) == pytest.approx(float(pred.gender_probs[i, j]), abs=6e-5)
    assert row["gender"] == pred.gender[i]
    assert row["error"] in ("", None)


def _snapshot(folder):
    """``{name: bytes}`` of the files in a folder (to show nothing was written)."""
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


# ---------------------------------------------------------------------------- the table
def test_mixed_good_and_bad_files(clf, corpus, tiny_checkpoint, tmp_path):
    out = tmp_path / "out.csv"
    inputs = corpus["good"] + [corpus["short"], corpus["notaudio"], corpus["missing"]]
    status = _predict(*inputs, "--source", tiny_checkpoint, "--output", out)
    assert status == 1
    rows = _read(out)
    assert [r["path"] for r in rows] == inputs
    for row, path in zip(rows, corpus["good"]):
        _check_row(row, clf.predict_batch(load_audio(path)))
        assert row["speaker"] == row["start"] == row["end"] == ""
        assert float(row["duration"]) == pytest.approx(sf.info(path).duration, abs=1e-3)
        assert row["speech"] == row["duration"]  # no detector: every second counts
    errors = {r["path"]: r["error"] for r in rows[3:]}
    assert "too short" in errors[corpus["short"]] and corpus["short"] in errors[corpus["short"]]
    assert "not a readable audio file" in errors[corpus["notaudio"]]
    assert "no such file" in errors[corpus["missing"]]
    for r in rows[3:]:  # a failed file: its path and the error, nothing else
        assert all(r[c] == "" for c in COLUMNS if c not in ("path", "error"))
    # all good → 0
    assert _predict(*corpus["good"], "--source", tiny_checkpoint, "-o", tmp_path / "g.csv") == 0


def test_stdout_csv_and_jsonl(corpus, tiny_checkpoint, tmp_path, capsys):
    assert _predict(corpus["good"][0], corpus["missing"], "--source", tiny_checkpoint) == 1
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert [r["path"] for r in rows] == [corpus["good"][0], corpus["missing"]]
    assert captured.err == ""  # no progress bar when stderr is not a terminal
    out = tmp_path / "out.jsonl"
    assert _predict(corpus["good"][0], corpus["missing"], "--source", tiny_checkpoint,
                    "-o", out) == 1
    recs = _read(out)
    assert list(recs[0]) == COLUMNS
    assert recs[0]["start"] is None and recs[0]["speaker"] is None and recs[0]["error"] is None
    assert isinstance(recs[0]["age"], float) and recs[1]["age"] is None
    for col in ("age", *LABELS, "duration", "speech"):
        assert recs[0][col] == pytest.approx(float(rows[0][col]))
    assert recs[0]["gender"] == rows[0]["gender"] and "no such file" in recs[1]["error"]
    # --format wins over the extension
    assert _predict(corpus["good"][0], "--source", tiny_checkpoint, "-o", tmp_path / "x.txt",
                    "--format", "jsonl") == 0
    assert json.loads((tmp_path / "x.txt").read_text())["path"] == corpus["good"][0]


def test_folders_and_list_files(corpus, tiny_checkpoint, tmp_path):
    d = corpus["dir"]
    out = tmp_path / "folder.csv"
    assert _predict(d / "spk1", d / "spk2", "--source", tiny_checkpoint, "-o", out) == 0
    assert [r["path"] for r in _read(out)] == sorted(corpus["good"][:2]) + [corpus["good"][2]]
    # .txt list: relative to the list's folder, comments and blanks skipped
    lists = tmp_path / "lists"
    lists.mkdir()
    lst = lists / "list.txt"
    lst.write_text(f"# inputs\n{d}/spk1/spk1-a.wav\n\n" + corpus["good"][2] +
                   f"\n{d}/spk1/spk1-a.wav\n")
    # .csv list with a path column, relative to the list's folder
    man = d / "manifest.csv"
    man.write_text("id,path,speaker\nx,spk1/spk1-b.flac,spk1\ny,missing.wav,spk9\n")
    out = tmp_path / "lists.csv"
    assert _predict(lst, man, "--source", tiny_checkpoint, "-o", out) == 1
    paths = [r["path"] for r in _read(out)]
    assert paths == [str(d / "spk1/spk1-a.wav"), corpus["good"][2], str(d / "spk1/spk1-b.flac"),
                     str(d / "missing.wav")]
    bad = tmp_path / "nopath.csv"
    bad.write_text("file,speaker\na.wav,s\n")
    assert _predict(bad, "--source", tiny_checkpoint, "-o", tmp_path / "b.csv") == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _predict(empty, "--source", tiny_checkpoint, "-o", tmp_path / "b.csv") == 2


def test_long_file_segments_and_pooling(clf, corpus, tiny_checkpoint, tmp_path):
    out = tmp_path / "seg.csv"
    assert _predict(corpus["good"][0], corpus["long"], "--source", tiny_checkpoint, "-o", out,
                    "--segments") == 0
    rows = _read(out)
    # a short file is analysed whole: no window rows, its file row only
    assert rows[0]["path"] == corpus["good"][0] and _is_file_row(rows[0])
    # long file: 33 s → 4 s windows, tail of 1 s merged into the last one
    seg, file_row = rows[1:-1], rows[-1]
    bounds = [(4.0 * k, 4.0 * k + 4) for k in range(7)] + [(28.0, 33.0)]
    assert [(float(r["start"]), float(r["end"])) for r in seg] == bounds
    assert all(r["path"] == corpus["long"] and r["speaker"] == "" for r in seg)
    assert file_row["path"] == corpus["long"] and _is_file_row(file_row)
    whole = load_audio(corpus["long"])
    preds = [clf.predict_batch(whole[int(s * 16000) : int(e * 16000)]) for s, e in bounds]
    for r, p in zip(seg, preds):
        _check_row(r, p)
        assert float(r["duration"]) == pytest.approx(float(r["end"]) - float(r["start"]))
        assert r["speech"] == r["duration"]
    w = torch.tensor([e - s for s, e in bounds], dtype=torch.float64)
    w /= w.sum()
    age = float(sum(wi * float(p.age[0]) for wi, p in zip(w, preds)))
    logits = sum(wi * p.gender_logits[0].double() for wi, p in zip(w, preds))
    probs = torch.softmax(logits, -1)
    assert float(file_row["age"]) == pytest.approx(age, abs=0.006)
    for j, lab in enumerate(LABELS):
        assert float(file_row[lab]) == pytest.approx(float(probs[j]), abs=6e-5)
    assert file_row["gender"] == LABELS[int(probs.argmax())]
    assert float(file_row["duration"]) == float(file_row["speech"]) == pytest.approx(33.0)
    # --max-whole / --window / --hop reach the analysis
    out2 = tmp_path / "seg2.csv"
    assert _predict(corpus["good"][1], "--source", tiny_checkpoint, "-o", out2, "--segments",
                    "--max-whole", "0", "--window", "1", "--hop", "0.5") == 0
    starts = [r["start"] for r in _read(out2)[:-1]]
    assert starts == ["0.000", "0.500", "1.000"]  # 2.5 s: 0-1, 0.5-1.5, 1.0-2.5 (tail merged)


def test_batch_size_does_not_change_results(corpus, tiny_checkpoint, tmp_path):
    inputs = corpus["good"] + [corpus["long"], corpus["missing"]]
    one, three = tmp_path / "b1.jsonl", tmp_path / "b3.jsonl"
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", one, "--segments") == 1
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", three, "--segments",
                    "--batch-size", "3", "--device", "cpu", "--threads", "1") == 1
    a, b = _read(one), _read(three)
    assert [(r["path"], r["start"]) for r in a] == [(r["path"], r["start"]) for r in b]
    for ra, rb in zip(a, b):
        for col in ("age", *LABELS):
            if ra[col] is not None:
                assert ra[col] == pytest.approx(rb[col], abs=1.01e-4)


# ---------------------------------------------------------------------------- resume
def test_resume_after_interrupted_run(corpus, tiny_checkpoint, tmp_path):
    inputs = corpus["good"] + [corpus["long"]]
    out = tmp_path / "out.csv"
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", out, "--segments") == 0
    ref = out.read_text()
    ref_lines = ref.splitlines(keepends=True)
    # simulate a kill (the provenance record, written first, stays): rows of the first three
    # files, then part of the long file's group (a window row) and a half-written line
    first = 1 + 3  # header + one file row per short file
    out.write_text("".join(ref_lines[:first]) + ref_lines[first] + ref_lines[first + 1][:9])
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", out, "--segments",
                    "--resume") == 0
    text = out.read_text()
    assert text.startswith("".join(ref_lines[:first]))  # earlier rows kept as they were
    assert text == ref  # nothing lost, nothing duplicated
    # resuming a complete table does nothing
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", out, "--segments",
                    "--resume") == 0
    assert out.read_text() == text


def test_resume_retries_failed_files_and_checks_columns(corpus, tiny_checkpoint, tmp_path,
                                                        capsys):
    late = tmp_path / "late.wav"
    out = tmp_path / "out.jsonl"
    assert _predict(corpus["good"][0], late, "--source", tiny_checkpoint, "-o", out) == 1
    before = out.read_text()
    _noise(late, 1.2, seed=9)
    assert _predict(corpus["good"][0], late, "--source", tiny_checkpoint, "-o", out,
                    "--resume") == 0
    assert _read(out)[0] == json.loads(before.splitlines()[0])  # the finished file kept
    rows = _read(out)
    assert [r["path"] for r in rows] == [corpus["good"][0], str(late)]
    assert rows[1]["error"] is None  # the retried file's row replaces its error row
    # a table with other columns (its record in place) cannot be resumed
    other = tmp_path / "other.csv"
    assert _predict(late, "--source", tiny_checkpoint, "-o", other) == 0
    other.write_text("path,age\nx.wav,3\n")
    capsys.readouterr()
    assert _predict(late, "--source", tiny_checkpoint, "-o", other, "--resume") == 2
    assert "do not match" in capsys.readouterr().err
    assert other.read_text() == "path,age\nx.wav,3\n"
    # --resume needs --output
    assert _predict(late, "--source", tiny_checkpoint, "--resume") == 2


@pytest.mark.parametrize("content", [b"5\n", b"null\n", b'{"path": [1]}\n', b"\xff\xfe\n"])
def test_resume_refuses_a_damaged_table(corpus, tiny_checkpoint, tmp_path, capsys, content):
    out = tmp_path / "out.jsonl"
    assert _predict(corpus["good"][0], "--source", tiny_checkpoint, "-o", out) == 0
    out.write_bytes(content)
    record = provenance_path(out).read_bytes()
    capsys.readouterr()
    status = _predict(corpus["good"][0], "--source", tiny_checkpoint, "-o", out, "--resume")
    assert status == 2
    assert f"{out}, line 1: cannot be parsed" in capsys.readouterr().err
    assert out.read_bytes() == content  # nothing rewritten
    assert provenance_path(out).read_bytes() == record


# ---------------------------------------------------------------------------- speakers
def _pooled(rows, labels=LABELS):
    w = np.array([float(r["speech"]) for r in rows])
    w = w / w.sum()
    age = float(np.sum(w * [float(r["age"]) for r in rows]))
    logp = np.log([[float(r[lab]) for lab in labels] for r in rows])
    z = (w[:, None] * logp).sum(0)
    probs = np.exp(z - z.max())
    return age, probs / probs.sum()


@pytest.mark.parametrize("kind", ["utt2spk", "csv"])
def test_speaker_rows(clf, corpus, tiny_checkpoint, tmp_path, kind):
    inputs = corpus["good"] + [corpus["long"], corpus["missing"]]
    if kind == "utt2spk":
        spk = tmp_path / "utt2spk"
        spk.write_text("spk1-a spk1\nspk1-b spk1\nspk2-a spk2\nspk2-long spk2\nmissing spk3\n")
    else:
        spk = tmp_path / "spk.csv"
        rel = [os.path.relpath(p, tmp_path) for p in inputs]
        spk.write_text("path,speaker\n" + "".join(
            f"{p},{s}\n" for p, s in zip(rel, ["spk1", "spk1", "spk2", "spk2", "spk3"])))
    out = tmp_path / "out.csv"
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", out, "--speakers", spk) == 1
    rows = _read(out)
    assert [r["path"] for r in rows] == inputs + ["", "", ""]  # speaker rows: no path
    assert [r["speaker"] for r in rows] == [""] * 5 + ["spk1", "spk2", "spk3"]
    by_path = {r["path"]: r for r in rows[:5]}
    by_speaker = {r["speaker"]: r for r in rows[5:]}
    # independent: file-level predictions, pooled with duration (= speech) weights
    preds = {p: clf.predict_file(p, vad=None) for p in inputs[:4]}
    for spk_id, members in (("spk1", inputs[:2]), ("spk2", inputs[2:4])):
        durs = [sf.info(p).duration for p in members]
        w = np.array(durs) / sum(durs)
        age = float(sum(wi * float(preds[p].age[0]) for wi, p in zip(w, members)))
        logp = sum(wi * torch.log_softmax(preds[p].gender_logits[0].double(), -1).numpy()
                   for wi, p in zip(w, members))
        probs = np.exp(logp) / np.exp(logp).sum()
        row = by_speaker[spk_id]
        assert float(row["duration"]) == pytest.approx(sum(durs), abs=2e-3)
        assert float(row["speech"]) == pytest.approx(sum(durs), abs=2e-3)
        assert float(row["age"]) == pytest.approx(age, abs=0.006)
        for j, lab in enumerate(LABELS):
            assert float(row[lab]) == pytest.approx(probs[j], abs=6e-5)
        assert row["gender"] == LABELS[int(np.argmax(probs))] and row["error"] == ""
        assert row["start"] == row["end"] == ""
        # the same pooling from the written (rounded) file rows agrees
        age_t, probs_t = _pooled([by_path[p] for p in members])
        assert float(row["age"]) == pytest.approx(age_t, abs=0.01)
        assert np.allclose([float(row[lab]) for lab in LABELS], probs_t, atol=2e-4)
    assert "none of its 1 file(s)" in by_speaker["spk3"]["error"]
    assert by_speaker["spk3"]["age"] == ""


def test_speakers_after_resume(corpus, tiny_checkpoint, tmp_path):
    inputs = corpus["good"]
    spk = tmp_path / "utt2spk"
    spk.write_text("spk1-a spk1\nspk1-b spk1\nspk2-a spk2\n")
    ref = tmp_path / "ref.csv"
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", ref, "--speakers", spk) == 0
    out = tmp_path / "out.csv"
    out.write_text("".join(ref.read_text().splitlines(keepends=True)[:2]))  # header + 1 file
    shutil.copy(provenance_path(ref), provenance_path(out))
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", out, "--speakers", spk,
                    "--resume") == 0
    a, b = _read(ref), _read(out)
    assert [(r["path"], r["speaker"]) for r in b] == [(r["path"], r["speaker"]) for r in a]
    for ra, rb in zip(a, b):  # spk1 pools one file read back from the table (4 decimals)
        assert float(ra["age"]) == pytest.approx(float(rb["age"]), abs=0.011)
        for lab in LABELS:
            assert float(ra[lab]) == pytest.approx(float(rb[lab]), abs=2e-4)
    # speaker rows already present are not written again
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", out, "--speakers", spk,
                    "--resume") == 0
    assert len(_read(out)) == len(b)


# ---------------------------------------------------------------------------- processes
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def test_torchrun_two_processes(corpus, tiny_checkpoint, tmp_path):
    inputs = corpus["good"] + [corpus["missing"], corpus["long"], corpus["short"]]
    single = tmp_path / "single.csv"
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", single, "--segments") == 1
    out = tmp_path / "dist.csv"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "agegender_sb", "predict", *inputs, "--source", tiny_checkpoint, "-o",
           str(out), "--segments", "--device", "cpu", "--vad", "none", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 1, proc.stderr  # two inputs fail
    assert out.read_text() == single.read_text()  # every input once, in input order
    assert provenance_path(out).read_text() == provenance_path(single).read_text()
    assert not [p.name for p in tmp_path.iterdir() if ".part" in p.name]  # parts merged
    file_paths = [r["path"] for r in _file_rows(_read(out))]
    assert file_paths == inputs
    # --resume under torchrun: an interrupted table (half a line at the end) is completed
    lines = single.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:7])  # header, 2 files, part of a row
    cmd[cmd.index("--master_port") + 1] = str(_free_port())
    proc = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert out.read_text() == single.read_text()


def test_python_m_and_console_entry(corpus, tiny_checkpoint, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "agegender_sb", "predict", corpus["good"][0], "--source",
         tiny_checkpoint, "--format", "jsonl", "--vad", "none"],
        capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)
    assert rec["path"] == corpus["good"][0] and rec["gender"] in LABELS
    (ep,) = importlib.metadata.entry_points(group="console_scripts", name="agegender")
    assert ep.value == "agegender_sb.cli:main"
    assert ep.load() is main


def test_usage_errors_exit_2(corpus, tiny_checkpoint, tmp_path, capsys):
    good = corpus["good"][0]
    src = ["--source", tiny_checkpoint]
    assert main([]) == 2
    assert main(["predict"]) == 2
    assert main(["predict", good, "--window", "0"]) == 2
    assert main(["predict", good, "--window", "2", "--hop", "3", *src]) == 2
    assert main(["predict", good, "--batch-size", "0"]) == 2
    assert main(["predict", good, "--threads", "0"]) == 2
    assert main(["predict", good, "--vad", "webrtc"]) == 2
    assert main(["predict", good, "--vad-threshold", "1.5"]) == 2
    assert main(["predict", good, "--min-speech", "-1"]) == 2
    assert main(["predict", good, *src, "--vad", "none", "--trim"]) == 2
    assert main(["predict", good, *src, "--vad", "energy", "--vad-threshold", "0.3"]) == 2
    assert main(["predict", good, "--source", str(tmp_path / "nomodel")]) == 2
    assert main(["predict", good, *src, "--speakers", str(tmp_path / "nofile")]) == 2
    assert main(["predict", good, *src, "--rttm", str(tmp_path / "nofile.rttm")]) == 2
    bad_rttm = tmp_path / "bad.rttm"
    bad_rttm.write_text("SPEAKER spk1-a 1 0.0 x <NA> <NA> A <NA> <NA>\n")
    assert main(["predict", good, *src, "--rttm", str(bad_rttm)]) == 2
    bad_list = tmp_path / "turns.csv"
    bad_list.write_text(f"path,start,end\n{good},zero,1\n")
    assert main(["predict", str(bad_list), *src]) == 2
    assert main(["bogus"]) == 2
    assert main(["--help"]) == 0
    err = capsys.readouterr().err
    assert "turns.csv, line 2: start/end must be seconds" in err
    assert "bad.rttm, line 1" in err


def test_info(tiny_card, tiny_checkpoint, capsys):
    model, config = tiny_card
    assert main(["info", tiny_checkpoint, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["labels"] == list(LABELS)
    assert info["layers"] == config["num_hidden_layers"]
    assert info["hidden_size"] == config["hidden_size"]
    assert info["sample_rate"] == 16000 and info["layout"] == "audeering"
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert main(["info", tiny_checkpoint]) == 0
    text = capsys.readouterr().out
    assert "labels: female, male, child" in text and "layers: 2" in text
    assert main(["info", "/nonexistent/model"]) == 2


def test_convert(clf, corpus, tiny_checkpoint, tmp_path, capsys):
    dst = tmp_path / "sb"
    assert main(["convert", tiny_checkpoint, str(dst)]) == 0
    assert (dst / "hyperparams.yaml").is_file()
    assert main(["info", str(dst), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["layout"] == "speechbrain"
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert _predict(corpus["good"][0], "--source", tiny_checkpoint, "-o", a) == 0
    assert _predict(corpus["good"][0], "--source", dst, "-o", b) == 0
    assert a.read_text() == b.read_text()
    assert main(["convert", str(dst), str(tmp_path / "again")]) == 2  # already SpeechBrain
    assert "nothing to convert" in capsys.readouterr().err
    # an existing, non-empty folder is refused unless --overwrite
    before = _snapshot(dst)
    assert main(["convert", tiny_checkpoint, str(dst)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _snapshot(dst) == before
    assert main(["convert", tiny_checkpoint, str(dst), "--overwrite"]) == 0
    assert _predict(corpus["good"][0], "--source", dst, "-o", b) == 0
    assert a.read_text() == b.read_text()


def test_columns_follow_model_labels():
    assert columns(("a", "b")) == ["path", "speaker", "start", "end", "duration", "speech",
                                   "age", "a", "b", "gender", "error"]
    with pytest.raises(ValueError):
        columns(("age", "male"))
    with pytest.raises(ValueError):
        columns(("speech", "male"))


def test_onnx_backend_and_export(clf, corpus, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """``--backend onnx`` gives the torch rows (tolerance: the table's decimals); ``export-onnx``
    writes audEERING's interface (raw gender logits; ``--probabilities`` adds
    ``probs_gender``), with an int8 variant."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from agegender_sb.backends.onnx_runtime import OnnxAgeGender

    out = tmp_path / "onnx.csv"
    graph = tmp_path / "graph.onnx"
    opened, real_init = [], OnnxAgeGender.__init__

    def recording_init(self, *args, **kwargs):  # the real session, its options recorded
        real_init(self, *args, **kwargs)
        opened.append(self.session_options.intra_op_num_threads)

    monkeypatch.setattr(OnnxAgeGender, "__init__", recording_init)
    before = torch.get_num_threads()
    try:
        assert _predict(*corpus["good"], corpus["long"], "--source", tiny_checkpoint, "-o",
                        out, "--backend", "onnx", "--onnx-path", graph, "--threads", "1") == 0
    finally:
        torch.set_num_threads(before)
    monkeypatch.undo()
    assert graph.is_file()
    assert opened == [1]  # --threads bounds ONNX Runtime too
    torch_out = tmp_path / "torch.csv"
    assert _predict(*corpus["good"], corpus["long"], "--source", tiny_checkpoint,
                    "-o", torch_out) == 0
    for a, b in zip(_read(out), _read(torch_out)):
        assert a["path"] == b["path"] and a["gender"] == b["gender"]
        assert float(a["age"]) == pytest.approx(float(b["age"]), abs=0.011)
        for lab in LABELS:
            assert float(a[lab]) == pytest.approx(float(b[lab]), abs=1.1e-4)

    wav = load_audio(corpus["good"][0])
    ref = clf.predict_batch(wav)
    exported = tmp_path / "model.onnx"
    assert main(["export-onnx", tiny_checkpoint, str(exported), "--int8"]) == 0
    assert f"wrote {exported}" in capsys.readouterr().out
    for path in (exported, tmp_path / "model-int8.onnx"):
        sess = OnnxAgeGender(path)
        assert sess.labels == LABELS and not sess.outputs_probabilities
        res = sess(wav.numpy())
        assert set(res) == {"hidden_states", "logits_age", "logits_gender"}
    res = OnnxAgeGender(exported)(wav.numpy())
    assert np.allclose(res["logits_gender"][0], ref.gender_logits[0].numpy(), atol=1e-4)
    # --probabilities adds probs_gender (softmax of the logits); logits_gender stays logits
    probs = tmp_path / "probs.onnx"
    assert main(["export-onnx", tiny_checkpoint, str(probs), "--probabilities"]) == 0
    sess = OnnxAgeGender(probs)
    assert sess.labels == LABELS and not sess.outputs_probabilities
    res = sess(wav.numpy())
    assert set(res) == {"hidden_states", "logits_age", "logits_gender", "probs_gender"}
    assert res["probs_gender"].sum() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(res["probs_gender"][0], ref.gender_probs[0].numpy(), atol=1e-4)
    assert np.allclose(res["logits_gender"][0], ref.gender_logits[0].numpy(), atol=1e-4)
    # a model that cannot be loaded is a usage error (2), as for predict, info and convert
    assert main(["export-onnx", str(tmp_path / "nowhere"), str(tmp_path / "x.onnx")]) == 2
    assert not (tmp_path / "x.onnx").exists()


# ---------------------------------------------------------------------------- speech detection
def test_default_vad_no_speech_is_a_result_not_a_failure(corpus, tiny_checkpoint, tmp_path):
    """With the default detector, noise and silence have no speech: "no speech detected",
    no age or gender, and exit 0 (no file failed)."""
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(16000, dtype=np.float32), 16000)
    inputs = [corpus["good"][0], str(silence)]
    out = tmp_path / "out.csv"
    assert _run(*inputs, "--source", tiny_checkpoint, "-o", out) == 0
    rows = _read(out)
    assert [r["path"] for r in rows] == inputs
    for r in rows:
        assert r["error"] == NO_SPEECH and float(r["speech"]) == 0.0
        assert all(r[c] == "" for c in ("age", *LABELS, "gender"))
        assert float(r["duration"]) == pytest.approx(sf.info(r["path"]).duration, abs=1e-3)
    # the energy detector finds no speech in digital silence either
    assert _run(silence, "--source", tiny_checkpoint, "-o", out, "--vad", "energy") == 0
    assert _read(out)[0]["error"] == NO_SPEECH
    # a missing file next to them still fails the run
    assert _run(*inputs, corpus["missing"], "--source", tiny_checkpoint, "-o", out) == 1


def test_speaker_without_speech_is_not_a_failure(corpus, tiny_checkpoint, tmp_path):
    """A speaker whose files have no speech gets a row without age or gender, and, as for its
    files, the exit status stays 0."""
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(16000, dtype=np.float32), 16000)
    spk = tmp_path / "utt2spk"
    spk.write_text("silence quiet\n")
    out = tmp_path / "out.csv"
    status = _run(silence, "--source", tiny_checkpoint, "-o", out, "--speakers", spk)
    rows = _read(out)
    assert [(r["path"], r["speaker"]) for r in rows] == [(str(silence), ""), ("", "quiet")]
    assert rows[0]["error"] == NO_SPEECH
    assert "no speech detected" in rows[1]["error"] and rows[1]["age"] == ""
    assert status == 0


def test_default_vad_on_real_speech(clf, speech_files, tiny_checkpoint, tmp_path):
    """Real speech with the default detector: files up to 30 s are analysed whole, exactly
    as the reference (the detector only says there is speech, and how much)."""
    out = tmp_path / "out.csv"
    assert _run(*speech_files, "--source", tiny_checkpoint, "-o", out) == 0
    rows = _read(out)
    assert [r["path"] for r in rows] == speech_files
    for row, path in zip(rows, speech_files):
        _check_row(row, clf.predict_batch(load_audio(path)))
        assert 0.2 < float(row["speech"]) <= float(row["duration"])
    # --trim analyses the detected speech only: the same seconds of speech, other numbers
    trimmed = tmp_path / "trim.csv"
    assert _run(*speech_files, "--source", tiny_checkpoint, "-o", trimmed, "--trim") == 0
    rows_t = _read(trimmed)
    assert [r["speech"] for r in rows_t] == [r["speech"] for r in rows]
    assert all(r["error"] == "" and r["gender"] in LABELS for r in rows_t)
    assert [r["age"] for r in rows_t] != [r["age"] for r in rows]


# ---------------------------------------------------------------------------- speaker turns
def test_segment_list_and_rttm_turns(clf, tiny_checkpoint, tmp_path):
    """Turns from a segment list or an RTTM file: one row per turn (``--segments``), one
    per speaker of the file, then the file's row; each turn analysed as its slice."""
    meet = _noise(tmp_path / "meet.wav", 6.0, seed=7)
    turns = [(0.0, 2.0, "A"), (2.0, 4.5, "B"), (4.5, 6.0, "A")]
    seglist = tmp_path / "turns.csv"
    seglist.write_text("path,start,end,speaker\n" +
                       "".join(f"meet.wav,{s},{e},{k}\n" for s, e, k in turns))
    rttm = tmp_path / "meet.rttm"
    rttm.write_text("".join(f"SPEAKER meet 1 {s} {e - s} <NA> <NA> {k} <NA> <NA>\n"
                            for s, e, k in turns))
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert _predict(seglist, "--source", tiny_checkpoint, "-o", a, "--segments") == 0
    assert _predict(meet, "--source", tiny_checkpoint, "-o", b, "--segments", "--rttm",
                    rttm) == 0
    assert a.read_text() == b.read_text()
    rows = _read(a)
    assert [(r["path"], r["speaker"], r["start"]) for r in rows] == [
        (str(meet), "A", "0.000"), (str(meet), "B", "2.000"), (str(meet), "A", "4.500"),
        (str(meet), "A", ""), (str(meet), "B", ""), (str(meet), "", "")]
    whole = load_audio(meet)
    preds = [clf.predict_batch(whole[int(s * 16000) : int(e * 16000)]) for s, e, _ in turns]
    for row, pred in zip(rows[:3], preds):
        _check_row(row, pred)

    def pooled(idx):
        w = torch.tensor([turns[i][1] - turns[i][0] for i in idx], dtype=torch.float64)
        w /= w.sum()
        logits = sum(wi * preds[i].gender_logits[0].double() for wi, i in zip(w, idx))
        age = float(sum(wi * float(preds[i].age[0]) for wi, i in zip(w, idx)))
        return age, torch.softmax(logits, -1)

    for row, idx in ((rows[3], [0, 2]), (rows[4], [1]), (rows[5], [0, 1, 2])):
        age, probs = pooled(idx)
        assert float(row["age"]) == pytest.approx(age, abs=0.006)
        for j, lab in enumerate(LABELS):
            assert float(row[lab]) == pytest.approx(float(probs[j]), abs=6e-5)
        assert float(row["speech"]) == pytest.approx(sum(turns[i][1] - turns[i][0]
                                                         for i in idx))
    assert float(rows[5]["duration"]) == pytest.approx(6.0)


# ---------------------------------------------------------------------------- safeguards
def _inputs_of_each_kind(d, audio):
    txt = d / "list.txt"
    txt.write_text(f"{audio}\n")
    lst = d / "list.csv"
    lst.write_text(f"path\n{audio}\n")
    spk = d / "utt2spk"
    spk.write_text("a spk1\n")
    rttm = d / "a.rttm"
    rttm.write_text("SPEAKER a 1 0.0 1.0 <NA> <NA> A <NA> <NA>\n")
    link = d / "link.csv"
    link.symlink_to(audio)
    return {
        "audio": ([audio], audio),
        "audio-in-folder": ([d / "sub"], d / "sub" / "b.wav"),
        "audio-by-a-link": ([audio], link),
        "audio-spelt-otherwise": ([audio], d / "sub" / ".." / "a.wav"),
        "txt-list": ([txt], txt),
        "csv-list": ([lst], lst),
        "speakers": ([audio, "--speakers", spk], spk),
        "rttm": ([audio, "--rttm", rttm], rttm),
    }


@pytest.mark.parametrize("kind", ["audio", "audio-in-folder", "audio-by-a-link",
                                  "audio-spelt-otherwise", "txt-list", "csv-list", "speakers",
                                  "rttm"])
def test_output_that_is_an_input_is_refused(tiny_checkpoint, tmp_path, capsys, kind):
    d = tmp_path / "in"
    audio = _noise(d / "a.wav", 1.0)
    _noise(d / "sub" / "b.wav", 1.0, seed=1)
    args, output = _inputs_of_each_kind(d, audio)[kind]
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert _predict(*args, "--source", tiny_checkpoint, "-o", output) == 2
    assert "is read by this run" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert after == before  # the input byte-identical, nothing written beside it


def test_second_writer_is_refused_while_the_lock_is_held(corpus, tiny_checkpoint, tmp_path,
                                                         capsys):
    from filelock import FileLock

    out = tmp_path / "out.csv"
    assert _predict(corpus["good"][0], "--source", tiny_checkpoint, "-o", out) == 0
    assert not (tmp_path / "out.csv.lock").exists()  # removed when the run ended
    lock = FileLock(str(out) + ".lock")
    with lock.acquire(timeout=0):
        before = _snapshot(tmp_path)
        capsys.readouterr()
        for extra in ([], ["--resume"]):
            assert _predict(*corpus["good"], "--source", tiny_checkpoint, "-o", out,
                            *extra) == 2
            assert "another agegender process is writing this table" in \
                capsys.readouterr().err
            assert _snapshot(tmp_path) == before
    # released: the table can be written again
    assert _predict(*corpus["good"], "--source", tiny_checkpoint, "-o", out, "--resume") == 0
    assert [r["path"] for r in _read(out)] == corpus["good"]


@pytest.mark.parametrize("change, field", [
    (["--window", "2"], "--window is 4.0 there, 2.0 here"),
    (["--hop", "2"], "--hop is 4.0 there, 2.0 here"),
    (["--max-whole", "10"], "--max-whole is 30.0 there, 10.0 here"),
    (["--vad", "energy"], "the speech detector (--vad and its options)"),
    (["--vad", "silero", "--trim"], "--trim is False there, True here"),
    (["--vad", "silero", "--speech-context", "0.25"],
     "--speech-context is 0.5 there, 0.25 here"),
    (["--precision", "bf16"], "--precision"),
    ("other-model", "the model's weights differ"),
])
def test_resume_refuses_a_table_made_by_another_analysis(corpus, tiny_card, tiny_checkpoint,
                                                         tmp_path, capsys, change, field):
    from reference import build_card_model, write_audeering_checkpoint

    out = tmp_path / "out.csv"
    assert _predict(corpus["good"][0], "--source", tiny_checkpoint, "-o", out) == 0
    before = _snapshot(tmp_path)
    if change == "other-model":
        _, config = tiny_card
        other = write_audeering_checkpoint(build_card_model(config, seed=1), config,
                                           tmp_path / "other")
        change = ["--source", other]
    else:
        change = ["--source", tiny_checkpoint, *change]
    capsys.readouterr()
    assert _predict(*corpus["good"], *change, "-o", out, "--resume") == 2
    err = capsys.readouterr().err
    assert f"{out}: made by another analysis" in err and field in err
    assert _snapshot(tmp_path) == before


def test_resume_with_the_same_model_under_another_name(corpus, tiny_checkpoint, tmp_path):
    """The same weights reached by another path (here a link to the checkpoint folder) are
    the same analysis: the table can be resumed."""
    out = tmp_path / "out.csv"
    assert _predict(corpus["good"][0], "--source", tiny_checkpoint, "-o", out) == 0
    link = tmp_path / "model-link"
    link.symlink_to(tiny_checkpoint)
    assert _predict(*corpus["good"][:2], "--source", link, "-o", out, "--resume") == 0
    assert [r["path"] for r in _read(out)] == corpus["good"][:2]


def test_resume_without_provenance_is_refused(corpus, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out.csv"
    assert _predict(corpus["good"][0], "--source", tiny_checkpoint, "-o", out) == 0
    provenance_path(out).unlink()
    before = out.read_bytes()
    capsys.readouterr()
    assert _predict(*corpus["good"], "--source", tiny_checkpoint, "-o", out, "--resume") == 2
    assert provenance_path(out).name in capsys.readouterr().err
    assert out.read_bytes() == before and not provenance_path(out).exists()
    # without --resume the table is simply written anew, with its record
    assert _predict(*corpus["good"], "--source", tiny_checkpoint, "-o", out) == 0
    assert provenance_path(out).is_file() and len(_read(out)) == 3


AWKWARD = {"cr": "cr\rname.wav", "lf": "lf\nname.wav", "comma-quote": 'a, "b".wav',
           "latin1": os.fsdecode(b"caf\xe9.wav")}


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    d = tmp_path_factory.mktemp("awkward")
    for i, name in enumerate(AWKWARD.values()):
        x = 0.1 * np.random.RandomState(i).randn(int(16000 * (0.5 + 0.1 * i)))
        try:  # soundfile takes a bytes name as it is (a str one must be valid UTF-8)
            sf.write(os.fsencode(d / name), x.astype(np.float32), 16000)
        except OSError as err:  # pragma: no cover - a file system without such names
            pytest.skip(f"cannot create awkward file names here: {err}")
    return d


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("names", [["cr", "lf", "comma-quote"], ["cr", "latin1", "lf"]],
                         ids=["line-breaks", "not-utf8"])
def test_awkward_names_round_trip_through_table_and_resume(awkward, tiny_checkpoint, tmp_path,
                                                           fmt, names):
    """Names with a carriage return, a line feed, a comma and quotes, or a byte that is not
    UTF-8 (given as Python gives it, ``os.fsdecode``) are analysed, written byte-exact, and
    recognised by ``--resume`` (nothing analysed twice)."""
    paths = [str(awkward / AWKWARD[k]) for k in names]
    out = tmp_path / f"out.{fmt}"
    status = _predict(*paths, "--source", tiny_checkpoint, "-o", out)
    rows = _read(out)
    assert [r["path"] for r in rows] == paths  # byte-exact, line breaks included
    assert [r["error"] or "" for r in rows] == [""] * len(paths)
    assert all(r["gender"] in LABELS for r in rows) and status == 0
    if "latin1" in names:  # the undecodable byte written as it was
        assert b"/caf\xe9.wav" in out.read_bytes()
    before = out.read_bytes()
    # --resume recognises every name: nothing analysed again, nothing appended
    assert _predict(*paths, "--source", tiny_checkpoint, "-o", out, "--resume") == 0
    assert out.read_bytes() == before and len(_read(out)) == len(paths)
    # an interrupted run (killed inside the last row) is completed, byte for byte
    out.write_bytes(before[: before.rindex(os.fsencode(AWKWARD[names[-1]])[:2])])
    assert _predict(*paths, "--source", tiny_checkpoint, "-o", out, "--resume") == 0
    assert out.read_bytes() == before


def test_awkward_names_in_a_folder(awkward, tiny_checkpoint, tmp_path):
    """A folder input finds every name, and its table resumes with the same names."""
    out = tmp_path / "out.csv"
    status = _predict(awkward, "--source", tiny_checkpoint, "-o", out)
    paths = sorted(str(awkward / name) for name in AWKWARD.values())
    rows = _read(out)
    assert [r["path"] for r in rows] == paths
    assert [r["error"] for r in rows] == [""] * len(paths) and status == 0
    before = out.read_bytes()
    assert _predict(awkward, "--source", tiny_checkpoint, "-o", out, "--resume") == 0
    assert out.read_bytes() == before


def test_pandas_reads_names_with_line_breaks(awkward, tiny_checkpoint, tmp_path):
    pd = pytest.importorskip("pandas")
    paths = [str(awkward / AWKWARD[k]) for k in ("cr", "lf", "comma-quote")]
    out = tmp_path / "out.csv"
    assert _predict(*paths, "--source", tiny_checkpoint, "-o", out) == 0
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == COLUMNS
    assert frame["path"].tolist() == paths  # the \r and the \n intact
    assert b'cr\rname.wav"' in out.read_bytes()  # written raw, inside quotes


def test_broken_folder_entries_get_error_rows(tiny_checkpoint, tmp_path):
    """A dangling link, a link loop and a FIFO named like audio in an input folder each get
    an error row; the run ends (the FIFO is not opened for reading)."""
    d = tmp_path / "in"
    good = _noise(d / "good.wav", 1.0)
    (d / "dangling.wav").symlink_to(d / "nowhere.wav")
    (d / "loop.wav").symlink_to(d / "loop.wav")
    (d / "ping.wav").symlink_to(d / "pong.wav")
    (d / "pong.wav").symlink_to(d / "ping.wav")
    os.mkfifo(d / "fifo.wav")
    out = tmp_path / "out.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "agegender_sb", "predict", str(d), "--source", tiny_checkpoint,
         "-o", str(out), "--vad", "none", "-q"],
        capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 1, proc.stderr
    rows = {r["path"]: r for r in _read(out)}
    names = ["dangling.wav", "fifo.wav", "good.wav", "loop.wav", "ping.wav", "pong.wav"]
    assert sorted(rows) == [str(d / n) for n in names]
    assert rows[str(good)]["error"] == "" and rows[str(good)]["gender"] in LABELS
    for name in names:
        if name != "good.wav":
            error = rows[str(d / name)]["error"]
            assert error.startswith(str(d / name)) and rows[str(d / name)]["age"] == ""
    assert "dangling" in rows[str(d / "dangling.wav")]["error"]
    assert "FIFO" in rows[str(d / "fifo.wav")]["error"]


def test_progress_lines_where_stderr_is_not_a_terminal(corpus, tiny_checkpoint, tmp_path):
    """Batch jobs and logs (stderr piped): a plain progress line, not a silent run."""
    out = tmp_path / "p.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "agegender_sb", "predict", *corpus["good"], "--source",
         tiny_checkpoint, "--vad", "none", "-o", str(out)],
        capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("agegender predict: 3/3")]
    assert lines and "h of audio" in lines[-1] and "ETA" in lines[-1]
    quiet = subprocess.run(
        [sys.executable, "-m", "agegender_sb", "predict", *corpus["good"], "--source",
         tiny_checkpoint, "--vad", "none", "-o", str(tmp_path / "q.csv"), "-q"],
        capture_output=True, text=True, env=_env(), timeout=300)
    assert quiet.returncode == 0 and "files," not in quiet.stderr


def test_threads_option_sets_torch_threads(corpus, tiny_checkpoint, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        assert _predict(corpus["good"][0], "--source", tiny_checkpoint, "--threads", "1",
                        "-o", tmp_path / "t.csv") == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert _predict(corpus["good"][0], "--source", tiny_checkpoint, "--threads", "0") == 2


def test_help_does_not_import_torch():
    """`agegender --help` answers before torch, speechbrain or transformers are imported."""
    code = ("import sys\nfrom agegender_sb.cli import main\n"
            "try:\n    main(['predict', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'speechbrain', 'transformers') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(), timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_fast_path_option(corpus, tiny_checkpoint, tmp_path):
    """--fast-path int8: close to the fp32 table, not equal to it, and recorded, so a table of
    one cannot be resumed with the other."""
    fp32, fast = tmp_path / "fp32.csv", tmp_path / "int8.csv"
    assert _predict(*corpus["good"], "--source", tiny_checkpoint, "-o", fp32) == 0
    assert _predict(*corpus["good"], "--source", tiny_checkpoint, "-o", fast,
                    "--fast-path", "int8") == 0
    a, b = _file_rows(_read(fp32)), _file_rows(_read(fast))
    ages_a = [float(r["age"]) for r in a]
    ages_b = [float(r["age"]) for r in b]
    assert max(abs(x - y) for x, y in zip(ages_a, ages_b)) < 1.0
    # the option really switched the model (the tiny model's ages agree to 2 decimals)
    import torch

    x = torch.from_numpy(0.1 * np.random.RandomState(0).randn(16000).astype(np.float32))
    plain = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    int8 = AgeGenderClassifier.from_hparams(source=tiny_checkpoint, fast_path="int8")
    gap = (plain.predict_batch(x).embedding - int8.predict_batch(x).embedding).abs().max()
    assert 0 < gap < 0.1 * plain.predict_batch(x).embedding.abs().max()
    assert int8.fingerprint == plain.fingerprint  # of the float32 weights
    record = json.loads((tmp_path / "int8.csv.agegender.json").read_text())
    assert record["fast_path"] == "int8"
    assert _predict(*corpus["good"], "--source", tiny_checkpoint, "-o", fp32, "--resume",
                    "--fast-path", "int8") == 2
    assert _predict(corpus["good"][0], "--source", tiny_checkpoint, "--fast-path", "int8",
                    "--backend", "onnx") == 2


def test_fast_path_bf16_and_auto(corpus, tiny_checkpoint, tmp_path):
    """--fast-path bf16 is close to the fp32 table; auto is recorded as the kind it ran, so
    the table resumes with that kind named."""
    from agegender_sb.backends.fast_paths import bf16_available, resolve_fast_path

    if not bf16_available():
        pytest.skip("torch built without oneDNN's bfloat16 operators")
    fp32, bf16, auto = tmp_path / "fp32.csv", tmp_path / "bf16.csv", tmp_path / "auto.csv"
    assert _predict(*corpus["good"], "--source", tiny_checkpoint, "-o", fp32) == 0
    with warnings.catch_warnings():  # a CPU without bf16 arithmetic warns; still runs
        warnings.simplefilter("ignore")
        assert _predict(*corpus["good"], "--source", tiny_checkpoint, "-o", bf16,
                        "--fast-path", "bf16") == 0
    a, b = _file_rows(_read(fp32)), _file_rows(_read(bf16))
    assert [r["path"] for r in a] == [r["path"] for r in b]
    assert max(abs(float(x["age"]) - float(y["age"])) for x, y in zip(a, b)) < 1.0
    assert json.loads((tmp_path / "bf16.csv.agegender.json").read_text())["fast_path"] == "bf16"
    assert _predict(*corpus["good"], "--source", tiny_checkpoint, "-o", auto,
                    "--fast-path", "auto") == 0
    ran = json.loads((tmp_path / "auto.csv.agegender.json").read_text())["fast_path"]
    assert ran == resolve_fast_path("auto") in ("bf16", "int8")
    assert _predict(*corpus["good"], "--source", tiny_checkpoint, "-o", auto, "--resume",
                    "--fast-path", ran) == 0
    other = "int8" if ran == "bf16" else "bf16"
    assert _predict(*corpus["good"], "--source", tiny_checkpoint, "-o", auto, "--resume",
                    "--fast-path", other) == 2
