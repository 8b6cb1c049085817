"""Model sources: layouts decided without running code, foreign YAML tags refused, broken
checkpoints refused with a message, mistyped folders and an unreachable hub said at once."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from reference import audeering_config, build_card_model, write_audeering_checkpoint
from safetensors.torch import load_file, save_file
from speechbrain.utils.fetching import FetchConfig

from agegender_sb import (
    AgeGenderClassifier,
    CheckpointError,
    SourceError,
    UnsafeModelError,
    convert,
)
from agegender_sb.cli import main
from agegender_sb.loading.folders import describe
from agegender_sb.loading.sources import resolve_source


@pytest.fixture()
def sb_folder(tmp_path, tiny_checkpoint):
    return convert(tiny_checkpoint, tmp_path / "sb")


@pytest.mark.parametrize("tag", ["!apply:os.system", "!new:subprocess.Popen",
                                 "!name:builtins.exec", "!include:other.yaml"])
def test_foreign_yaml_tags_are_refused_before_anything_runs(tmp_path, sb_folder, tag):
    marker = tmp_path / "ran"
    hp = sb_folder / "hyperparams.yaml"
    hp.write_text(hp.read_text() + f"\nrun_me: {tag} [[touch, {marker}]]\n")
    with pytest.raises(UnsafeModelError, match=f"tag {tag}") as info:
        AgeGenderClassifier.from_hparams(source=str(sb_folder))
    assert "trust_remote_code=True" in str(info.value)
    assert not marker.exists()


def test_trust_remote_code_opts_in(tmp_path, sb_folder):
    marker = tmp_path / "ran"
    hp = sb_folder / "hyperparams.yaml"
    hp.write_text(hp.read_text() + f"\nrun_me: !apply:pathlib.Path.touch [!new:pathlib.Path "
                                   f"[{marker}]]\n")
    clf = AgeGenderClassifier.from_hparams(source=str(sb_folder), trust_remote_code=True)
    assert marker.exists() and clf.labels == ("female", "male", "child")


def test_a_trusted_folder_that_builds_an_encoder_no_file_fills_is_refused(sb_folder):
    """The loader builds encoders without drawing their random weights, since it loads them
    next: one the folder's YAML builds besides ``encoder`` would keep whatever memory held."""
    hp = sb_folder / "hyperparams.yaml"
    hp.write_text(hp.read_text() + "\nspare: !new:agegender_sb.model.encoder.Wav2Vec2Encoder"
                                   "\n    config: !ref <wav2vec2>\n")
    with pytest.raises(CheckpointError, match="build 1 wav2vec2 encoder.* besides `encoder`"):
        AgeGenderClassifier.from_hparams(source=str(sb_folder), trust_remote_code=True)


def test_foreign_tags_refused_on_a_hub_repo_too(tmp_path, sb_folder):
    """A hub repo (here a pre-filled cache) that gains a code-running hyperparams.yaml."""
    from test_checkpoint import _hub_cache

    hp = sb_folder / "hyperparams.yaml"
    hp.write_text(hp.read_text() + "\nx: !apply:os.system [echo hi]\n")
    cache = _hub_cache(tmp_path, "someone/model", sb_folder)
    cfg = FetchConfig(allow_network=False, huggingface_cache_dir=str(cache))
    with pytest.raises(UnsafeModelError, match="os.system"):
        AgeGenderClassifier.from_hparams(source="someone/model", savedir=tmp_path / "s",
                                         fetch_config=cfg)


def test_cli_refuses_unsafe_folder_with_exit_2(tmp_path, sb_folder, capsys):
    hp = sb_folder / "hyperparams.yaml"
    hp.write_text(hp.read_text() + "\nx: !apply:os.system [echo hi]\n")
    wav = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    assert main(["predict", str(wav), "--source", str(sb_folder), "--vad", "none"]) == 2
    err = capsys.readouterr().err
    assert "os.system" in err and "Traceback" not in err


@pytest.mark.parametrize("source", ["./nope", "/abs/nope/model", "nope", "~/nope-xyz"])
def test_mistyped_local_source_is_said_at_once(source):
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="no such model folder"):
        resolve_source(source)
    assert time.monotonic() - t0 < 2.0


def test_unreachable_hub_is_said_at_once_with_the_ways_out(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    cfg = FetchConfig(huggingface_cache_dir=str(tmp_path / "empty-cache"))
    t0 = time.monotonic()
    with pytest.raises(SourceError) as info:
        resolve_source("someone/missing-model", savedir=tmp_path / "s", fetch_config=cfg)
    assert time.monotonic() - t0 < 10.0
    message = str(info.value)
    assert "cannot be reached" in message and "HF_HUB_OFFLINE" in message
    assert "local model folder" in message


def _checkpoint(tmp_path, config=None, state_edit=None):
    config = config or audeering_config()
    folder = write_audeering_checkpoint(build_card_model(audeering_config()), config,
                                        tmp_path / "ck")
    if state_edit is not None:
        state = load_file(str(folder / "model.safetensors"))
        state_edit(state)
        save_file(state, str(folder / "model.safetensors"))
    return folder


def _nan(state):
    key = next(k for k in state if k.endswith("age.dense.weight"))
    state[key][0, 0] = float("nan")


def _inf(state):
    key = next(k for k in state if k.endswith("feature_projection.projection.weight"))
    state[key][1, 1] = float("inf")


def _integer(state):
    key = next(k for k in state if k.endswith("gender.out_proj.weight"))
    state[key] = state[key].round().to(torch.int64)


@pytest.mark.parametrize("edit, match", [
    (_nan, r"age\.dense\.weight|dense\.weight holds 1 NaN"),
    (_inf, r"feature_projection.projection.weight holds 1 NaN or infinite"),
    (_integer, r"out_proj.weight holds torch.int64 values"),
])
def test_broken_weights_are_refused(tmp_path, edit, match):
    folder = _checkpoint(tmp_path, state_edit=edit)
    with pytest.raises(CheckpointError, match=match):
        AgeGenderClassifier.from_hparams(source=str(folder))


def _config(**changes):
    config = audeering_config()
    config.update(changes)
    return config


@pytest.mark.parametrize("config, match", [
    ([1, 2, 3], "expected a JSON object, got list"),
    (None, "expected a JSON object, got NoneType"),
    (_config(num_hidden_layers="two"), "num_hidden_layers must be a positive integer"),
    (_config(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
    (_config(id2label={"0": "female", "1": "female", "2": "child"}),
     "names female more than once"),
    (_config(id2label={"0": "female", "2": "male"}), "not 0..1"),
    (_config(conv_dim=[16, "x"]), "conv_dim must be a list of positive integers"),
])
def test_broken_configs_are_refused(tmp_path, config, match, capsys):
    folder = _checkpoint(tmp_path)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match):
        AgeGenderClassifier.from_hparams(source=str(folder))
    # the command line: exit 2, the message, no traceback
    assert main(["info", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_convert_refuses_an_existing_folder_unless_asked(tmp_path, tiny_checkpoint):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(SourceError, match="not empty"):
        convert(tiny_checkpoint, dest)
    assert main(["convert", tiny_checkpoint, str(dest)]) == 2
    assert main(["convert", tiny_checkpoint, str(dest), "--overwrite"]) == 0
    assert (dest / "encoder.ckpt").is_file() and (dest / "mine.txt").read_text() == "keep me"


def test_describe_reads_headers_only(tmp_path, tiny_card, tiny_checkpoint, sb_folder):
    card, _ = tiny_card
    expected = sum(v.numel() for v in card.state_dict().values())
    info = describe(tiny_checkpoint)
    assert info["parameters"] == expected and info["layers"] == 2
    assert describe(sb_folder)["parameters"] == expected
    assert describe(sb_folder)["layout"] == "speechbrain"
