"""agegender_sb.testing.write_checkpoint: audEERING's published layout, checked against the
model card's reference code (tests/reference.py, written independently of the package).

Tolerance as tests/test_fidelity.py: 1e-5 absolute on age, gender logits and probabilities
and the embedding.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reference import PREPROCESSOR_CONFIG, CardModel, audeering_config, card_process
from safetensors.torch import load_file
from transformers import Wav2Vec2Config, Wav2Vec2Model

from agegender_sb import AgeGenderClassifier
from agegender_sb.testing import SIZES, published_config, write_checkpoint

TOL = 1e-5


def card_from_folder(folder) -> CardModel:
    """The card's model class with the folder's tensors (weight norm renamed back)."""
    config = json.loads((folder / "config.json").read_text())
    card = CardModel(Wav2Vec2Config(**config)).eval()
    state = {}
    for key, value in load_file(str(folder / "model.safetensors")).items():
        key = key.replace("weight_g", "parametrizations.weight.original0")
        key = key.replace("weight_v", "parametrizations.weight.original1")
        state[key] = value
    card.load_state_dict(state, strict=True)
    return card


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_written_checkpoint_loads_and_matches_the_card(tmp_path, size):
    folder = write_checkpoint(tmp_path / size, size=size, seed=3)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]
    assert json.loads((folder / "preprocessor_config.json").read_text()) == PREPROCESSOR_CONFIG
    card = card_from_folder(folder)
    clf = AgeGenderClassifier.from_hparams(source=str(folder))
    assert clf.labels == ("female", "male", "child")
    rng = np.random.RandomState(0)
    for n in (16000, 7321):
        x = (0.3 * np.sin(2 * np.pi * 150 * np.arange(n) / 16000)
             + 0.05 * rng.randn(n)).astype(np.float32)
        ref = card_process(card, x)
        pred = clf.predict_batch(torch.from_numpy(x))
        assert abs(float(pred.age_raw[0]) - float(ref["age"])) < TOL
        assert torch.allclose(pred.gender_logits[0], ref["gender_logits"], atol=TOL, rtol=0)
        assert torch.allclose(pred.gender_probs[0], ref["gender_probs"], atol=TOL, rtol=0)
        assert torch.allclose(pred.embedding[0], ref["embedding"], atol=TOL, rtol=0)
    # heads are not degenerate: two different signals, two different ages
    ages = clf.predict_batch(torch.randn(2, 16000)).age
    assert float(ages[0]) != float(ages[1])


def test_tiny_config_and_names_are_the_published_ones(tmp_path):
    """Same config as the reference's copy of the published one, same tensor names and
    shapes as the card's model (legacy weight-norm names, as published)."""
    folder = write_checkpoint(tmp_path, "tiny")
    assert json.loads((folder / "config.json").read_text()) == audeering_config()
    written = load_file(str(folder / "model.safetensors"))
    card = CardModel(Wav2Vec2Config(**audeering_config()))
    expected = {k.replace("parametrizations.weight.original0", "weight_g")
                 .replace("parametrizations.weight.original1", "weight_v"): v.shape
                for k, v in card.state_dict().items()}
    assert {k: v.shape for k, v in written.items()} == expected
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in written
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in written.values())


def test_seed_reproduces_and_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = load_file(str(write_checkpoint(tmp_path / "a", seed=5) / "model.safetensors"))
    after = torch.rand(3)
    assert torch.equal(before, after)  # fork_rng: the caller's stream goes on unchanged
    b = load_file(str(write_checkpoint(tmp_path / "b", seed=5) / "model.safetensors"))
    c = load_file(str(write_checkpoint(tmp_path / "c", seed=6) / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_full_size_has_the_published_shapes():
    """The published model's sizes, checked without writing 1.27 GB: the config's numbers
    and the parameter count of its encoder built on the meta device."""
    cfg = published_config(**SIZES["full"])
    assert cfg == published_config()
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"],
            cfg["num_attention_heads"], cfg["conv_dim"]) == (1024, 24, 4096, 16, [512] * 7)
    with torch.device("meta"):
        encoder = Wav2Vec2Model(Wav2Vec2Config(**cfg))
    params = sum(p.numel() for p in encoder.parameters())
    assert 315_000_000 < params < 316_000_000  # wav2vec2-large-robust: 315.4M


def test_unknown_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="size must be one of tiny, small, full"):
        write_checkpoint(tmp_path, size="huge")
