"""The ``agegender`` command: predict (files, folders, lists, errors, long files, resume,
speakers, torchrun), convert, info, exit codes."""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from agegender_sb import AgeGenderClassifier, load_audio
from agegender_sb.cli import main
from agegender_sb.tables import columns

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("female", "male", "child")
COLUMNS = ["path", "start", "end", "duration", "age", *LABELS, "gender", "error"]


@pytest.fixture(scope="module")
def clf(tiny_checkpoint):
    return AgeGenderClassifier.from_hparams(source=tiny_checkpoint)


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


def _read(path):
    text = Path(path).read_text()
    if str(path).endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines()]
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == COLUMNS
    return list(reader)


def _file_rows(rows):
    return [r for r in rows if r["start"] in ("", None)]


def _predict(*args):
    return main(["predict", *map(str, args), "-q"])


def _check_row(row, pred, i=0):
    """A written row against an independent prediction (rounded to the table's decimals)."""
    assert float(row["age"]) == pytest.approx(float(pred.age[i]), abs=0.006)
    for j, lab in enumerate(LABELS):
        assert float(row[lab]) == pytest.approx(float(pred.gender_probs[i, j]), abs=6e-5)
    assert row["gender"] == pred.gender[i]
    assert row["error"] in ("", None)


def test_mixed_good_and_bad_files(clf, corpus, tiny_checkpoint, tmp_path):
    out = tmp_path / "out.csv"
    inputs = corpus["good"] + [corpus["short"], corpus["notaudio"], corpus["missing"]]
    status = _predict(*inputs, "--source", tiny_checkpoint, "--output", out)
    assert status == 1
    rows = _read(out)
    assert [r["path"] for r in rows] == inputs
    for row, path in zip(rows, corpus["good"]):
        _check_row(row, clf.predict_batch(load_audio(path)))
        assert row["start"] == row["end"] == ""
        assert float(row["duration"]) == pytest.approx(sf.info(path).duration, abs=1e-3)
    errors = {r["path"]: r["error"] for r in rows[3:]}
    assert "too short" in errors[corpus["short"]] and corpus["short"] in errors[corpus["short"]]
    assert "not a readable audio file" in errors[corpus["notaudio"]]
    assert "no such file" in errors[corpus["missing"]]
    assert all(r["age"] == "" and r["gender"] == "" for r in rows[3:])
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
    assert recs[0]["start"] is None and recs[0]["error"] is None
    assert isinstance(recs[0]["age"], float) and recs[1]["age"] is None
    for col in ("age", *LABELS, "duration"):
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
    lst = d / "list.txt"
    lst.write_text("# inputs\nspk1/spk1-a.wav\n\n" + corpus["good"][2] + "\nspk1/spk1-a.wav\n")
    # .csv list with a path column
    man = d / "manifest.csv"
    man.write_text("id,path,speaker\nx,spk1/spk1-b.flac,spk1\ny,missing.wav,spk9\n")
    out = tmp_path / "lists.csv"
    assert _predict(lst, man, "--source", tiny_checkpoint, "-o", out) == 1
    paths = [r["path"] for r in _read(out)]
    assert paths == [str(d / "spk1/spk1-a.wav"), corpus["good"][2], str(d / "spk1/spk1-b.flac"),
                     str(d / "missing.wav")]
    bad = d / "nopath.csv"
    bad.write_text("file,speaker\na.wav,s\n")
    assert _predict(bad, "--source", tiny_checkpoint, "-o", tmp_path / "b.csv") == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _predict(empty, "--source", tiny_checkpoint, "-o", tmp_path / "b.csv") == 2


def test_long_file_segments_and_aggregation(clf, corpus, tiny_checkpoint, tmp_path):
    out = tmp_path / "seg.csv"
    assert _predict(corpus["good"][0], corpus["long"], "--source", tiny_checkpoint, "-o", out,
                    "--segments") == 0
    rows = _read(out)
    # short file: one segment (the whole file) then its file row
    assert [r["path"] for r in rows[:2]] == [corpus["good"][0]] * 2
    assert (rows[0]["start"], rows[0]["end"]) == ("0.0", "1.0") and rows[1]["start"] == ""
    # long file: 33 s → 4 s windows, tail of 1 s merged into the last one
    seg, file_row = rows[2:-1], rows[-1]
    bounds = [(4.0 * k, 4.0 * k + 4) for k in range(7)] + [(28.0, 33.0)]
    assert [(float(r["start"]), float(r["end"])) for r in seg] == bounds
    assert file_row["path"] == corpus["long"] and file_row["start"] == ""
    whole = load_audio(corpus["long"])
    preds = [clf.predict_batch(whole[int(s * 16000) : int(e * 16000)]) for s, e in bounds]
    for r, p in zip(seg, preds):
        _check_row(r, p)
        assert float(r["duration"]) == pytest.approx(float(r["end"]) - float(r["start"]))
    w = torch.tensor([e - s for s, e in bounds], dtype=torch.float64)
    w /= w.sum()
    age = float(sum(wi * float(p.age[0]) for wi, p in zip(w, preds)))
    logits = sum(wi * p.gender_logits[0].double() for wi, p in zip(w, preds))
    probs = torch.softmax(logits, -1)
    assert float(file_row["age"]) == pytest.approx(age, abs=0.006)
    for j, lab in enumerate(LABELS):
        assert float(file_row[lab]) == pytest.approx(float(probs[j]), abs=6e-5)
    assert file_row["gender"] == LABELS[int(probs.argmax())]
    assert float(file_row["duration"]) == pytest.approx(33.0)
    # --max-whole / --window / --hop reach the analysis
    out2 = tmp_path / "seg2.csv"
    assert _predict(corpus["good"][1], "--source", tiny_checkpoint, "-o", out2, "--segments",
                    "--max-whole", "0", "--window", "1", "--hop", "0.5") == 0
    starts = [r["start"] for r in _read(out2)[:-1]]
    assert starts == ["0.0", "0.5", "1.0"]  # 2.5 s: 0-1, 0.5-1.5, 1.0-2.5 (tail merged)


def test_batch_size_does_not_change_results(corpus, tiny_checkpoint, tmp_path):
    inputs = corpus["good"] + [corpus["long"], corpus["missing"]]
    one, three = tmp_path / "b1.jsonl", tmp_path / "b3.jsonl"
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", one, "--segments") == 1
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", three, "--segments",
                    "--batch-size", "3", "--device", "cpu") == 1
    a, b = _read(one), _read(three)
    assert [(r["path"], r["start"]) for r in a] == [(r["path"], r["start"]) for r in b]
    for ra, rb in zip(a, b):
        for col in ("age", *LABELS):
            if ra[col] is not None:
                assert ra[col] == pytest.approx(rb[col], abs=1.01e-4)


def test_resume_after_interrupted_run(corpus, tiny_checkpoint, tmp_path):
    inputs = corpus["good"] + [corpus["long"]]
    ref = tmp_path / "ref.csv"
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", ref, "--segments") == 0
    ref_lines = ref.read_text().splitlines(keepends=True)
    # simulate a kill: rows of the first two files, then part of the third file's group
    # (its segment row) and a half-written line
    first_two = 1 + 2 * 2  # header + (segment + file row) per file
    partial = "".join(ref_lines[:first_two]) + ref_lines[first_two] + ref_lines[first_two + 1][:9]
    out = tmp_path / "out.csv"
    out.write_text(partial)
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", out, "--segments",
                    "--resume") == 0
    text = out.read_text()
    assert text.startswith("".join(ref_lines[:first_two]))  # earlier rows kept as they were
    assert text == "".join(ref_lines)  # nothing lost, nothing duplicated
    # resuming a complete table does nothing
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", out, "--resume") == 0
    assert out.read_text() == text


def test_resume_retries_failed_files_and_checks_columns(corpus, tiny_checkpoint, tmp_path):
    late = tmp_path / "late.wav"
    out = tmp_path / "out.jsonl"
    assert _predict(corpus["good"][0], late, "--source", tiny_checkpoint, "-o", out) == 1
    before = out.read_text()
    _noise(late, 1.2, seed=9)
    assert _predict(corpus["good"][0], late, "--source", tiny_checkpoint, "-o", out,
                    "--resume") == 0
    after = out.read_text()
    assert after.startswith(before)
    rows = _read(out)
    assert [r["path"] for r in rows] == [corpus["good"][0], str(late), str(late)]
    assert rows[1]["error"] and rows[2]["error"] is None  # the last row for a path wins
    # a table with other columns cannot be resumed; --resume needs --output
    other = tmp_path / "other.csv"
    other.write_text("path,age\nx.wav,3\n")
    assert _predict(late, "--source", tiny_checkpoint, "-o", other, "--resume") == 2
    assert other.read_text() == "path,age\nx.wav,3\n"
    assert _predict(late, "--source", tiny_checkpoint, "--resume") == 2


def _pooled(rows, labels=LABELS):
    w = np.array([float(r["duration"]) for r in rows])
    w = w / w.sum()
    age = float(np.sum(w * [float(r["age"]) for r in rows]))
    logp = np.log([[float(r[lab]) for lab in labels] for r in rows])
    z = (w[:, None] * logp).sum(0)
    probs = np.exp(z - z.max())
    return age, probs / probs.sum()


@pytest.mark.parametrize("kind", ["utt2spk", "csv"])
def test_speaker_rows(clf, corpus, tiny_checkpoint, tmp_path, kind):
    d = corpus["dir"]
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
    assert [r["path"] for r in rows] == inputs + ["spk1", "spk2", "spk3"]
    by_path = {r["path"]: r for r in rows}
    # independent: file-level predictions, pooled with duration weights
    preds = {p: clf.predict_file(p) for p in inputs[:4]}
    for spk_id, members in (("spk1", inputs[:2]), ("spk2", inputs[2:4])):
        durs = [sf.info(p).duration for p in members]
        w = np.array(durs) / sum(durs)
        age = float(sum(wi * float(preds[p].age[0]) for wi, p in zip(w, members)))
        logp = sum(wi * torch.log_softmax(preds[p].gender_logits[0].double(), -1).numpy()
                   for wi, p in zip(w, members))
        probs = np.exp(logp) / np.exp(logp).sum()
        row = by_path[spk_id]
        assert float(row["duration"]) == pytest.approx(sum(durs), abs=2e-3)
        assert float(row["age"]) == pytest.approx(age, abs=0.006)
        for j, lab in enumerate(LABELS):
            assert float(row[lab]) == pytest.approx(probs[j], abs=6e-5)
        assert row["gender"] == LABELS[int(np.argmax(probs))] and row["error"] == ""
        assert row["start"] == ""
        # the same pooling from the written (rounded) file rows agrees
        age_t, probs_t = _pooled([by_path[p] for p in members])
        assert float(row["age"]) == pytest.approx(age_t, abs=0.01)
    assert "none of its 1 file(s)" in by_path["spk3"]["error"]
    del d


def test_speakers_after_resume(corpus, tiny_checkpoint, tmp_path):
    inputs = corpus["good"]
    spk = tmp_path / "utt2spk"
    spk.write_text("spk1-a spk1\nspk1-b spk1\nspk2-a spk2\n")
    ref = tmp_path / "ref.csv"
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", ref, "--speakers", spk) == 0
    out = tmp_path / "out.csv"
    out.write_text("".join(ref.read_text().splitlines(keepends=True)[:2]))  # header + 1 file
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", out, "--speakers", spk,
                    "--resume") == 0
    a, b = _read(ref), _read(out)
    assert [r["path"] for r in b] == [r["path"] for r in a]
    for ra, rb in zip(a, b):  # spk1 pools one file read back from the table (4 decimals)
        assert float(ra["age"]) == pytest.approx(float(rb["age"]), abs=0.011)
        for lab in LABELS:
            assert float(ra[lab]) == pytest.approx(float(rb[lab]), abs=2e-4)
    # speaker rows already present are not written again
    assert _predict(*inputs, "--source", tiny_checkpoint, "-o", out, "--speakers", spk,
                    "--resume") == 0
    assert len(_read(out)) == len(b)


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
           str(out), "--segments", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode != 0  # two inputs fail
    assert out.read_text() == single.read_text()  # every input once, in input order
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist.csv", "single.csv"]
    file_paths = [r["path"] for r in _file_rows(_read(out))]
    assert file_paths == inputs
    # --resume under torchrun: an interrupted table (half a line at the end) is completed
    lines = single.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:5]) + lines[5][:7])  # header, 2 files, part of a row
    cmd[cmd.index("--master_port") + 1] = str(_free_port())
    proc = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert proc.returncode != 0
    assert out.read_text() == single.read_text()


def test_python_m_and_console_entry(corpus, tiny_checkpoint, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "agegender_sb", "predict", corpus["good"][0], "--source",
         tiny_checkpoint, "--format", "jsonl"],
        capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)
    assert rec["path"] == corpus["good"][0] and rec["gender"] in LABELS
    (ep,) = importlib.metadata.entry_points(group="console_scripts", name="agegender")
    assert ep.value == "agegender_sb.cli:main"
    assert ep.load() is main


def test_usage_errors_exit_2(corpus, tiny_checkpoint, tmp_path, capsys):
    assert main([]) == 2
    assert main(["predict"]) == 2
    assert main(["predict", corpus["good"][0], "--window", "0"]) == 2
    assert main(["predict", corpus["good"][0], "--window", "2", "--hop", "3",
                 "--source", tiny_checkpoint]) == 2
    assert main(["predict", corpus["good"][0], "--batch-size", "0"]) == 2
    assert main(["predict", corpus["good"][0], "--source", str(tmp_path / "nomodel")]) == 2
    assert main(["predict", corpus["good"][0], "--source", tiny_checkpoint,
                 "--speakers", str(tmp_path / "nofile")]) == 2
    assert main(["bogus"]) == 2
    assert main(["--help"]) == 0
    capsys.readouterr()


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
    assert main(["info", "/nonexistent/model"]) == 1


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
    assert main(["convert", str(dst), str(tmp_path / "again")]) == 1  # already SpeechBrain
    assert "nothing to convert" in capsys.readouterr().err


def test_columns_follow_model_labels():
    assert columns(("a", "b")) == ["path", "start", "end", "duration", "age", "a", "b",
                                   "gender", "error"]
    with pytest.raises(ValueError):
        columns(("age", "male"))


def test_onnx_backend_and_export(clf, corpus, tiny_checkpoint, tmp_path, capsys):
    """``--backend onnx`` gives the torch rows (tolerance: the table's decimals); ``export-onnx``
    writes audEERING's interface, with an int8 variant."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from agegender_sb.onnx_export import OnnxAgeGender

    out = tmp_path / "onnx.csv"
    graph = tmp_path / "graph.onnx"
    assert _predict(*corpus["good"], corpus["long"], "--source", tiny_checkpoint, "-o", out,
                    "--backend", "onnx", "--onnx-path", graph) == 0
    assert graph.is_file()
    torch_out = tmp_path / "torch.csv"
    assert _predict(*corpus["good"], corpus["long"], "--source", tiny_checkpoint,
                    "-o", torch_out) == 0
    for a, b in zip(_read(out), _read(torch_out)):
        assert a["path"] == b["path"] and a["gender"] == b["gender"]
        assert float(a["age"]) == pytest.approx(float(b["age"]), abs=0.011)
        for lab in LABELS:
            assert float(a[lab]) == pytest.approx(float(b[lab]), abs=1.1e-4)

    exported = tmp_path / "model.onnx"
    assert main(["export-onnx", tiny_checkpoint, str(exported), "--int8"]) == 0
    assert f"wrote {exported}" in capsys.readouterr().out
    for path in (exported, tmp_path / "model-int8.onnx"):
        sess = OnnxAgeGender(path)
        assert sess.labels == LABELS and sess.outputs_probabilities
        res = sess(load_audio(corpus["good"][0]).numpy())
        assert set(res) == {"hidden_states", "logits_age", "logits_gender"}
        assert res["logits_gender"].sum() == pytest.approx(1.0, abs=1e-5)
    ref = clf.predict_batch(load_audio(corpus["good"][0]))
    res = OnnxAgeGender(exported)(load_audio(corpus["good"][0]).numpy())
    assert np.allclose(res["logits_gender"][0], ref.gender_probs[0].numpy(), atol=1e-4)
    assert main(["export-onnx", str(tmp_path / "nowhere"), str(tmp_path / "x.onnx")]) == 1
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("content", [b"5\n", b"null\n", b'{"path": [1]}\n', b"\xff\xfe\n"])
def test_resume_refuses_a_damaged_table(corpus, tiny_checkpoint, tmp_path, capsys, content):
    out = tmp_path / "out.jsonl"
    out.write_bytes(content)
    status = _predict(corpus["good"][0], "--source", tiny_checkpoint, "-o", out, "--resume")
    assert status == 2
    assert f"{out}, line 1: cannot be parsed" in capsys.readouterr().err
    assert out.read_bytes() == content  # nothing rewritten
