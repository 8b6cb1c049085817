"""The training recipe end to end on CPU with tiny models, and its pieces.

Subprocess runs (marked ``slow``) use a generated Kaldi-style corpus prepared with
``recipes/prepare.py``: train → kill with SIGKILL after an intra-epoch checkpoint → resume →
export → load with ``AgeGenderClassifier.from_hparams`` → same predictions; a 2-process
``torchrun`` run with gloo; freezing and a plain wav2vec2 init.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hyperpyyaml import load_hyperpyyaml
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining, Wav2Vec2Model

from agegender_sb import AgeGenderClassifier, CheckpointError, convert_audeering_checkpoint
from agegender_sb.checkpoint import load_state_dict_file, load_wav2vec2_encoder
from agegender_sb.encoder import Wav2Vec2Encoder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

from prepare import prepare  # noqa: E402
from reference import audeering_config  # noqa: E402
from train import (  # noqa: E402
    AgeGenderStats,
    multitask_loss,
    read_segment,
    resolve_init_source,
)

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1"}

TINY = {k: v for k, v in audeering_config().items()
        if k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "num_conv_pos_embeddings", "num_conv_pos_embedding_groups")}


# ----------------------------------------------------------------------------- fixtures
def _tone(f0, seconds, rng):
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * f0 * t) + 0.05 * rng.standard_normal(t.size)).astype("f4")


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    """A Kaldi-style corpus (train 10 speakers, test 3) prepared into train/valid/test.csv."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    speakers = {"train": [(f"tr{i}", "mf"[i % 2], [9, 25, 40, 33, 8][i % 5]) for i in range(10)],
                "test": [("te0", "f", 30), ("te1", "m", 45), ("te2", "m", 10)]}
    for split, spk in speakers.items():
        d = root / split
        d.mkdir()
        scp, u2s = [], []
        for sid, sex, age in spk:
            for j in range(4):
                uid = f"{sid}_{j}"
                f0 = 300 if age < 15 else (220 if sex == "f" else 120)
                sf.write(root / f"{uid}.wav", _tone(f0, 0.4 + 0.3 * rng.random(), rng), 16000)
                scp.append(f"{uid} {uid}.wav")
                u2s.append(f"{uid} {sid}")
        (d / "wav.scp").write_text("\n".join(scp) + "\n")
        (d / "utt2spk").write_text("\n".join(u2s) + "\n")
        (d / "spk2gender").write_text("".join(f"{s} {g}\n" for s, g, _ in spk))
        # one train speaker without age: the age loss must skip their utterances
        (d / "spk2age").write_text("".join(f"{s} {a}\n" for s, _, a in spk if s != "tr3"))
    out = prepare("kaldi", root, root / "prepared", valid_fraction=0.2)
    return {k: str(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def plain_wav2vec2(tmp_path_factory):
    """A plain wav2vec2 checkpoint folder (Wav2Vec2ForPreTraining, random, no heads)."""
    torch.manual_seed(0)
    config = Wav2Vec2Config(**{k: v for k, v in audeering_config().items()
                               if k not in ("id2label", "label2id", "architectures")})
    folder = tmp_path_factory.mktemp("w2v2")
    Wav2Vec2ForPreTraining(config).save_pretrained(folder)
    return folder


def _train_cmd(manifests, init, out, *extra):
    return [sys.executable, str(ROOT / "recipes" / "train.py"), str(ROOT / "hparams/train.yaml"),
            "--init_from", str(init), "--train_csv", manifests["train"],
            "--valid_csv", manifests["valid"], "--test_csv", manifests["test"],
            "--output_folder", str(out), "--noprogressbar", "--seed", "3", *extra]


def _run(cmd, timeout=120):
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _check_export_matches(out, manifests):
    """The exported model, one file at a time, reproduces the recipe's test predictions."""
    clf = AgeGenderClassifier.from_hparams(source=str(out / "model"), savedir=str(out / "sv"))
    rows = list(csv.DictReader(open(out / "test_predictions.csv", encoding="utf-8")))
    wavs = {r["ID"]: r["wav"] for r in csv.DictReader(open(manifests["test"], encoding="utf-8"))}
    assert sorted(r["ID"] for r in rows) == sorted(wavs)
    for row in rows:
        pred = clf.predict_batch(read_segment(wavs[row["ID"]]))
        # model outputs within 1e-5 (age_raw = years/100; the recipe ran padded batches)
        assert abs(float(pred.age_raw[0]) - float(row["age_raw"])) < 1e-5
        assert abs(float(pred.age[0]) - float(row["age"])) < 1e-3
        for j, lab in enumerate(clf.labels):
            assert abs(float(pred.gender_probs[0, j]) - float(row[lab])) < 1e-5
        assert pred.gender[0] == row["gender"]
    return rows


def _metrics_from_rows(rows, labels):
    ages = [(float(r["age"]), float(r["true_age"])) for r in rows if r["true_age"]]
    pairs = [(r["true_gender"], r["gender"]) for r in rows if r["true_gender"]]
    recalls = []
    for lab in labels:
        hits = [p == t for t, p in pairs if t == lab]
        if hits:
            recalls.append(sum(hits) / len(hits))
    return {"mae": sum(abs(p - t) for p, t in ages) / len(ages),
            "acc": sum(t == p for t, p in pairs) / len(pairs),
            "uar": sum(recalls) / len(recalls)}


# ----------------------------------------------------------------------------- unit tests
def test_masked_loss_hand_computed():
    l1 = torch.nn.functional.l1_loss
    age_pred = torch.tensor([0.30, 0.50, 0.10], requires_grad=True)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
                          requires_grad=True)
    age_t = torch.tensor([0.20, float("nan"), 0.40])
    g_t = torch.tensor([0, -1, -1])
    loss, a, g = multitask_loss(age_pred, logits, age_t, g_t, l1, age_weight=2.0,
                                gender_weight=0.5)
    expected_age = (0.1 + 0.3) / 2  # utterance 1 has no age
    expected_gender = -math.log(math.exp(2) / (math.exp(2) + 2))  # only utterance 0
    assert float(a.detach()) == pytest.approx(expected_age, abs=1e-6)
    assert float(g.detach()) == pytest.approx(expected_gender, abs=1e-6)
    assert float(loss.detach()) == pytest.approx(2 * expected_age + 0.5 * expected_gender, abs=1e-6)
    loss.backward()
    assert age_pred.grad[1] == 0 and torch.all(logits.grad[1:] == 0)


def test_batch_without_labels_gives_zero_not_nan():
    age_pred = torch.tensor([0.3, 0.4], requires_grad=True)
    logits = torch.zeros(2, 3, requires_grad=True)
    loss, a, g = multitask_loss(age_pred, logits, torch.full((2,), float("nan")),
                                torch.tensor([1, 2]), torch.nn.functional.mse_loss)
    assert float(a.detach()) == 0.0 and math.isfinite(float(loss.detach()))
    loss.backward()
    assert torch.isfinite(age_pred.grad).all() and float(age_pred.grad.abs().sum()) == 0
    loss, a, g = multitask_loss(age_pred, logits, torch.tensor([0.2, 0.3]),
                                torch.tensor([-1, -1]), torch.nn.functional.mse_loss)
    assert float(g.detach()) == 0.0 and float(a.detach()) == pytest.approx((0.01 + 0.01) / 2)


def test_stats_bands_and_uar():
    s = AgeGenderStats(["female", "male", "child"], [15, 30, 45, 60])
    s.append(torch.tensor([10.0, 20.0, 50.0, 70.0]), torch.tensor([14.0, 29.0, 45.0, 61.0]),
             torch.tensor([2, 0, 1, 1]), torch.tensor([2, 0, 0, -1]), losses=(0.5, 1.0))
    r = s.summarize()
    assert r["mae_per_band"] == {"<15": 4.0, "15-29": 9.0, "30-44": r["mae_per_band"]["30-44"],
                                 "45-59": 5.0, "60+": 9.0}
    assert math.isnan(r["mae_per_band"]["30-44"])
    assert r["mae"] == pytest.approx((4 + 9 + 5 + 9) / 4)
    assert r["acc"] == pytest.approx(2 / 3)
    assert r["uar"] == pytest.approx((0.5 + 1.0) / 2)  # male absent from the truth
    assert r["confusion"] == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]


def test_epoch_loss_does_not_depend_on_batching():
    """The stats' loss over unevenly split batches equals multitask_loss on all utterances."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    age_pred, logits = torch.rand(7), torch.randn(7, 3)
    age_t = torch.tensor([0.1, float("nan"), 0.3, 0.2, float("nan"), 0.5, 0.4])
    gender_t = torch.tensor([0, 1, -1, 2, 2, -1, 1])
    full, _, _ = multitask_loss(age_pred, logits, age_t, gender_t, F.l1_loss, 2.0, 0.5)
    s = AgeGenderStats(["female", "male", "child"], [15], 2.0, 0.5)
    for part in (slice(0, 2), slice(2, 3), slice(3, 7)):
        _, a, g = multitask_loss(age_pred[part], logits[part], age_t[part], gender_t[part],
                                 F.l1_loss, 2.0, 0.5)
        s.append(age_pred[part] * 100, age_t[part] * 100, logits[part].argmax(-1),
                 gender_t[part], (a, g))
    assert s.summarize()["loss"] == pytest.approx(float(full), rel=1e-6)


def _tiny_encoder(**kw):
    return Wav2Vec2Encoder(**TINY, conv_dim=[16] * 7, **kw)


def test_plain_wav2vec2_loader(plain_wav2vec2):
    state = load_state_dict_file(plain_wav2vec2 / "model.safetensors")
    assert any(k.startswith("quantizer.") for k in state)
    enc = _tiny_encoder()
    load_wav2vec2_encoder(enc, state, "pretraining")
    ref = Wav2Vec2ForPreTraining.from_pretrained(plain_wav2vec2).wav2vec2.state_dict()
    for key, value in ref.items():
        torch.testing.assert_close(enc.model.state_dict()[key], value, rtol=0, atol=0)
    # unprefixed Wav2Vec2Model keys
    bare = Wav2Vec2Model(Wav2Vec2Config(**{k: v for k, v in audeering_config().items()
                                            if k not in ("id2label", "label2id")}))
    enc2 = _tiny_encoder()
    load_wav2vec2_encoder(enc2, bare.state_dict(), "bare")
    # anything unexpected, or a missing tensor, is an error
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        load_wav2vec2_encoder(_tiny_encoder(), {**state, "lm_head.weight": torch.zeros(1)}, "x")
    missing = {k: v for k, v in state.items() if "layers.1." not in k}
    with pytest.raises(CheckpointError, match="missing"):
        load_wav2vec2_encoder(_tiny_encoder(), missing, "x")


def _build(init, tmp_path):
    overrides = {**init.hparams, "init_from": "x", "train_csv": "x", "valid_csv": "x",
                 "test_csv": "x", "output_folder": str(tmp_path)}
    with open(ROOT / "hparams" / "train.yaml", encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    init.load_weights(hparams)
    return hparams


def test_init_sources_detected_and_loaded(tiny_checkpoint, plain_wav2vec2, tmp_path):
    ref = AgeGenderClassifier.from_hparams(source=tiny_checkpoint, savedir=str(tmp_path / "r"))
    folder = convert_audeering_checkpoint(tiny_checkpoint, tmp_path / "sb")
    x = torch.randn(1, 8000)
    expected = ref.predict_batch(x)
    for source, kind in ((tiny_checkpoint, "audeering"), (folder, "speechbrain")):
        init = resolve_init_source(str(source), str(tmp_path / "s"))
        assert init.kind == kind
        assert init.hparams["gender_labels"] == ["female", "male", "child"]
        assert init.hparams["hidden_size"] == 32 and init.hparams["num_hidden_layers"] == 2
        model = _build(init, tmp_path)["model"].eval()
        with torch.no_grad():
            out = model(x)
        torch.testing.assert_close(out.age, expected.age_raw, rtol=0, atol=1e-6)
        torch.testing.assert_close(out.gender_logits, expected.gender_logits, rtol=0, atol=1e-6)
    init = resolve_init_source(str(plain_wav2vec2), str(tmp_path / "s"))
    assert init.kind == "wav2vec2" and "gender_labels" not in init.hparams
    assert _build(init, tmp_path)["gender_labels"] == ["female", "male", "child"]


# ----------------------------------------------------------------------------- end to end
def _wait_for_intra_epoch_ckpt(proc, save, timeout=90):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            return None
        for meta in save.glob("CKPT+*/CKPT.yaml"):
            # kill once a whole intra-epoch checkpoint is on disk (its marker is saved last)
            if ("intra_epoch" in meta.read_text(encoding="utf-8")
                    and (meta.parent / "complete.ckpt").is_file()):
                return meta.parent
        time.sleep(0.02)
    return None


@pytest.mark.slow
def test_train_kill_resume_export(manifests, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    cmd = _train_cmd(manifests, tiny_checkpoint, out, "--number_of_epochs", "2",
                     "--dynamic_batching", "false", "--batch_size", "1",
                     "--ckpt_interval_minutes", "0", "--ckpt_interval_steps", "2",
                     "--freeze", "none", "--lr_encoder", "0.001", "--lr_heads", "0.01")
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        ckpt = _wait_for_intra_epoch_ckpt(proc, out / "save")
        assert ckpt is not None, "no intra-epoch checkpoint appeared"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()
    log_before = (out / "train_log.txt").read_text() if (out / "train_log.txt").exists() else ""
    assert "epoch: 2" not in log_before

    _run(cmd)  # the same command again
    log = (out / "log.txt").read_text(encoding="utf-8")
    assert "Resumed from checkpoint" in log and "intra-epoch" in log
    train_log = (out / "train_log.txt").read_text(encoding="utf-8").splitlines()
    epochs = [line.split(",")[0] for line in train_log if line.startswith("epoch:")]
    assert epochs == ["epoch: 1", "epoch: 2"]  # each epoch finished exactly once
    results = json.loads((out / "results.json").read_text())
    for key in ("mae", "acc", "uar", "mae_per_band", "confusion", "recall"):
        assert key in results
    assert (out / "confusion_matrix.png").stat().st_size > 0
    assert (out / "age_scatter.png").stat().st_size > 0
    rows = _check_export_matches(out, manifests)
    expect = _metrics_from_rows(rows, results["labels"])
    for key, value in expect.items():
        assert results[key] == pytest.approx(value, abs=1e-4)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_gloo(manifests, tiny_checkpoint, tmp_path):
    out = tmp_path / "ddp"
    init = AgeGenderClassifier.from_hparams(source=tiny_checkpoint, savedir=str(tmp_path / "i"))
    conv_before = {k: v.clone() for k, v in
                   init.mods.model.encoder.model.feature_extractor.state_dict().items()}
    cmd = _train_cmd(manifests, tiny_checkpoint, out, "--number_of_epochs", "1",
                     "--distributed_backend", "gloo", "--layerdrop", "0.0",
                     "--freeze", "feature_extractor", "--lr_encoder", "0.001",
                     "--max_batch_seconds", "2.0", "--eval_batch_size", "3")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), *cmd[1:]]
    _run(cmd, timeout=150)
    results = json.loads((out / "results.json").read_text())
    n_test = sum(1 for _ in open(manifests["test"], encoding="utf-8")) - 1
    assert results["n_utterances"] == n_test
    assert results["n_gender"] == n_test  # summed over both ranks, each utterance once
    rows = _check_export_matches(out, manifests)
    expect = _metrics_from_rows(rows, results["labels"])
    for key, value in expect.items():
        assert results[key] == pytest.approx(value, abs=1e-4)
    n_valid = sum(1 for _ in open(manifests["valid"], encoding="utf-8")) - 1
    line = (out / "train_log.txt").read_text().splitlines()[0]
    confusion = json.loads(line.split("valid confusion: ")[1])
    assert sum(map(sum, confusion)) == n_valid
    enc = load_state_dict_file(out / "model" / "encoder.ckpt")
    for key, value in conv_before.items():  # feature extractor frozen
        torch.testing.assert_close(enc["model.feature_extractor." + key], value, rtol=0, atol=0)
    proj = "model.feature_projection.projection.weight"
    assert not torch.equal(enc[proj], init.mods.model.encoder.state_dict()[proj])


@pytest.mark.slow
def test_plain_init_frozen_encoder(manifests, plain_wav2vec2, tmp_path):
    out = tmp_path / "plain"
    _run(_train_cmd(manifests, plain_wav2vec2, out, "--number_of_epochs", "1",
                    "--freeze", "encoder", "--lr_heads", "0.01", "--make_plots", "false"))
    enc = load_state_dict_file(out / "model" / "encoder.ckpt")
    ref = Wav2Vec2ForPreTraining.from_pretrained(plain_wav2vec2).wav2vec2.state_dict()
    ours = _tiny_encoder()
    ours.load_state_dict(enc)
    for key, value in ref.items():  # every encoder tensor unchanged from the init source
        torch.testing.assert_close(ours.model.state_dict()[key], value, rtol=0, atol=0)
    clf = AgeGenderClassifier.from_hparams(source=str(out / "model"), savedir=str(out / "sv"))
    assert clf.labels == ("female", "male", "child")
    assert "heads start from random" in (out / "log.txt").read_text()
    assert not (out / "confusion_matrix.png").exists()
    _check_export_matches(out, manifests)


def test_read_segment_bounds_resampling_and_crops(tmp_path):
    """Segments equal the matching slice of the file; 8 kHz input is resampled like
    ``agegender_sb.audio``; crops are contiguous slices inside the segment, and vary."""
    import torchaudio

    rng = np.random.default_rng(4)
    x16 = (0.1 * rng.standard_normal(48000)).astype(np.float32)
    sf.write(tmp_path / "a.wav", x16, 16000, subtype="FLOAT")
    seg = read_segment(str(tmp_path / "a.wav"), 1.0, 2.5)
    assert torch.equal(seg, torch.from_numpy(x16[16000:40000]))
    x8 = (0.1 * rng.standard_normal(24000)).astype(np.float32)
    sf.write(tmp_path / "b.wav", x8, 8000, subtype="FLOAT")
    expected = torchaudio.functional.resample(torch.from_numpy(x8[8000:16000]), 8000, 16000)
    assert torch.allclose(read_segment(str(tmp_path / "b.wav"), 1.0, 2.0), expected, atol=1e-6)
    starts = set()
    for seed in range(6):
        crop = read_segment(str(tmp_path / "a.wav"), 1.0, 2.5, crop_seconds=0.5,
                            generator=torch.Generator().manual_seed(seed))
        assert crop.shape == (8000,)
        hits = [s for s in range(16000, 40000 - 8000 + 1)
                if torch.equal(crop, torch.from_numpy(x16[s : s + 8000]))]
        assert len(hits) == 1
        starts.add(hits[0])
    assert len(starts) > 1
