"""The training recipe end to end on CPU with tiny models, and its pieces.

Subprocess runs (marked ``slow``) use a generated Kaldi-style corpus prepared with
``recipes/prepare.py``: train → kill with SIGKILL after an intra-epoch checkpoint → resume
(from the step of that checkpoint) → export, equal to an uninterrupted run of the same
command, with fixed and with dynamic batching; 2-process ``torchrun`` runs with gloo and
dynamic batching (generated corpus and real speech); a plain wav2vec2 init with a frozen
encoder and utterances under ``min_seconds``.
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

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml
from paths import REPO
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining, Wav2Vec2Model

from agegender_sb import AgeGenderClassifier, CheckpointError, convert
from agegender_sb.audio import load_audio
from agegender_sb.loading.checkpoint import load_state_dict_file, load_wav2vec2_encoder
from agegender_sb.loading.config import architecture_fields
from agegender_sb.loading.sources import load_weights, resolve_source
from agegender_sb.model.encoder import Wav2Vec2Encoder
from agegender_sb.report.calibration import Calibration
from agegender_sb.training.data import read_segment
from agegender_sb.training.losses import multitask_loss
from agegender_sb.training.metrics import AgeGenderStats

ROOT = REPO
sys.path.insert(0, str(ROOT / "recipes"))

from prepare import prepare  # noqa: E402
from reference import audeering_config  # noqa: E402
from train import merge_overrides  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1"}

#: No randomness left in training: a resumed run can equal an uninterrupted one exactly.
DETERMINISTIC = ["--wav2vec2", "{hidden_dropout: 0.0, attention_dropout: 0.0, "
                 "activation_dropout: 0.0, feat_proj_dropout: 0.0, layerdrop: 0.0, "
                 "apply_spec_augment: false}", "--net", "{final_dropout: 0.0}"]


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


def _rows(path):
    with open(path, encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def _train_cmd(manifests, init, out, *extra):
    return [sys.executable, str(ROOT / "recipes" / "train.py"), str(ROOT / "hparams/train.yaml"),
            "--init_from", str(init), "--train_csv", manifests["train"],
            "--valid_csv", manifests["valid"], "--test_csv", manifests["test"],
            "--output_folder", str(out), "--noprogressbar", "--seed", "3", *extra]


def _run(cmd, timeout=120):
    """Run to completion; on timeout kill the whole process group (torchrun's workers too)."""
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout} s (a DDP deadlock?):\n{output[-3000:]}")
    assert proc.returncode == 0, output[-6000:]
    return output


def _torchrun(cmd):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(port), *cmd[1:]]


def _check_export_matches(out, manifests):
    """The exported model, one file at a time, reproduces the recipe's test predictions."""
    clf = AgeGenderClassifier.from_hparams(source=str(out / "model"), savedir=str(out / "sv"))
    rows = _rows(out / "test_predictions.csv")
    wavs = {r["ID"]: r["wav"] for r in _rows(manifests["test"])}
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


def _check_results(out, manifests):
    """results.json agrees with the predictions, which the exported model reproduces."""
    results = json.loads((out / "results.json").read_text())
    rows = _check_export_matches(out, manifests)
    assert results["n_utterances"] == len(rows)
    for key, value in _metrics_from_rows(rows, results["labels"]).items():
        assert results[key] == pytest.approx(value, abs=1e-4)
    _check_calibration(out, results, rows)
    return results, rows


def _check_calibration(out, results, rows):
    """The exported calibration.json is the exported model's (loading it checks the
    fingerprint) and results.json's test coverage is the share of test ages within it."""
    path = out / "model" / "calibration.json"
    assert (results["calibration"] is not None) == path.exists()
    if not path.exists():
        return
    clf = AgeGenderClassifier.from_hparams(source=str(out / "model"), savedir=str(out / "c"))
    cal = Calibration.load(path)
    assert clf.calibration.digest() == cal.digest() and cal.fingerprint == clf.fingerprint
    for level, got in results["calibration"]["test"].items():
        q = cal.kinds["file"]["groups"]["all"]["half_width"][level]
        aged = [r for r in rows if r["true_age"]]
        cover = sum(abs(float(r["age"]) - float(r["true_age"])) <= q for r in aged) / len(aged)
        assert got["coverage"]["value"] == pytest.approx(cover, abs=1e-12)
        assert got["coverage"]["n"] == len(aged)


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


def _tiny_encoder():
    return Wav2Vec2Encoder({k: v for k, v in audeering_config().items()
                            if k in architecture_fields()})


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
    load_wav2vec2_encoder(_tiny_encoder(), bare.state_dict(), "bare")
    # anything unexpected, or a missing tensor, is an error
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        load_wav2vec2_encoder(_tiny_encoder(), {**state, "lm_head.weight": torch.zeros(1)}, "x")
    missing = {k: v for k, v in state.items() if "layers.1." not in k}
    with pytest.raises(CheckpointError, match="missing"):
        load_wav2vec2_encoder(_tiny_encoder(), missing, "x")


def _build(src, tmp_path, overrides=""):
    """train.yaml's modules for ``src`` (as recipes/train.py builds them), weights loaded."""
    required = "".join(f"{k}: x\n" for k in ("init_from", "train_csv", "valid_csv", "test_csv"))
    merged = merge_overrides(src.hparams, f"{required}output_folder: {tmp_path}\n{overrides}")
    with open(ROOT / "hparams" / "train.yaml", encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, merged, overrides_must_match=False)
    load_weights(src, hparams)
    return hparams


@pytest.mark.parametrize("kind", ["audeering", "speechbrain"])
def test_train_yaml_builds_each_init_source(tiny_checkpoint, tmp_path, kind):
    """train.yaml's model (inference.yaml, included) with the source's architecture and
    weights gives the classifier's outputs."""
    ref = AgeGenderClassifier.from_hparams(source=tiny_checkpoint, savedir=str(tmp_path / "r"))
    expected = ref.predict_batch(x := torch.randn(1, 8000))
    source = tiny_checkpoint if kind == "audeering" else convert(tiny_checkpoint, tmp_path / "sb")
    src = resolve_source(source)
    assert src.kind == kind
    hparams = _build(src, tmp_path)
    assert hparams["gender_labels"] == ["female", "male", "child"]
    assert hparams["encoder"].config.hidden_size == 32
    assert hparams["encoder"].config.num_hidden_layers == 2
    # one module graph: the checkpointer saves the very modules that train
    assert hparams["checkpointer"].recoverables["model"] is hparams["modules"]["model"]
    assert hparams["model"].encoder is hparams["encoder"]
    with torch.no_grad():
        out = hparams["model"].eval()(x)
    torch.testing.assert_close(out.age, expected.age_raw, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.gender_logits, expected.gender_logits, rtol=0, atol=1e-6)


def test_train_yaml_plain_wav2vec2_source(plain_wav2vec2, tmp_path):
    """No labels in the source: inference.yaml's default labels; encoder loaded, heads not."""
    src = resolve_source(plain_wav2vec2)
    assert src.kind == "wav2vec2" and "gender_labels" not in src.hparams
    hparams = _build(src, tmp_path)
    assert hparams["gender_labels"] == ["female", "male", "child"]
    ref = Wav2Vec2ForPreTraining.from_pretrained(plain_wav2vec2).wav2vec2.state_dict()
    for key, value in ref.items():
        torch.testing.assert_close(hparams["encoder"].model.state_dict()[key], value,
                                   rtol=0, atol=0)


def test_command_line_wins_over_init_source(tiny_checkpoint, tmp_path):
    src = resolve_source(tiny_checkpoint)
    assert src.hparams["wav2vec2"]["layerdrop"] == 0.1 and src.hparams["final_dropout"] == 0.1
    hp = _build(src, tmp_path, "wav2vec2: {layerdrop: 0.0}\nnet: {final_dropout: 0.25}\n"
                               "age_loss: !name:torch.nn.functional.l1_loss\n")
    assert hp["encoder"].config.layerdrop == 0.0  # the command line
    assert hp["encoder"].config.hidden_size == 32  # the source, not inference.yaml's 1024
    assert hp["encoder"].config.hidden_dropout == 0.1  # the rest of the mapping is kept
    assert hp["age_head"].dropout.p == 0.25 and hp["gender_head"].dropout.p == 0.25
    assert hp["compute_cost"].keywords["age_loss_fn"] is torch.nn.functional.l1_loss
    with pytest.raises(ValueError, match="final_dropotu"):
        merge_overrides(src.hparams, "net: {final_dropotu: 0.0}")


def test_read_segment_bounds_resampling_and_crops(tmp_path):
    """Segments equal the matching slice of the whole file (any rate); crops are contiguous
    slices inside the segment, and vary."""
    rng = np.random.default_rng(4)
    x16 = (0.1 * rng.standard_normal(48000)).astype(np.float32)
    sf.write(tmp_path / "a.wav", x16, 16000, subtype="FLOAT")
    seg = read_segment(str(tmp_path / "a.wav"), 1.0, 2.5)
    assert torch.equal(seg, torch.from_numpy(x16[16000:40000]))
    x8 = (0.1 * rng.standard_normal(24000)).astype(np.float32)
    sf.write(tmp_path / "b.wav", x8, 8000, subtype="FLOAT")
    whole = load_audio(tmp_path / "b.wav")
    torch.testing.assert_close(read_segment(str(tmp_path / "b.wav"), 1.0, 2.0),
                               whole[16000:32000], rtol=0, atol=1e-6)
    # a 10 ms segment is widened to one encoder frame (25 ms) inside the file
    assert read_segment(str(tmp_path / "a.wav"), 2.995, 3.0).shape == (400,)
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


# ----------------------------------------------------------------------------- end to end
def _complete_checkpoints(save):
    """``(unixtime, folder)`` of checkpoints whose completion marker is on disk."""
    out = []
    for meta in save.glob("CKPT+*/CKPT.yaml"):
        if (meta.parent / "complete.ckpt").is_file():
            out.append((yaml.safe_load(meta.read_text(encoding="utf-8"))["unixtime"],
                        meta.parent))
    return sorted(out)


def _kill_after_intra_epoch_ckpt(cmd, save, timeout=90):
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    start = time.time()
    try:
        while time.time() - start < timeout and proc.poll() is None:
            if any(INTRA_EPOCH_CKPT_FLAG in (f / "CKPT.yaml").read_text(encoding="utf-8")
                   for _, f in _complete_checkpoints(save)):
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"


def _weights(folder):
    return {f"{name}.{k}": v for name in ("encoder", "age_head", "gender_head")
            for k, v in load_state_dict_file(folder / f"{name}.ckpt").items()}


@pytest.mark.slow
@pytest.mark.parametrize("batching", [["--dynamic_batching", "false", "--batch_size", "1"],
                                      ["--dynamic_batching", "true", "--max_batch_seconds",
                                       "1.5"]], ids=["fixed", "dynamic"])
def test_train_kill_resume_export(manifests, tiny_checkpoint, tmp_path, batching):
    """SIGKILL mid-epoch, the same command again: it resumes from the step of the latest
    whole checkpoint and ends with the weights of an uninterrupted run (no randomness left
    in training: the resumed run sees the same batches)."""
    def cmd(out):
        return _train_cmd(manifests, tiny_checkpoint, out, "--number_of_epochs", "2",
                          "--ckpt_interval_minutes", "0", "--ckpt_interval_steps", "2",
                          "--freeze", "none", "--lr_encoder", "0.001", "--lr_heads", "0.01",
                          *DETERMINISTIC, *batching)

    out = tmp_path / "run"
    _kill_after_intra_epoch_ckpt(cmd(out), out / "save")
    assert not (out / "results.json").exists()
    unixtime, latest = _complete_checkpoints(out / "save")[-1]
    meta = yaml.safe_load((latest / "CKPT.yaml").read_text(encoding="utf-8"))
    step = yaml.safe_load((latest / "brain.ckpt").read_text(encoding="utf-8"))["step"]
    epoch = int((latest / "epoch_counter.ckpt").read_text(encoding="utf-8"))  # running epoch
    assert meta.get(INTRA_EPOCH_CKPT_FLAG) and step > 0

    _run(cmd(out))  # the same command again
    log = (out / "log.txt").read_text(encoding="utf-8")
    assert f"Resumed from checkpoint {latest.name} (intra-epoch, epoch {epoch}, " \
           f"step {step})" in log
    train_log = (out / "train_log.txt").read_text(encoding="utf-8").splitlines()
    epochs = [line.split(",")[0] for line in train_log if line.startswith("epoch:")]
    assert epochs == ["epoch: 1", "epoch: 2"]  # each epoch finished exactly once

    ref = tmp_path / "uninterrupted"
    _run(cmd(ref))
    resumed, uninterrupted = _weights(out / "model"), _weights(ref / "model")
    init = _weights(convert(tiny_checkpoint, tmp_path / "init"))
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():  # same float operations in the same order
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6)
    assert any(not torch.equal(init[k], v) for k, v in resumed.items())  # it did train
    results, rows = _check_results(out, manifests)
    assert (ref / "test_predictions.csv").read_text() == (out / "test_predictions.csv").read_text()
    for key in ("mae", "acc", "uar", "mae_per_band", "confusion", "recall", "dropped"):
        assert key in results
    assert (out / "confusion_matrix.png").stat().st_size > 0
    assert (out / "age_scatter.png").stat().st_size > 0
    # the model folder keeps the source's architecture and the command line's settings
    hp = (out / "model" / "hyperparams.yaml").read_text(encoding="utf-8")
    assert "hidden_size: 32" in hp and "layerdrop: 0.0" in hp and "final_dropout: 0.0" in hp


def _check_ddp_counts(out, valid_csv, test_csv):
    """Each valid and test utterance counted exactly once over the two ranks."""
    results = json.loads((out / "results.json").read_text())
    n_test, n_valid = len(_rows(test_csv)), len(_rows(valid_csv))
    assert results["n_utterances"] == n_test
    assert results["n_gender"] == sum(1 for r in _rows(test_csv) if r["gender"])
    line = (out / "train_log.txt").read_text().splitlines()[0]
    confusion = json.loads(line.split("valid confusion: ")[1])
    assert sum(map(sum, confusion)) == sum(1 for r in _rows(valid_csv) if r["gender"])
    assert n_valid > 0


@pytest.mark.slow
def test_torchrun_two_processes_gloo(manifests, tiny_checkpoint, tmp_path):
    """Dynamic batching, layerdrop on (the source's 0.1) and a checkpoint decision every
    step: the ranks take the same steps and finish."""
    out = tmp_path / "ddp"
    init = AgeGenderClassifier.from_hparams(source=tiny_checkpoint, savedir=str(tmp_path / "i"))
    conv_before = {k: v.clone() for k, v in
                   init.mods.model.encoder.model.feature_extractor.state_dict().items()}
    cmd = _train_cmd(manifests, tiny_checkpoint, out, "--number_of_epochs", "1",
                     "--distributed_backend", "gloo", "--freeze", "feature_extractor",
                     "--lr_encoder", "0.001", "--max_batch_seconds", "2.0",
                     "--eval_batch_size", "3", "--ckpt_interval_minutes", "0",
                     "--ckpt_interval_steps", "1", "--calibration_coverage", "[0.5, 0.8]")
    _run(_torchrun(cmd), timeout=150)
    _check_ddp_counts(out, manifests["valid"], manifests["test"])
    results, _ = _check_results(out, manifests)
    assert results["calibration"]["n_fitted"] > 0  # every rank's valid predictions
    enc = load_state_dict_file(out / "model" / "encoder.ckpt")
    for key, value in conv_before.items():  # feature extractor frozen
        torch.testing.assert_close(enc["model.feature_extractor." + key], value, rtol=0, atol=0)
    proj = "model.feature_projection.projection.weight"
    assert not torch.equal(enc[proj], init.mods.model.encoder.state_dict()[proj])


@pytest.mark.slow
def test_torchrun_speechocean_dynamic_batching(speechocean, tiny_checkpoint, tmp_path):
    """Real speech (speechocean762, prepared with --corpus kaldi, every 6th utterance):
    2 ranks, default dynamic batching and layerdrop, one epoch, finishes with results."""
    full = prepare("kaldi", speechocean, tmp_path / "full")
    subset = {}
    for split, step in (("train", 6), ("valid", 3), ("test", 16)):
        rows = _rows(full[split])[::step]
        subset[split] = str(tmp_path / f"{split}.csv")
        with open(subset[split], "w", newline="", encoding="utf-8") as fout:
            writer = csv.DictWriter(fout, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    out = tmp_path / "ddp"
    cmd = _train_cmd(subset, tiny_checkpoint, out, "--number_of_epochs", "1",
                     "--distributed_backend", "gloo", "--max_batch_seconds", "12.0",
                     "--eval_batch_size", "8", "--ckpt_interval_minutes", "0",
                     "--ckpt_interval_steps", "1", "--make_plots", "false")
    _run(_torchrun(cmd), timeout=180)
    _check_ddp_counts(out, subset["valid"], subset["test"])
    results = json.loads((out / "results.json").read_text())
    assert math.isfinite(results["mae"]) and results["dropped"] == {"train": 0, "valid": 0,
                                                                    "test": 0}


@pytest.mark.slow
def test_plain_init_frozen_encoder_and_short_utterances(manifests, plain_wav2vec2, tmp_path):
    out = tmp_path / "plain"
    min_seconds = 0.55
    output = _run(_train_cmd(manifests, plain_wav2vec2, out, "--number_of_epochs", "1",
                             "--freeze", "encoder", "--lr_heads", "0.01", "--make_plots",
                             "false", "--min_seconds", str(min_seconds)))
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
    # utterances under min_seconds: counted per split in results.json, named in the log
    short = {split: [r["ID"] for r in _rows(manifests[split])
                     if float(r["duration"]) < min_seconds] for split in manifests}
    assert all(short.values())  # the generated corpus has some in every split
    results, rows = _check_results(out, manifests)
    assert results["dropped"] == {split: len(ids) for split, ids in short.items()}
    kept = {r["ID"] for r in _rows(manifests["test"])} - set(short["test"])
    assert {r["ID"] for r in rows} == kept
    for split, ids in short.items():
        assert (f"{manifests[split]}: {len(ids)} utterances shorter than min_seconds=0.55 "
                f"dropped: {ids[0]}") in output
