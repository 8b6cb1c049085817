"""Shared fixtures: tiny checkpoints in audEERING's layout, the reference model, real speech."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

from paths import SPEECHOCEAN  # noqa: E402
from reference import audeering_config, build_card_model, write_audeering_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_card():
    """(reference model, config) for a 2-layer tiny model."""
    config = audeering_config()
    return build_card_model(config), config


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_card):
    """Folder with a tiny audEERING-layout checkpoint (safetensors, legacy weight-norm keys)."""
    model, config = tiny_card
    return str(write_audeering_checkpoint(model, config, tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def clf(tiny_checkpoint):
    """The classifier of the tiny checkpoint (one per test module)."""
    from agegender_sb import AgeGenderClassifier

    return AgeGenderClassifier.from_hparams(source=tiny_checkpoint)


@pytest.fixture(autouse=True)
def _doctest_fixtures(doctest_namespace, request):
    doctest_namespace["getfixture"] = request.getfixturevalue


@pytest.fixture(scope="session")
def speechocean():
    """The real-speech subset, or skip where it is absent."""
    if not (SPEECHOCEAN / "train" / "wav.scp").is_file():
        pytest.skip(f"{SPEECHOCEAN} not present")
    return SPEECHOCEAN


def write_wav(path, signal, sample_rate=16000, subtype=None, fmt=None):
    """Write a test signal with soundfile and return its path."""
    sf.write(str(path), np.asarray(signal), sample_rate, subtype=subtype, format=fmt)
    return Path(path)


def pytest_collection_modifyitems(config, items):
    """The bf16 fast path's doctests need oneDNN's bfloat16 operators, which CPUs without
    AVX512BW/VL/DQ or AVX-NE-CONVERT (e.g. an AVX2-only AMD EPYC) lack: skipped there."""
    bf16 = [item for item in items if ".fast_paths." in item.name
            and ("BF16" in item.name or item.name.endswith(".enable_fast_path"))]
    if not bf16:
        return
    from agegender_sb.backends.fast_paths import bf16_available

    if not bf16_available():
        for item in bf16:
            item.add_marker(pytest.mark.skip(reason="no oneDNN bfloat16 operators on this CPU"))
