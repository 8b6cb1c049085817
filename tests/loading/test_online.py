"""The published 6-layer model against audEERING's published numbers (``agegender check``).

Tests marked ``online`` download ``audeering/wav2vec2-large-robust-6-ft-age-gender`` from
the Hugging Face hub through the real ``AgeGenderClassifier.from_hparams`` path (strict
loading) and compare its outputs with the numbers audEERING published for their ONNX export
of it. They run only with ``AGEGENDER_ONLINE=1`` (this project's machines have no network).

The other tests run offline: the comparison on fabricated outputs on both sides of the
tolerance, and the command on a tiny checkpoint (the "no published numbers" path, a forced
comparison that fails, a model that does not load).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from agegender_sb.cli import main
from agegender_sb.report.check import (
    PUBLISHED,
    PUBLISHED_SOURCE,
    TOLERANCE,
    check_published,
    compare_published,
    published_signal,
)

online = pytest.mark.skipif(
    os.environ.get("AGEGENDER_ONLINE") != "1",
    reason="downloads the published 6-layer model from the Hugging Face hub: set "
           "AGEGENDER_ONLINE=1 where a network exists")


def _published_outputs(shift=0.0, hidden_size=1024):
    """Outputs equal to the published ones (plus ``shift`` everywhere)."""
    hidden = np.zeros(hidden_size)
    hidden[:3] = PUBLISHED["hidden_states_head"]
    hidden[-3:] = PUBLISHED["hidden_states_tail"]
    return {"labels": ("female", "male", "child"), "age": PUBLISHED["age"] + shift,
            "gender_logits": [x + shift for x in PUBLISHED["gender_logits"]],
            "hidden_states": list(hidden + shift)}


def test_signal_is_numpys_seeded_normal():
    state = np.random.get_state()
    try:
        np.random.seed(0)
        expected = np.random.normal(size=16000).astype(np.float32)
    finally:
        np.random.set_state(state)
    assert np.array_equal(published_signal(), expected)


@pytest.mark.parametrize("shift, ok", [(0.0, True), (0.9 * TOLERANCE, True),
                                       (-0.9 * TOLERANCE, True), (1.1 * TOLERANCE, False),
                                       (-1.1 * TOLERANCE, False)])
def test_comparison_on_both_sides_of_the_tolerance(shift, ok):
    checks = compare_published(_published_outputs(shift))
    assert [c.what for c in checks] == ["age output", "gender logits (female, male, child)",
                                        "hidden_states[:3]", "hidden_states[-3:]"]
    assert all(c.ok is ok for c in checks)
    for c in checks:
        assert c.difference == pytest.approx(abs(shift), abs=1e-12)


def test_one_value_off_fails_that_check_only():
    outputs = _published_outputs()
    outputs["hidden_states"][-1] += 2 * TOLERANCE
    assert [c.ok for c in compare_published(outputs)] == [True, True, True, False]


def test_logits_matched_by_label_name():
    outputs = _published_outputs()
    order = ("child", "female", "male")
    logits = dict(zip(PUBLISHED["labels"], PUBLISHED["gender_logits"]))
    outputs.update(labels=order, gender_logits=[logits[lab] for lab in order])
    assert all(c.ok for c in compare_published(outputs))
    outputs.update(labels=("a", "b", "c"))
    checks = compare_published(outputs)
    assert checks[0].what == "gender labels" and not checks[0].ok


def test_check_without_published_numbers(tiny_checkpoint, capsys):
    assert main(["check", "--source", tiny_checkpoint]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0, out  # one line
    assert out.startswith(f"agegender check: {tiny_checkpoint}: loads strictly (")
    assert "parameters, every tensor of the checkpoint in place)" in out
    assert f"no published numbers exist for this model (audEERING published them for " \
           f"{PUBLISHED_SOURCE} only), so only strict loading was checked" in out


def test_check_forced_comparison_reports_what_differs(tiny_checkpoint, capsys):
    """The tiny random model cannot reproduce the published numbers: exit 1, each differing
    check on its own line with expected and got values."""
    assert main(["check", "--source", tiny_checkpoint, "--published"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert "but differs from audEERING's published numbers" in lines[0]
    assert lines[1].startswith("  age output: expected [0.3961048], got [")
    assert any(line.startswith("  gender logits (female, male, child): expected "
                               "[0.3281077, -0.5652804, 0.0317882]") for line in lines)


def test_check_a_model_that_does_not_load(tmp_path, tiny_checkpoint, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in os.listdir(tiny_checkpoint):
        (broken / f).write_bytes((open(os.path.join(tiny_checkpoint, f), "rb")).read())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    assert main(["check", "--source", str(broken)]) == 1
    assert f"agegender check: {broken}: does not load:" in capsys.readouterr().out


@pytest.fixture(scope="module")
def published_model():
    from agegender_sb import AgeGenderClassifier

    return AgeGenderClassifier.from_hparams(source=PUBLISHED_SOURCE,
                                            run_opts={"device": "cpu"})


@pytest.mark.online
@online
def test_published_model_reproduces_audeerings_numbers(published_model):
    assert published_model.labels == ("female", "male", "child")
    assert published_model.settings["wav2vec2"]["num_hidden_layers"] == 6
    checks = check_published(published_model)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


@pytest.mark.online
@online
def test_check_command_on_the_published_model(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "loads strictly" in out and "reproduces audEERING's published numbers" in out
