"""The hyperparameter file ships inside the wheel, so installed copies find it."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from paths import REPO

ROOT = REPO


def test_wheel_contains_inference_yaml(tmp_path):
    try:
        import setuptools  # noqa: F401
    except ImportError:
        pytest.skip("setuptools not installed")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("agegender_sb-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "agegender_sb/hparams/inference.yaml" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    text = zipfile.ZipFile(wheel).read("agegender_sb/hparams/inference.yaml").decode()
    assert text == (ROOT / "hparams" / "inference.yaml").read_text()
