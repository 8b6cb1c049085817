"""The ONNX backend never holds the torch weights and ONNX Runtime's graph at once (issue 20):
when ONNX Runtime opens the graph, the classifier's torch model has already been emptied.

Checked on the real objects: a spy around ``onnxruntime.InferenceSession`` (which still opens
the real session) counts, at that moment, the weights of every torch model built by the call
under test (found through the garbage collector, so no reference is missed). The full-size
memory figures are measured by ``benchmarks/command_memory.py`` (benchmarks/RESULTS.md)."""

from __future__ import annotations

import gc

import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from agegender_sb import AgeGenderClassifier  # noqa: E402
from agegender_sb.backends.onnx_runtime import OnnxModel  # noqa: E402
from agegender_sb.export.onnx import export_onnx  # noqa: E402
from agegender_sb.model.network import AgeGenderModel  # noqa: E402


def _models() -> dict[int, AgeGenderModel]:
    return {id(o): o for o in gc.get_objects() if isinstance(o, AgeGenderModel)}


@pytest.fixture()
def weights_seen_by_ort(monkeypatch):
    """Patch ``InferenceSession`` to record the torch weights (elements) of the models built
    since the fixture started, each time ONNX Runtime opens a graph."""
    before = set(_models())
    seen: list[int] = []
    real = ort.InferenceSession

    def spy(*args, **kwargs):
        new = [m for i, m in _models().items() if i not in before]
        seen.append(sum(t.numel() for m in new for t in [*m.parameters(), *m.buffers()]))
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    return seen


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    path = export_onnx(clf.mods.model, tmp_path_factory.mktemp("one-copy") / "m.onnx",
                       clf.labels)
    return path, clf


def test_existing_graph_opens_after_the_torch_weights_are_freed(tiny_checkpoint, exported,
                                                                weights_seen_by_ort):
    path, clf = exported
    onnx_clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint, backend="onnx",
                                                onnx_path=path, onnx_threads=1)
    assert weights_seen_by_ort == [0]  # one session opened, no torch weights alive then
    assert isinstance(onnx_clf.mods.model, OnnxModel)
    assert onnx_clf.fingerprint == clf.fingerprint  # hashed before the weights went
    wav = torch.randn(2, 12000, generator=torch.Generator().manual_seed(3))
    ref, out = clf.predict_batch(wav), onnx_clf.predict_batch(wav)
    torch.testing.assert_close(out.gender_logits, ref.gender_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.age_raw, ref.age_raw, atol=1e-5, rtol=0)


def test_fresh_export_also_opens_after_the_weights_are_freed(tiny_checkpoint, tmp_path,
                                                            weights_seen_by_ort):
    onnx_clf = AgeGenderClassifier.from_hparams(source=tiny_checkpoint, backend="onnx",
                                                onnx_path=tmp_path / "new.onnx", onnx_threads=1)
    assert (tmp_path / "new.onnx").is_file()
    assert weights_seen_by_ort == [0]
    assert sum(t.numel() for t in onnx_clf.mods.parameters()) == 0


def test_the_spy_sees_weights_that_are_alive(tiny_checkpoint, exported, weights_seen_by_ort):
    """The check above can fail: a torch model alive while a session opens is counted."""
    path, _ = exported
    alive = AgeGenderClassifier.from_hparams(source=tiny_checkpoint)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert weights_seen_by_ort == [sum(p.numel() for p in alive.mods.model.parameters())
                                   + sum(b.numel() for b in alive.mods.model.buffers())]
    assert weights_seen_by_ort[0] > 0


_HEAP_PROBE = r"""
import ctypes, sys
from agegender_sb.backends.native_memory import pin_mmap_threshold
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "pin":
    assert pin_mmap_threshold()
big = libc.malloc(16 << 20); libc.memset(big, 1, 16 << 20); libc.free(big)  # as torch's weights
blocks = [libc.malloc(4 << 20) for _ in range(50)]
for b in blocks:
    libc.memset(b, 1, 4 << 20)
held = rss_mb()
for b in blocks[:-1]:
    libc.free(b)
print(held - rss_mb())
"""


@pytest.mark.skipif(not __import__("platform").libc_ver()[0] == "glibc", reason="glibc only")
def test_pinned_mmap_threshold_returns_freed_blocks_to_the_system():
    """After a 16 MiB block is freed, 4 MiB blocks land in glibc's heap and freeing 49 of
    them returns nothing while the 50th lives; with the threshold pinned they are mapped
    one by one and all 196 MiB go back."""
    import os
    import subprocess
    import sys

    from paths import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    returned = {mode: float(subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], env=env,
                                           capture_output=True, text=True, check=True).stdout)
                for mode in ("pin", "dynamic")}
    assert returned["pin"] > 190
    assert returned["dynamic"] < 20
