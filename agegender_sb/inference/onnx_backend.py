"""The ONNX Runtime backend of a classifier: its graph found or exported, checked against the
model it stands for, and put in the torch model's place (``backend="onnx"``)."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import torch

from agegender_sb.errors import CheckpointError

__all__ = ["attach_onnx"]

logger = logging.getLogger(__name__)


def attach_onnx(clf, onnx_path, threads, allow_other: bool = False):
    """Open (exporting first if needed) the ONNX graph of ``clf``'s model, then put it in the
    torch model's place, the torch weights freed first: one copy of the model in memory.
    Returns the ONNX Runtime session; sets ``clf.onnx_record``.

    A graph that records being exported from other weights is refused unless
    ``allow_other``; a graph without that record (audEERING's export, or one of version
    0.2) cannot be checked and is run as given. Either way :attr:`onnx_record` names the
    graph by a hash of its bytes, so a table's record tells graphs apart."""
    from agegender_sb.backends.native_memory import pin_mmap_threshold
    from agegender_sb.backends.onnx_runtime import (
        OnnxModel,
        graph_fingerprint,
        import_onnxruntime,
        release_weights,
    )
    from agegender_sb.export.onnx import export_onnx

    if threads is None:  # one thread setting for both backends (--threads, torchrun ranks)
        threads = torch.get_num_threads()
    import_onnxruntime()  # fail early, with the install hint, before a long export
    clf.fingerprint  # noqa: B018 -- hashed now, while the torch weights exist
    if onnx_path is None:
        folder = Path(getattr(clf.hparams, "savedir", None) or
                      Path.home() / ".cache" / "agegender_sb" / "onnx")
        onnx_path = folder / f"agegender-{clf.fingerprint}.onnx"
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        logger.info("exporting the model to ONNX: %s (once)", onnx_path)
        export_onnx(clf.mods.model, onnx_path, clf.labels, fingerprint=clf.fingerprint)
        gc.collect()  # the exporter's clone shares the weights' storage
    providers = None
    if clf.device_type == "cuda":
        index = torch.device(clf.device).index
        device_id = torch.cuda.current_device() if index is None else index
        providers = [("CUDAExecutionProvider", {"device_id": device_id}),
                     "CPUExecutionProvider"]
    # The torch weights go BEFORE ONNX Runtime reads the graph, so that the two
    # copies are never in memory together (the command peaked at 1.8x the torch backend's
    # RSS); the fingerprint is computed above, and on any error below the classifier is
    # not returned, so nothing needs the torch model any more. The pinned mmap threshold
    # keeps ONNX Runtime's weight-sized blocks out of glibc's heap (native_memory.py).
    pin_mmap_threshold()
    release_weights(clf.mods.model)
    model = OnnxModel(onnx_path, providers=providers, threads=threads)
    if model.labels is not None and tuple(model.labels) != clf.labels:
        raise CheckpointError(f"{onnx_path}: labels {model.labels} differ from the "
                              f"model's {clf.labels}")
    origin = model.exported_from
    if origin is not None and origin != clf.fingerprint and not allow_other:
        raise CheckpointError(
            f"{onnx_path}: exported from another model (weights {origin}), not from this "
            f"one (weights {clf.fingerprint}); export it again, or pass "
            "--allow-other-onnx / allow_other_onnx=True to run it anyway")
    if origin is None:
        logger.warning("%s records no model it was exported from (audEERING's export, or "
                       "one of version 0.2): it runs as given, without the check that it "
                       "is %s's; the table's record names it by its hash", onnx_path,
                       clf.fingerprint)
    clf.onnx_record = {"fingerprint": graph_fingerprint(onnx_path),
                        "exported_from": origin}
    clf.mods.model = model
    clf.hparams.model = model
    return model.session
