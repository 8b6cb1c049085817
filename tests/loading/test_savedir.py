"""``savedir=`` with a local source gets the model's files, as SpeechBrain's fetch gives them
for hub sources, and the savedir is then a source that predicts the same."""

from __future__ import annotations

import pytest
import torch
from speechbrain.utils.fetching import LocalStrategy

from agegender_sb import AgeGenderClassifier, convert
from agegender_sb.testing import write_checkpoint

SIGNAL = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("src") / "tiny", "tiny", seed=1)


@pytest.mark.parametrize("strategy", [None, LocalStrategy.COPY])
def test_audeering_folder_into_savedir(tmp_path, checkpoint, strategy):
    savedir = tmp_path / "saved"
    first = AgeGenderClassifier.from_hparams(source=checkpoint, savedir=savedir,
                                             local_strategy=strategy)
    names = sorted(p.name for p in savedir.iterdir())
    assert names == ["config.json", "model.safetensors", "preprocessor_config.json"]
    weights = savedir / "model.safetensors"
    assert weights.is_symlink() == (strategy is None)  # SpeechBrain's default: a symlink
    assert weights.read_bytes() == (checkpoint / "model.safetensors").read_bytes()
    again = AgeGenderClassifier.from_hparams(source=savedir)
    assert torch.equal(first.predict_batch(SIGNAL).age, again.predict_batch(SIGNAL).age)
    assert again.fingerprint == first.fingerprint


def test_speechbrain_folder_into_savedir(tmp_path, checkpoint):
    folder = convert(checkpoint, tmp_path / "sb")
    savedir = tmp_path / "saved"
    first = AgeGenderClassifier.from_hparams(source=folder, savedir=savedir)
    assert {"hyperparams.yaml", "encoder.ckpt", "age_head.ckpt", "gender_head.ckpt"} <= {
        p.name for p in savedir.iterdir()}
    again = AgeGenderClassifier.from_hparams(source=savedir)
    assert torch.equal(first.predict_batch(SIGNAL).gender_probs,
                       again.predict_batch(SIGNAL).gender_probs)
