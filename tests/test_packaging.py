"""The wheel holds every module of the package and the hyperparameter file, so installed
copies import and find them."""

from __future__ import annotations

import shutil
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
    # built from a clean copy: a build/ folder left in the checkout would feed stale files in
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", ".ci-cache", "__pycache__", "*.onnx"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(src)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("agegender_sb-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "agegender_sb/hparams/inference.yaml" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    # every module of every subpackage ships (a subpackage missing from pyproject's list
    # would leave an installed copy unable to import it)
    source = {str(p.relative_to(ROOT)) for p in (ROOT / "agegender_sb").rglob("*.py")
              if "hparams" not in p.parts}
    assert source <= set(names), sorted(source - set(names))[:5]
    text = zipfile.ZipFile(wheel).read("agegender_sb/hparams/inference.yaml").decode()
    assert text == (ROOT / "hparams" / "inference.yaml").read_text()
