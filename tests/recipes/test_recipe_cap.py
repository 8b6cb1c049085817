"""recipes/train.py's max_utterances: the first N utterances of each split, in manifest order
(after min_seconds), for quick runs; null keeps all; nonsense refused."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
import soundfile as sf
from paths import REPO

ROOT = REPO
sys.path.insert(0, str(ROOT / "recipes"))

from train import dataio_prepare  # noqa: E402


@pytest.fixture
def hparams(tmp_path):
    rng = np.random.default_rng(0)
    out = {"gender_labels": ["female", "male", "child"], "min_seconds": 0.1,
           "max_train_seconds": 8.0}
    for split in ("train", "valid", "test"):
        path = tmp_path / f"{split}.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["ID", "wav", "start", "stop", "duration", "age", "gender",
                             "speaker"])
            for i in range(6):
                seconds = [0.5, 0.05, 0.3, 0.4, 0.2, 0.6][i]  # the second is too short
                wav = tmp_path / f"{split}{i}.wav"
                sf.write(str(wav), 0.1 * rng.standard_normal(int(16000 * seconds)), 16000)
                writer.writerow([f"{split}{i}", wav, "", "", seconds, 30, "female", "s"])
        out[f"{split}_csv"] = str(path)
    return out


def _ids(dataset):
    return [item["id"] for item in dataset]


def test_max_utterances_keeps_the_first_n(hparams):
    datasets, dropped = dataio_prepare({**hparams, "max_utterances": None})
    assert _ids(datasets["train"]) == ["train0", "train2", "train3", "train4", "train5"]
    assert dropped == {"train": 1, "valid": 1, "test": 1}
    datasets, _ = dataio_prepare({**hparams, "max_utterances": 3})
    assert _ids(datasets["train"]) == ["train0", "train2", "train3"]
    # valid/test: the same first three, then sorted by duration for evaluation
    assert _ids(datasets["test"]) == ["test2", "test3", "test0"]


@pytest.mark.parametrize("cap", [0, -2, 2.5, "ten", True])
def test_max_utterances_must_be_a_count(hparams, cap):
    with pytest.raises(ValueError, match="max_utterances must be a whole number"):
        dataio_prepare({**hparams, "max_utterances": cap})


def test_train_yaml_declares_it():
    text = (ROOT / "hparams" / "train.yaml").read_text()
    assert "\nmax_utterances: null" in text
