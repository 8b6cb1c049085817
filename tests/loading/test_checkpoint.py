"""Loading audEERING-layout and SpeechBrain checkpoints: strictness, spellings, conversion."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
import yaml
from reference import (
    audeering_config,
    build_card_model,
    card_process,
    legacy_weight_norm_keys,
    write_audeering_checkpoint,
)
from safetensors.torch import load_file, save_file
from speechbrain.utils.fetching import FetchConfig

from agegender_sb import (
    AgeGenderClassifier,
    CheckpointError,
    SourceError,
    convert_audeering_checkpoint,
)

X = (0.1 * np.random.RandomState(7).randn(12000)).astype(np.float32)


def _outputs(clf):
    p = clf.predict_batch(torch.from_numpy(X))
    return torch.cat([p.age_raw, p.gender_logits[0], p.embedding[0]])


def _ref_outputs(card):
    r = card_process(card, X)
    return torch.cat([r["age"].reshape(1), r["gender_logits"], r["embedding"]])


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("legacy", [True, False], ids=["weight_g_v", "parametrizations"])
def test_both_formats_and_weight_norm_spellings(tmp_path, tiny_card, fmt, legacy):
    card, config = tiny_card
    folder = write_audeering_checkpoint(card, config, tmp_path, formats=(fmt,),
                                        legacy_weight_norm=legacy)
    clf = AgeGenderClassifier.from_hparams(source=str(folder))
    assert torch.allclose(_outputs(clf), _ref_outputs(card), atol=1e-4, rtol=0)
    # the positional convolution really received the checkpoint's tensors
    ours = clf.mods.model.encoder.model.encoder.pos_conv_embed.conv.weight
    theirs = card.wav2vec2.encoder.pos_conv_embed.conv.weight
    assert torch.allclose(ours, theirs)


def test_safetensors_preferred_over_bin(tmp_path, tiny_card):
    card, config = tiny_card
    folder = write_audeering_checkpoint(card, config, tmp_path, formats=("safetensors",))
    other = build_card_model(config, seed=99)
    torch.save(legacy_weight_norm_keys(other.state_dict()), folder / "pytorch_model.bin")
    clf = AgeGenderClassifier.from_hparams(source=str(folder))
    assert torch.allclose(_outputs(clf), _ref_outputs(card), atol=1e-4, rtol=0)
    (folder / "model.safetensors").unlink()
    clf = AgeGenderClassifier.from_hparams(source=str(folder))
    assert torch.allclose(_outputs(clf), _ref_outputs(other), atol=1e-4, rtol=0)


class _Boom:
    def __reduce__(self):
        return (print, ("code ran",))


def test_bin_is_loaded_without_running_code(tmp_path, tiny_card):
    card, config = tiny_card
    folder = write_audeering_checkpoint(card, config, tmp_path, formats=())
    state = legacy_weight_norm_keys(card.state_dict())
    state["evil"] = _Boom()
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump(state, f)
    with pytest.raises(CheckpointError, match="pytorch_model.bin: cannot be loaded as plain"):
        AgeGenderClassifier.from_hparams(source=str(folder))


def _edit_safetensors(folder, edit):
    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("wav2vec2.encoder.pos_conv_embed.conv.weight_g"),
         "missing: model.encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
        (lambda s: s.pop("age.out_proj.bias"), "missing: out_proj.bias"),
        (lambda s: s.update({"gender.extra": torch.zeros(1)}), "unexpected: extra"),
        (lambda s: s.update({"lm_head.weight": torch.zeros(1)}), "lm_head.weight"),
        (lambda s: s.update({"gender.out_proj.weight": torch.zeros(4, 32)}),
         "wrong shape: out_proj.weight (checkpoint (4, 32), model (3, 32))"),
    ],
    ids=["missing-weight-norm", "missing-head", "unexpected", "foreign-prefix", "shape"],
)
def test_strict_loading_names_the_tensor(tmp_path, tiny_card, edit, message):
    card, config = tiny_card
    folder = write_audeering_checkpoint(card, config, tmp_path)
    _edit_safetensors(folder, edit)
    with pytest.raises(CheckpointError, match="model.safetensors") as err:
        AgeGenderClassifier.from_hparams(source=str(folder))
    assert message in str(err.value)


def test_labels_follow_config_order(tmp_path, tiny_card):
    card, config = tiny_card
    config = dict(config, id2label={"0": "child", "1": "female", "2": "male"})
    clf = AgeGenderClassifier.from_hparams(
        source=str(write_audeering_checkpoint(card, config, tmp_path)))
    assert clf.labels == ("child", "female", "male")
    probs = card_process(card, X)["gender_probs"]
    assert clf.predict_batch(torch.from_numpy(X)).gender == [clf.labels[int(probs.argmax())]]


def test_default_checkpoint_labels(tiny_checkpoint):
    assert AgeGenderClassifier.from_hparams(source=tiny_checkpoint).labels == (
        "female", "male", "child")


def test_config_without_labels_is_refused(tmp_path, tiny_card):
    card, config = tiny_card
    config = {k: v for k, v in config.items() if k not in ("id2label", "label2id")}
    folder = write_audeering_checkpoint(card, config, tmp_path)
    with pytest.raises(CheckpointError, match="id2label"):
        AgeGenderClassifier.from_hparams(source=str(folder))


def test_folder_without_model_files(tmp_path):
    with pytest.raises(SourceError, match="hyperparams.yaml"):
        AgeGenderClassifier.from_hparams(source=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(audeering_config()))
    with pytest.raises(CheckpointError, match="model.safetensors or pytorch_model.bin"):
        AgeGenderClassifier.from_hparams(source=str(tmp_path))


def test_convert_to_speechbrain_folder(tmp_path, tiny_card, tiny_checkpoint):
    card, _ = tiny_card
    out = convert_audeering_checkpoint(tiny_checkpoint, tmp_path / "sb")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["age_head.ckpt", "config.json", "encoder.ckpt", "gender_head.ckpt",
                     "hyperparams.yaml"]
    hp = yaml.load((out / "hyperparams.yaml").read_text(), Loader=yaml.BaseLoader)
    assert hp["gender_labels"] == ["female", "male", "child"]
    assert hp["wav2vec2"]["hidden_size"] == "32" and hp["wav2vec2"]["num_hidden_layers"] == "2"
    # loadable elsewhere: copy the folder, load it as a SpeechBrain model
    moved = shutil.copytree(out, tmp_path / "moved")
    clf = AgeGenderClassifier.from_hparams(source=str(moved), savedir=tmp_path / "save")
    assert clf.source_layout == "speechbrain"
    assert clf.labels == ("female", "male", "child")
    assert torch.allclose(_outputs(clf), _ref_outputs(card), atol=1e-4, rtol=0)
    with pytest.raises(CheckpointError, match="already a SpeechBrain"):
        convert_audeering_checkpoint(str(moved), tmp_path / "again")


def test_speechbrain_folder_is_loaded_strictly(tmp_path, tiny_checkpoint):
    out = convert_audeering_checkpoint(tiny_checkpoint, tmp_path / "sb")
    state = torch.load(out / "age_head.ckpt", weights_only=True)
    del state["dense.bias"]
    torch.save(state, out / "age_head.ckpt")
    with pytest.raises(CheckpointError, match=r"age_head.ckpt does not match MLPHead: missing: "
                                              r"dense.bias"):
        AgeGenderClassifier.from_hparams(source=str(out), savedir=tmp_path / "save")


def test_speechbrain_folder_with_legacy_weight_norm_names(tmp_path, tiny_card, tiny_checkpoint):
    card, _ = tiny_card
    out = convert_audeering_checkpoint(tiny_checkpoint, tmp_path / "sb")
    state = torch.load(out / "encoder.ckpt", weights_only=True)
    torch.save(legacy_weight_norm_keys(state), out / "encoder.ckpt")
    assert any(k.endswith("weight_g") for k in torch.load(out / "encoder.ckpt").keys())
    clf = AgeGenderClassifier.from_hparams(source=str(out), savedir=tmp_path / "save")
    assert torch.allclose(_outputs(clf), _ref_outputs(card), atol=1e-4, rtol=0)


def test_six_layer_override_of_the_same_file(tmp_path):
    """The 6-layer model is an override of hparams/inference.yaml, not a copy."""
    config = audeering_config(num_hidden_layers=6)
    card = build_card_model(config, seed=6)
    folder = write_audeering_checkpoint(card, config, tmp_path / "ck")
    sb = convert_audeering_checkpoint(str(folder), tmp_path / "sb")
    text = (sb / "hyperparams.yaml").read_text()
    assert "num_hidden_layers: 6" in text
    clf = AgeGenderClassifier.from_hparams(source=str(sb), savedir=tmp_path / "s")
    assert len(clf.mods.model.encoder.model.encoder.layers) == 6
    assert torch.allclose(_outputs(clf), _ref_outputs(card), atol=1e-4, rtol=0)


def _hub_cache(tmp_path, repo_id, files_from):
    """A Hugging Face cache holding one snapshot of ``repo_id`` (what a past download leaves)."""
    cache = tmp_path / "hf"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snap = repo / "snapshots" / revision
    shutil.copytree(files_from, snap)
    return cache


def test_hub_id_goes_through_the_hub_client(tmp_path, tiny_card, tiny_checkpoint):
    """A hub id is resolved by huggingface_hub (here from its cache, offline)."""
    card, _ = tiny_card
    repo_id = "audeering/wav2vec2-large-robust-24-ft-age-gender"
    cache = _hub_cache(tmp_path, repo_id, tiny_checkpoint)
    cfg = FetchConfig(allow_network=False, huggingface_cache_dir=str(cache))
    clf = AgeGenderClassifier.from_hparams(source=repo_id, savedir=tmp_path / "save",
                                           fetch_config=cfg)
    assert clf.source_layout == "audeering"
    assert torch.allclose(_outputs(clf), _ref_outputs(card), atol=1e-4, rtol=0)
    # a SpeechBrain model folder on the hub, the same way
    sb = convert_audeering_checkpoint(tiny_checkpoint, tmp_path / "sb")
    cache2 = _hub_cache(tmp_path / "2", "someone/agegender-sb", sb)
    cfg2 = FetchConfig(allow_network=False, huggingface_cache_dir=str(cache2))
    clf2 = AgeGenderClassifier.from_hparams(source="someone/agegender-sb",
                                            savedir=tmp_path / "save2", fetch_config=cfg2)
    assert clf2.source_layout == "speechbrain"
    assert torch.allclose(_outputs(clf2), _ref_outputs(card), atol=1e-4, rtol=0)


def test_converted_folder_keeps_inference_settings(tmp_path, tiny_card, tiny_checkpoint):
    """A model folder repeats non-default settings, and they act: the age scale, and a
    normalisation epsilon compared with the reference computed with that epsilon, on a
    low-amplitude signal where it matters."""
    from agegender_sb.loading.folders import save_model_folder

    card, _ = tiny_card
    clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint,
                                           overrides={"age_scale": 90.0, "norm_eps": 1e-5})
    out = save_model_folder(clf.mods.model, clf.settings, tmp_path / "sb")
    again = AgeGenderClassifier.from_hparams(source=str(out), savedir=tmp_path / "s")
    assert again.hparams.age_scale == 90.0 and again.hparams.norm_eps == 1e-5
    quiet = X * 1e-3  # variance 1e-8: eps 1e-5 dominates it
    x = torch.from_numpy(quiet).double()
    y = ((x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5)).float()[None]
    with torch.no_grad():
        hidden, age, _ = card(y)
    pred = again.predict_batch(torch.from_numpy(quiet))
    assert torch.allclose(pred.embedding[0], hidden[0], atol=1e-5, rtol=0)
    assert abs(float(pred.age[0]) - 90.0 * float(age[0, 0])) < 1e-4
    # and the default epsilon gives something else on that signal: the setting is used
    default = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    moved = default.predict_batch(torch.from_numpy(quiet)).embedding - pred.embedding
    assert moved.abs().max() > 1e-3
