"""The corpus job (batch/runner.py): rows flushed as each file completes, whatever its length;
a killed run resumed to the table an uninterrupted run writes; each file analysed once; derived
rows reconciled on --resume; the output guard; turns as given; sanity limits; the lock."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from paths import REPO

from agegender_sb.cli import main

LABELS = ("female", "male", "child")


def _noise(path, seconds, seed=0, rate=16000):
    rng = np.random.RandomState(seed)
    n = int(round(seconds * rate))
    x = 0.1 * rng.randn(n) * (1 + np.sin(np.arange(n) / 3000))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), rate)
    return str(path)


def _rows(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _predict(args, source):
    return main(["predict", *map(str, args), "--source", str(source), "-q"])


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


# ------------------------------------------------------------------ flushed per file, kill
def _long_recordings(folder: Path, n: int, seconds: float) -> list[str]:
    """``n`` recordings of ``seconds`` each: real speech (speechocean762 utterances joined)
    where it is present, else noise."""
    from paths import SPEECHOCEAN

    scp = SPEECHOCEAN / "test" / "wav.scp"
    out = []
    folder.mkdir(parents=True, exist_ok=True)
    if scp.is_file():
        utts = [SPEECHOCEAN / line.split()[1] for line in scp.read_text().splitlines()]
        k = 0
        for i in range(n):
            parts, total = [], 0
            while total < seconds * 16000:
                x, _ = sf.read(str(utts[k % len(utts)]), dtype="float32")
                parts.append(x)
                total += len(x)
                k += 1
            path = folder / f"rec{i}.wav"
            sf.write(str(path), np.concatenate(parts)[: int(seconds * 16000)], 16000)
            out.append(str(path))
        return out
    return [_noise(folder / f"rec{i}.wav", seconds, seed=i) for i in range(n)]


def test_killed_run_keeps_finished_files_and_resume_equals_an_uninterrupted_run(
        tiny_checkpoint, tmp_path):
    """Recordings longer than --max-whole (windowed): each file's rows reach the table when
    it completes, so a kill -9 keeps them; --resume analyses the rest and ends with the
    table an uninterrupted run writes."""
    files = _long_recordings(tmp_path / "audio", 6, 37.0)
    full = tmp_path / "full.csv"
    assert _predict([*files, "-o", full, "--vad", "none"], tiny_checkpoint) == 0
    killed = tmp_path / "killed.csv"
    cmd = [sys.executable, "-m", "agegender_sb", "predict", *files, "-o", str(killed),
           "--source", str(tiny_checkpoint), "--vad", "none", "-q", "--threads", "1"]
    proc = subprocess.Popen(cmd, env=_env())
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:  # kill once 3 files are in
        if killed.exists() and len(_rows(killed)) >= 3:
            proc.kill()
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode != 0, "the run ended before it could be killed"
    kept = _rows(killed)
    assert 3 <= len(kept) < 6 and [r["path"] for r in kept] == files[: len(kept)]
    # the kernel released the killed run's lock; the resumed run takes it and removes it
    assert _predict([*files, "-o", killed, "--vad", "none", "--resume"], tiny_checkpoint) == 0
    assert killed.read_bytes() == full.read_bytes()
    assert not (tmp_path / "killed.csv.lock").exists()


def test_windowed_files_are_flushed_before_the_next_file_starts(clf, tiny_checkpoint,
                                                                  tmp_path):
    """Through the runner: when file k's rows are handed to the table, file k+1 has not been
    read yet (the analyzer yields each windowed file as it completes)."""
    from agegender_sb.batch.inputs import resolve_inputs
    from agegender_sb.batch.runner import BatchRunner
    from agegender_sb.batch.tables import TableWriter
    from agegender_sb.inference.analysis import Analyzer

    files = [_noise(tmp_path / f"w{i}.wav", 9.0, seed=i) for i in range(3)]
    analyzer = Analyzer(clf, max_whole=4)
    read_order = []
    real_read = analyzer._read

    def spy(path, turns):
        read_order.append(("read", str(path)))
        return real_read(path, turns)

    analyzer._read = spy

    class Writer(TableWriter):
        def write(self, record):
            if record.get("start") is None and record.get("speaker") is None:
                read_order.append(("row", record["path"]))
            super().write(record)

    BatchRunner(analyzer, resolve_inputs(files), {}).run_to_stream(
        Writer(None, LABELS, "csv", stream=io.StringIO()))
    assert read_order == [(kind, f) for f in files for kind in ("read", "row")]


# ------------------------------------------------------------------ each file once, resume
def test_a_file_named_three_ways_is_analysed_once(tiny_checkpoint, tmp_path, capsys,
                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    _noise(tmp_path / "d" / "s0.wav", 1.0, seed=0)
    _noise(tmp_path / "d" / "s1.wav", 1.0, seed=1)
    (tmp_path / "utt2spk").write_text("s0 A\ns1 A\n")
    out = tmp_path / "t.csv"
    status = _predict(["d/s0.wav", "./d/s0.wav", str(tmp_path / "d" / "s0.wav"), "d",
                       "--vad", "none", "--speakers", "utt2spk", "-o", out], tiny_checkpoint)
    assert status == 0
    rows = _rows(out)
    files = [r["path"] for r in rows if r["path"]]
    assert files == ["d/s0.wav", str(Path("d") / "s1.wav")]
    speakers = [r for r in rows if not r["path"]]
    assert len(speakers) == 1 and float(speakers[0]["duration"]) == 2.0
    assert "3 input(s) name a file already listed" in capsys.readouterr().err


def test_resume_that_adds_a_speakers_file_recomputes_the_speaker_row(tiny_checkpoint,
                                                                      tmp_path):
    a = _noise(tmp_path / "a.wav", 1.0, seed=1)
    b = _noise(tmp_path / "b.wav", 2.0, seed=2)
    spk = tmp_path / "utt2spk"
    spk.write_text("a S\nb S\n")
    fresh, resumed = tmp_path / "fresh.csv", tmp_path / "resumed.csv"
    assert _predict([a, b, "--vad", "none", "--speakers", spk, "-o", fresh],
                    tiny_checkpoint) == 0
    assert _predict([a, "--vad", "none", "--speakers", spk, "-o", resumed],
                    tiny_checkpoint) == 0
    first = [r for r in _rows(resumed) if not r["path"]]
    assert len(first) == 1 and float(first[0]["duration"]) == 1.0
    assert _predict([a, b, "--vad", "none", "--speakers", spk, "-o", resumed, "--resume"],
                    tiny_checkpoint) == 0
    assert resumed.read_bytes() == fresh.read_bytes()
    rows = _rows(resumed)
    assert [r["speaker"] for r in rows if not r["path"]] == ["S"]


def test_resume_retries_a_failed_file_and_replaces_its_rows(tiny_checkpoint, tmp_path):
    a = _noise(tmp_path / "a.wav", 1.0, seed=1)
    b = str(tmp_path / "b.wav")  # missing for now
    spk = tmp_path / "utt2spk"
    spk.write_text("a S1\nb S2\n")
    out = tmp_path / "t.csv"
    assert _predict([a, b, "--vad", "none", "--speakers", spk, "-o", out],
                    tiny_checkpoint) == 1
    before = _rows(out)
    assert before[1]["error"] and "S2" in before[-1]["error"]
    _noise(b, 1.5, seed=2)  # restored
    assert _predict([a, b, "--vad", "none", "--speakers", spk, "-o", out, "--resume"],
                    tiny_checkpoint) == 0
    rows = _rows(out)
    assert [(r["path"], r["speaker"]) for r in rows] == [(a, ""), (b, ""), ("", "S1"),
                                                         ("", "S2")]
    assert all(not r["error"] for r in rows)
    fresh = tmp_path / "fresh.csv"
    assert _predict([a, b, "--vad", "none", "--speakers", spk, "-o", fresh],
                    tiny_checkpoint) == 0
    assert out.read_bytes() == fresh.read_bytes()


def test_resume_with_nothing_left_says_so(tiny_checkpoint, tmp_path, capsys):
    a = _noise(tmp_path / "a.wav", 1.0)
    out = tmp_path / "t.csv"
    assert _predict([a, "--vad", "none", "-o", out], tiny_checkpoint) == 0
    capsys.readouterr()
    assert main(["predict", a, "--vad", "none", "-o", str(out), "--resume", "--source",
                 str(tiny_checkpoint)]) == 0
    assert "nothing left to analyse" in capsys.readouterr().err


# ------------------------------------------------------------------ the output guard
def _same_bytes_after(path, call):
    before = Path(path).read_bytes()
    status = call()
    return status, Path(path).read_bytes() == before


def test_output_onto_what_the_run_reads_is_refused(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, src)
    wav = _noise(tmp_path / "meet.wav", 1.0)
    weights = src / "model.safetensors"
    status, same = _same_bytes_after(weights, lambda: _predict([wav, "-o", weights], src))
    assert status == 2 and same
    assert "model.safetensors is read by this run" in capsys.readouterr().err
    rt = tmp_path / "rt"
    rt.mkdir()
    (rt / "meet.rttm").write_text("SPEAKER meet 1 0.0 1.0 <NA> <NA> A <NA> <NA>\n")
    status, same = _same_bytes_after(rt / "meet.rttm", lambda: _predict(
        [wav, "--rttm", rt, "-o", rt / "meet.rttm"], src))
    assert status == 2 and same
    status, same = _same_bytes_after(weights, lambda: main(
        ["export-onnx", str(src), str(weights)]))
    assert status == 2 and same
    assert _predict([wav, "-o", tmp_path], src) == 2  # a folder
    assert "is a folder" in capsys.readouterr().err


def test_output_onto_the_onnx_graph_is_refused(tiny_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    graph = tmp_path / "m.onnx"
    assert main(["export-onnx", str(tiny_checkpoint), str(graph)]) == 0
    wav = _noise(tmp_path / "a.wav", 1.0)
    status, same = _same_bytes_after(graph, lambda: _predict(
        [wav, "--backend", "onnx", "--onnx-path", graph, "-o", graph], tiny_checkpoint))
    assert status == 2 and same


# ------------------------------------------------------------------ ONNX provenance
@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    from reference import audeering_config, build_card_model, write_audeering_checkpoint

    config = audeering_config()
    return str(write_audeering_checkpoint(build_card_model(config, seed=1), config,
                                          tmp_path_factory.mktemp("other")))


def test_a_graph_of_another_model_is_refused_and_resume_checks_the_graph(
        tiny_checkpoint, other_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    ours, theirs = tmp_path / "ours.onnx", tmp_path / "theirs.onnx"
    assert main(["export-onnx", str(tiny_checkpoint), str(ours), "--int8"]) == 0
    assert main(["export-onnx", str(other_checkpoint), str(theirs)]) == 0
    wav = _noise(tmp_path / "a.wav", 1.0)
    out = tmp_path / "t.csv"
    capsys.readouterr()
    assert _predict([wav, "--backend", "onnx", "--onnx-path", theirs, "-o", out],
                    tiny_checkpoint) == 2
    assert "exported from another model" in capsys.readouterr().err and not out.exists()
    assert _predict([wav, "--backend", "onnx", "--onnx-path", theirs, "-o", out,
                     "--allow-other-onnx"], tiny_checkpoint) == 0
    out.unlink()
    assert _predict([wav, "--backend", "onnx", "--onnx-path", ours, "-o", out],
                    tiny_checkpoint) == 0
    before = out.read_bytes()
    int8 = tmp_path / "ours-int8.onnx"
    b = _noise(tmp_path / "b.wav", 1.0, seed=3)
    assert _predict([wav, b, "--backend", "onnx", "--onnx-path", int8, "-o", out, "--resume"],
                    tiny_checkpoint) == 2
    assert "the ONNX graph (--onnx-path)" in capsys.readouterr().err
    assert out.read_bytes() == before


# ------------------------------------------------------------------ turns as given
def test_turns_without_speakers_are_rows_too(tiny_checkpoint, tmp_path):
    wav = _noise(tmp_path / "meet.wav", 4.0)
    rttm = tmp_path / "meet.RTTM"  # upper-case extension, in a folder below
    folder = tmp_path / "rt"
    folder.mkdir()
    (folder / "meet.RTTM").write_text("SPEAKER meet 1 0.0 1.5 <NA> <NA> <NA> <NA> <NA>\n"
                                      "SPEAKER meet 1 2.0 1.5 <NA> <NA> <NA> <NA> <NA>\n")
    out = tmp_path / "t.csv"
    assert _predict([wav, "--rttm", folder, "--segments", "--vad", "none", "-o", out],
                    tiny_checkpoint) == 0
    rows = _rows(out)
    assert [(r["start"], r["end"]) for r in rows] == [("0.000", "1.500"), ("2.000", "3.500"),
                                                      ("", "")]
    assert not any(r["speaker"] for r in rows)
    del rttm
    seg = tmp_path / "seg.csv"  # spaces after the commas, no speaker column
    seg.write_text(f"path, start, end\n{wav}, 0.0, 1.5\n{wav}, 2.0, 3.5\n")
    out2 = tmp_path / "t2.csv"
    assert _predict([seg, "--segments", "--vad", "none", "-o", out2], tiny_checkpoint) == 0
    assert [(r["start"], r["end"]) for r in _rows(out2)] == [("0.000", "1.500"),
                                                             ("2.000", "3.500"), ("", "")]
    assert [r["age"] for r in _rows(out2)] == [r["age"] for r in rows]


def test_turn_boundaries_are_the_samples_analysed(clf, tiny_checkpoint, tmp_path):
    """A turn's row equals the model on exactly that stretch cut out of the file."""
    wav = _noise(tmp_path / "meet.wav", 4.0, seed=7)
    seg = tmp_path / "seg.csv"
    seg.write_text(f"path,start,end,speaker\n{wav},0.5,2.25,A\n")
    out = tmp_path / "t.csv"
    assert _predict([seg, "--segments", "--vad", "none", "-o", out], tiny_checkpoint) == 0
    x, _ = sf.read(wav, dtype="float32")
    ref = clf.predict_batch(torch.from_numpy(x[8000:36000]))
    turn = _rows(out)[0]
    assert (turn["start"], turn["end"]) == ("0.500", "2.250")
    assert float(turn["age"]) == pytest.approx(round(float(ref.age[0]), 2), abs=0.006)
    assert float(turn["female"]) == pytest.approx(float(ref.gender_probs[0, 0]), abs=6e-5)


def test_an_ambiguous_rttm_id_is_an_error_naming_the_files(tiny_checkpoint, tmp_path,
                                                            capsys):
    a = _noise(tmp_path / "d1" / "meet.wav", 2.0)
    b = _noise(tmp_path / "d2" / "meet.wav", 2.0, seed=1)
    rttm = tmp_path / "x.rttm"
    rttm.write_text("SPEAKER meet 1 0.0 1.0 <NA> <NA> A <NA> <NA>\n")
    assert _predict([a, b, "--rttm", rttm, "-o", tmp_path / "t.csv"], tiny_checkpoint) == 2
    err = capsys.readouterr().err
    assert "matches 2 inputs" in err and a in err and b in err


# ------------------------------------------------------------------ limits, threads, lock
def test_a_hop_that_plans_absurd_windows_is_refused(tiny_checkpoint, tmp_path, capsys):
    wav = _noise(tmp_path / "a.wav", 1.0)
    assert _predict([wav, "--hop", "0.0001"], tiny_checkpoint) == 2
    err = capsys.readouterr().err
    assert "hop" in err and "windows per second" in err and err.count("\n") == 1


def test_the_energy_detector_leaves_the_thread_count_alone(tiny_checkpoint, tmp_path):
    wav = _noise(tmp_path / "a.wav", 1.0)
    torch.set_num_threads(2)
    assert _predict([wav, "--vad", "energy", "--threads", "2"], tiny_checkpoint) == 0
    assert torch.get_num_threads() == 2


def test_no_lock_file_is_left_and_an_unusable_lock_path_is_one_line(tiny_checkpoint,
                                                                     tmp_path, capsys):
    wav = _noise(tmp_path / "a.wav", 1.0)
    out = tmp_path / "t.csv"
    assert _predict([wav, "--vad", "none", "-o", out], tiny_checkpoint) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "t.csv",
                                                          "t.csv.agegender.json"]
    (tmp_path / "u.csv.lock").mkdir()
    capsys.readouterr()
    assert _predict([wav, "--vad", "none", "-o", tmp_path / "u.csv"], tiny_checkpoint) == 2
    err = capsys.readouterr().err
    assert "lock" in err and err.count("\n") == 1


def test_numbers_have_the_documented_decimals(tiny_checkpoint, tmp_path):
    wav = _noise(tmp_path / "a.wav", 2.0)
    out = tmp_path / "t.csv"
    assert _predict([wav, "--vad", "none", "-o", out], tiny_checkpoint) == 0
    row = _rows(out)[0]
    decimals = {k: len(row[k].split(".")[1]) for k in ("duration", "speech", "age", *LABELS)}
    assert decimals == {"duration": 3, "speech": 3, "age": 2, "female": 4, "male": 4,
                        "child": 4}


# ------------------------------------------------------------------ model folders of 0.2
#: Version 0.2's flat module paths in a model folder's hyperparams.yaml (legacy), and where
#: the same classes live now.
V02_TAGS = [
    ("agegender_sb.model.normalizer.", "agegender_sb" + ".audio."),  # legacy
    ("agegender_sb.model.encoder.", "agegender_sb" + ".encoder."),  # legacy
    ("agegender_sb.model.heads.", "agegender_sb" + ".heads."),  # legacy
    ("agegender_sb.model.network.", "agegender_sb" + ".model."),  # legacy
    ("agegender_sb.loading.checkpoint.", "agegender_sb" + ".checkpoint."),  # legacy
]


def test_a_model_folder_written_by_version_02_loads_and_predicts_the_same(
        clf, tiny_checkpoint, tmp_path):
    """Folders written by 0.2 name the flat modules in hyperparams.yaml; they load (with and
    without trust_remote_code) and predict as before; converted folders name the new ones."""
    from agegender_sb import AgeGenderClassifier, convert

    folder = Path(convert(tiny_checkpoint, tmp_path / "new"))
    text = (folder / "hyperparams.yaml").read_text()
    assert "agegender_sb.model.encoder.Wav2Vec2Encoder" in text
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    legacy = text
    for now, then in V02_TAGS:  # legacy: the module paths version 0.2 wrote
        legacy = legacy.replace(now, then)
    assert "!new:agegender_sb" + ".encoder.Wav2Vec2Encoder" in legacy  # legacy
    assert "agegender_sb.model." + "encoder" not in legacy
    (old / "hyperparams.yaml").write_text(legacy)
    x = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    ref = clf.predict_batch(x)
    for trust in (False, True):
        got = AgeGenderClassifier.from_hparams(source=str(old), trust_remote_code=trust)
        out = got.predict_batch(x)
        assert torch.allclose(out.age, ref.age, atol=1e-5)
        assert torch.allclose(out.gender_logits, ref.gender_logits, atol=1e-5)
