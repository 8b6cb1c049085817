"""The loader refuses tensors that would poison every output or be cast silently: NaN, Inf
and integer weights, in a checkpoint otherwise in audEERING's exact layout (written by
agegender_sb.testing.write_checkpoint), from the API and from the command line (one line,
exit 2). A corrupt model.safetensors is one line from ``agegender info`` too."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from agegender_sb import AgeGenderClassifier, CheckpointError
from agegender_sb.cli import main
from agegender_sb.testing import write_checkpoint

KEY = "wav2vec2.encoder.layers.1.feed_forward.output_dense.weight"
LAYER = "layers.1.feed_forward.output_dense.weight"  # the message names our module's key


def _poisoned(folder, change):
    write_checkpoint(folder, "tiny")
    path = folder / "model.safetensors"
    state = load_file(str(path))
    state[KEY] = change(state[KEY].clone())
    save_file(state, str(path), metadata={"format": "pt"})
    return folder


def _nan(t):
    t[0, 0] = float("nan")
    return t


def _inf(t):
    t[3, 2] = float("inf")
    t[4, 1] = -float("inf")
    return t


def _integer(t):
    return (t * 100).round().to(torch.int64)


CASES = {
    "nan": (_nan, "holds 1 NaN or infinite value"),
    "inf": (_inf, "holds 2 NaN or infinite value"),
    "integer": (_integer, "holds torch.int64 values where the model has torch.float32"),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_values_are_refused_naming_the_tensor(tmp_path, kind):
    change, message = CASES[kind]
    folder = _poisoned(tmp_path / kind, change)
    with pytest.raises(CheckpointError, match=rf"model\.safetensors .*\.{LAYER} {message}"):
        AgeGenderClassifier.from_hparams(source=str(folder))


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_values_are_one_line_from_the_command(tmp_path, kind, capsys):
    change, message = CASES[kind]
    folder = _poisoned(tmp_path / kind, change)
    wav = tmp_path / "x.wav"
    import numpy as np
    import soundfile as sf

    sf.write(str(wav), np.zeros(16000, np.float32), 16000)
    assert main(["predict", str(wav), "--source", str(folder), "-o",
                 str(tmp_path / "t.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and LAYER in err and message in err


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_info_on_a_corrupt_safetensors_is_one_line(tmp_path, damage, capsys):
    folder = write_checkpoint(tmp_path / damage, "tiny")
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00\x01not a file" * 9,
                      "empty": b""}[damage])
    assert main(["info", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.safetensors" in err, err


def _huge(t):  # finite, but their float32 sum overflows to infinity
    return t.fill_(3e38)


def test_finite_values_whose_sum_overflows_load(tmp_path):
    folder = _poisoned(tmp_path / "huge", _huge)
    clf = AgeGenderClassifier.from_hparams(source=str(folder))
    weight = dict(clf.mods.model.encoder.named_parameters())[f"model.encoder.{LAYER}"]
    assert bool((weight.detach().to_dense() == 3e38).all())


def test_a_nan_among_huge_values_is_counted(tmp_path):
    folder = _poisoned(tmp_path / "huge-nan", lambda t: _nan(_huge(t)))
    with pytest.raises(CheckpointError, match=rf"\.{LAYER} holds 1 NaN or infinite value"):
        AgeGenderClassifier.from_hparams(source=str(folder))
