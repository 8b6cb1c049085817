"""ONNX export, with audEERING's input and output names (running a graph:
:mod:`agegender_sb.backends.onnx_runtime`).

Conventions
-----------
The exported graph has the interface of audEERING's published ONNX export of
``wav2vec2-large-robust-{6,24}-ft-age-gender`` (tutorial repo ``audeering/w2v2-age-gender-how-to``),
so tools built for theirs take ours and ours reads theirs:

* one input, ``signal`` ``[1, T]`` float32: raw 16 kHz mono audio, **not** normalised (the
  per-utterance normalisation is part of the graph); ``T`` is dynamic (``T >= 400``);
* outputs ``hidden_states`` ``[1, H]`` (time-pooled last layer), ``logits_age`` ``[1, 1]``
  (age in years / 100) and ``logits_gender`` ``[1, n]``: **raw logits**, as in audEERING's
  export, labels in output order (female, male, child for their checkpoints);
* ``gender_probabilities=True`` adds a fourth output, ``probs_gender`` ``[1, n]`` (softmax of
  ``logits_gender``), and leaves ``logits_gender`` as it is.

The file's metadata (``metadata_props``) names the labels and what each output holds:

=============================  ================================================================
``agegender_sb.labels``        gender labels, comma-separated, output order
``agegender_sb.hidden_states`` ``mean-pooled last hidden layer``
``agegender_sb.logits_age``    ``age in years / 100``
``agegender_sb.logits_gender`` ``logits`` (files of version 0.x may say ``probabilities``)
``agegender_sb.probs_gender``  ``probabilities`` (only when that output exists)
=============================  ================================================================

Reading (:class:`OnnxAgeGender`, :class:`OnnxModel`): a file without this metadata (e.g.
audEERING's) is read with audEERING's convention, raw logits in ``logits_gender``; a file with
it is read by what it says. Files written by the previous version with
``agegender_sb.logits_gender=probabilities`` still load: their gender logits are the ``log`` of
the probabilities, i.e. logits up to an additive constant per row (the softmax is unchanged).

:class:`OnnxModel` has the call signature of :class:`agegender_sb.model.network.AgeGenderModel`
(``(wavs, wav_lens) -> ModelOutput``) and holds no torch model, so a classifier can run on
ONNX Runtime alone.

``onnxruntime`` is needed only to run the graph (``pip install "agegender_sb[onnx]"``);
exporting needs ``onnx`` and ``onnxscript``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from agegender_sb.backends.cpu_speed import plain_torch_modules
from agegender_sb.backends.fast_linear import unpack_linear_weights
from agegender_sb.backends.onnx_runtime import (
    INPUT_NAME,
    META_GENDER,
    META_LABELS,
    META_MODEL,
    META_PREFIX,
    OUTPUT_NAMES,
    PROBS_OUTPUT,
    import_onnxruntime,
)
from agegender_sb.defaults import MIN_SAMPLES, SAMPLE_RATE

__all__ = [
    "DEFAULT_OPSET",
    "OnnxExportAdapter",
    "export_metadata",
    "export_onnx",
    "output_names",
    "quantize_onnx_dynamic",
    "quiet_exporter",
]

DEFAULT_OPSET = 18

#: Largest total of weights written inside the ``.onnx`` file; protobuf cannot parse messages
#: of 2 GiB or more, so bigger models get their weights in ``<file>.data`` beside it.
INLINE_LIMIT_BYTES = 2**31 - 2**26

#: Loggers silenced (below ERROR) during a non-verbose export: torch's ONNX exporter warns
#: "torchvision is not installed. Skipping torchvision::nms" (and three more) on every export.
QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo",
                 "torch.fx", "onnxscript", "onnx_ir")

_ONNX_EXTRA_HINT = 'install the ONNX extra: pip install "agegender_sb[onnx]"'


# --------------------------------------------------------------------------------------
# torch side
# --------------------------------------------------------------------------------------


class OnnxExportAdapter(nn.Module):
    """Give :class:`agegender_sb.model.network.AgeGenderModel` audEERING's ONNX signature.

    ``forward(signal [1, T]) -> (hidden_states [1, H], logits_age [1, 1], logits_gender [1, n])``
    runs the package's one forward path (which normalises the raw signal itself) without
    padding (``wav_lens=None``: one utterance per call, no data-dependent branches).
    ``gender_probabilities=True`` appends ``probs_gender`` (softmax of the gender logits).

    Example
    -------
    >>> from agegender_sb.model.network import AgeGenderModel, ModelOutput
    >>> class Fake(nn.Module):
    ...     def forward(self, wavs, wav_lens=None):
    ...         return ModelOutput(wavs.mean(1), torch.zeros(1, 3), torch.ones(1, 4))
    >>> [t.shape for t in OnnxExportAdapter(Fake(), True)(torch.randn(1, 400))]
    [torch.Size([1, 4]), torch.Size([1, 1]), torch.Size([1, 3]), torch.Size([1, 3])]
    """

    def __init__(self, model: nn.Module, gender_probabilities: bool = False):
        super().__init__()
        self.model = model
        self.gender_probabilities = gender_probabilities

    def forward(self, signal: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(signal, None)
        outputs = (out.embedding, out.age.reshape(-1, 1), out.gender_logits)
        if self.gender_probabilities:
            outputs += (torch.softmax(out.gender_logits, dim=-1),)
        return outputs


def _export_clone(module: nn.Module) -> nn.Module:
    """A float32 CPU copy of the module tree that shares the caller's weights (no tensor copy).

    Each module is shallow-copied with its own parameter, buffer, submodule and hook
    dictionaries; parameters are new ``Parameter`` objects over the same storage (copies only
    where a dtype or device conversion is needed), with ``requires_grad=False``; plain
    attributes (the attention kernel's name) are the clone's own, so switching the clone's
    attention kernel leaves the caller's model alone. Folding weight norm or changing classes on the
    clone therefore never touches the caller's model, and no second set of weights is held
    (as ``copy.deepcopy`` would).
    """
    # not copy.copy: parametrized modules refuse __getstate__
    clone = type(module).__new__(type(module))
    state = clone.__dict__
    state.update(module.__dict__)  # same values, replaced below where they could be mutated
    for key, value in list(state.items()):
        if isinstance(value, (dict, set)) and key not in ("_parameters", "_buffers", "_modules"):
            state[key] = copy.copy(value)  # hooks, non-persistent buffer names, ...
    state["_parameters"] = {
        name: None if p is None else nn.Parameter(_float_cpu(p), requires_grad=False)
        for name, p in module._parameters.items()
    }
    state["_buffers"] = {name: None if b is None else _float_cpu(b)
                         for name, b in module._buffers.items()}
    state["_modules"] = {name: None if m is None else _export_clone(m)
                         for name, m in module._modules.items()}
    return clone


def _float_cpu(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached on the CPU, floating point as float32 (the same storage when it is)."""
    t = t.detach()
    return t.to("cpu", torch.float32) if t.is_floating_point() else t.cpu()


def _fold_weight_norm(module: nn.Module) -> None:
    """Replace weight-norm (parametrization or legacy hook) by a plain weight, in place.

    wav2vec2's positional conv is weight-normed; folding it gives a simpler graph (one
    constant instead of norm/div/mul at every run) and avoids exporter corner cases.
    Meant for the clone of :func:`_export_clone`: it only touches the instances' own
    dictionaries and classes (``torch.nn.utils.parametrize.remove_parametrizations`` would
    delete the ``weight`` property from the dynamically created ``Parametrized*`` class,
    which the caller's module shares).
    """
    from torch.nn.utils import parametrize

    for sub in list(module.modules()):
        if parametrize.is_parametrized(sub):
            with torch.no_grad():
                values = {
                    name: getattr(sub, name).detach().clone() for name in sub.parametrizations
                }
            del sub._modules["parametrizations"]
            # instance-level class swap, never mutate the (shared) class itself
            sub.__class__ = parametrize.type_before_parametrizations(sub)
            for name, value in values.items():
                sub.register_parameter(name, nn.Parameter(value, requires_grad=False))
        for hook_id, hook in list(getattr(sub, "_forward_pre_hooks", {}).items()):
            if type(hook).__name__ == "WeightNorm":
                with torch.no_grad():
                    value = hook.compute_weight(sub).detach().clone()
                del sub._forward_pre_hooks[hook_id]
                for suffix in ("_g", "_v"):
                    del sub._parameters[hook.name + suffix]
                sub.__dict__.pop(hook.name, None)  # the hook's plain-attribute weight
                sub.register_parameter(hook.name, nn.Parameter(value, requires_grad=False))


@contextlib.contextmanager
def quiet_exporter(verbose: bool = False):
    """Silence the exporters' warnings and log messages below ERROR, for this block only.

    Python warnings are ignored and the loggers in :data:`QUIET_LOGGERS` raised to ERROR, then
    restored; errors (log records at ERROR and above, exceptions) still show. With
    ``verbose=True`` this does nothing.

    Example
    -------
    >>> log = logging.getLogger("torch.onnx._internal.exporter._registration")
    >>> with quiet_exporter():
    ...     log.isEnabledFor(logging.WARNING), log.isEnabledFor(logging.ERROR)
    (False, True)
    >>> log.isEnabledFor(logging.WARNING)
    True
    """
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for lg in loggers:
                if lg.getEffectiveLevel() < logging.ERROR:
                    lg.setLevel(logging.ERROR)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def output_names(gender_probabilities: bool = False) -> list[str]:
    """The graph's output names: audEERING's three, plus ``probs_gender`` on request."""
    return [*OUTPUT_NAMES, *([PROBS_OUTPUT] if gender_probabilities else [])]


def export_metadata(labels, gender_probabilities: bool = False,
                    fingerprint: str | None = None) -> dict[str, str]:
    """The ``metadata_props`` :func:`export_onnx` writes (see the module docstring).

    Example
    -------
    >>> export_metadata(("female", "male", "child"))["agegender_sb.logits_gender"]
    'logits'
    """
    meta = {
        META_LABELS: ",".join(labels),
        META_PREFIX + "hidden_states": "mean-pooled last hidden layer",
        META_PREFIX + "logits_age": "age in years / 100",
        META_GENDER: "logits",
    }
    if gender_probabilities:
        meta[META_PREFIX + PROBS_OUTPUT] = "probabilities"
    if fingerprint is not None:
        meta[META_MODEL] = fingerprint
    return meta


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    labels: tuple[str, ...] | list[str] = ("female", "male", "child"),
    *,
    gender_probabilities: bool = False,
    opset: int | None = None,
    dynamo: bool = True,
    attn_implementation: str = "eager",
    example_seconds: float = 2.0,
    verbose: bool = False,
    fingerprint: str | None = None,
) -> Path:
    """Export an :class:`~agegender_sb.model.network.AgeGenderModel` to ONNX; return the path.

    The graph takes ``signal`` ``[1, T]`` (raw 16 kHz mono float32; normalisation inside,
    ``T`` dynamic, ``T >= 400``) and returns ``hidden_states``, ``logits_age`` and
    ``logits_gender`` (raw logits), the names and conventions of audEERING's published export;
    with ``gender_probabilities=True`` also ``probs_gender``. The metadata names the labels
    and what each output holds (:func:`export_metadata`).

    Parameters
    ----------
    model : torch.nn.Module
        ``(wavs, wav_lens) -> ModelOutput``; left untouched (the export runs on a clone that
        shares its weights, see :func:`_export_clone`).
    path : str or PathLike
        Output ``.onnx`` file (written to a temporary name first, then renamed). Models whose
        weights exceed :data:`INLINE_LIMIT_BYTES` (protobuf's 2 GiB limit) get them in
        ``<path>.data`` beside it.
    labels : sequence of str
        Gender labels in output order, stored in the metadata.
    gender_probabilities : bool
        Add the ``probs_gender`` output (softmax); ``logits_gender`` stays raw logits.
    opset : int, optional
        ONNX opset (default 18).
    dynamo : bool
        ``torch.onnx.export(dynamo=True)`` (default, needs ``onnxscript``; weights are written
        one tensor at a time); False uses the TorchScript exporter, which builds the whole
        file in memory.
    attn_implementation : str
        Attention kernel used while tracing; ``"eager"`` yields plain MatMul/Softmax.
    example_seconds : float
        Length of the tracing example.
    verbose : bool
        Show the exporter's warnings and log messages (hidden by default, errors excepted).
    fingerprint : str, optional
        The fingerprint of the model's weights (``clf.fingerprint``), recorded in the
        metadata so that a classifier can refuse a graph exported from another model.

    Notes
    -----
    The caller's weights are shared, not copied, and written one tensor at a time, so the
    export needs little memory beyond the loaded model; time and peak memory of the full-size
    export are measured by ``benchmarks/onnx_export_memory.py`` (figures in docs/speed.md).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opset = DEFAULT_OPSET if opset is None else int(opset)
    packed = unpack_linear_weights(model)  # the clone shares the plain weights (one copy)
    try:
        return _export(model, path, labels, gender_probabilities, opset, dynamo,
                       attn_implementation, example_seconds, verbose, fingerprint)
    finally:
        if packed:  # the inference classifier's packed Linear weights, packed again
            gc.collect()  # once the exporter's clone, which shares their storage, is gone
            for layer in packed:
                layer.pack()


def _export(model, path: Path, labels, gender_probabilities: bool, opset: int, dynamo: bool,
            attn_implementation: str, example_seconds: float, verbose: bool,
            fingerprint: str | None) -> Path:
    module = _export_clone(model).eval()
    _fold_weight_norm(module)
    plain_torch_modules(module)  # the plain wav2vec2 modules: plain MatMul in the graph
    for sub in module.modules():
        if hasattr(sub, "set_attention"):
            sub.set_attention(attn_implementation)
    module = OnnxExportAdapter(module, gender_probabilities=gender_probabilities).eval()
    names = output_names(gender_probabilities)
    meta = export_metadata(labels, gender_probabilities, fingerprint)

    n = max(MIN_SAMPLES, int(round(example_seconds * SAMPLE_RATE)))
    example = (torch.randn(1, n, generator=torch.Generator().manual_seed(0)),)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        with quiet_exporter(verbose):
            if dynamo:
                _export_dynamo(module, example, tmp, path.name, opset, names, meta, verbose)
            else:
                _export_torchscript(module, example, tmp, opset, names, verbose)
                _append_metadata(tmp, meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _export_dynamo(module, example, tmp: Path, final_name: str, opset: int, names, meta,
                   verbose: bool) -> None:
    """torch.export-based exporter; weights streamed to the file one tensor at a time."""
    import onnx_ir as ir

    time_dim = torch.export.Dim("time", min=MIN_SAMPLES, max=SAMPLE_RATE * 3600)
    program = torch.onnx.export(
        module, example, dynamo=True, opset_version=opset,
        input_names=[INPUT_NAME], output_names=names,
        dynamic_shapes=({1: time_dim},), optimize=True, verbose=verbose,
    )
    model = program.model
    model.metadata_props.update(meta)
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values()
                  if v.const_value is not None)
    if weights > INLINE_LIMIT_BYTES:
        ir.save(model, tmp, external_data=f"{final_name}.data")
    else:
        _save_streaming(model, tmp)


def _save_streaming(model, path: Path) -> None:
    """Write an ``onnx_ir`` model as one ``.onnx`` file without building it in memory.

    ``onnx_ir.save`` (and ``ONNXProgram.save``) serialise the whole ``ModelProto`` (a copy of
    every weight) and then its bytes (another copy): +2.5 GB for the 24-layer model. Here
    the graph is written without its initializers, then each initializer as a separate
    ``ModelProto{graph{initializer}}`` message. Protobuf parses concatenated messages as
    their merge (repeated fields appended, nested messages merged), so the file reads back as
    the one complete model, for ``onnx.load`` and ONNX Runtime alike.
    """
    import onnx
    import onnx_ir as ir

    initializers = dict(model.graph.initializers)
    model.graph.initializers.clear()
    try:
        head = ir.serde.serialize_model(model)
    finally:
        model.graph.initializers.update(initializers)
    with open(path, "wb") as fout:
        fout.write(head.SerializeToString())
        del head
        for name, value in initializers.items():
            if value.const_value is None:
                raise ValueError(f"{path}: initializer {name!r} has no value")
            piece = onnx.ModelProto()
            value.const_value.name = name
            ir.serde.serialize_tensor_into(piece.graph.initializer.add(), value.const_value)
            fout.write(piece.SerializeToString())


def _export_torchscript(module, example, tmp: Path, opset: int, names, verbose: bool) -> None:
    """The TorchScript exporter (``dynamo=False``)."""
    torch.onnx.export(
        module, example, str(tmp), dynamo=False, opset_version=opset,
        input_names=[INPUT_NAME], output_names=names,
        dynamic_axes={INPUT_NAME: {1: "time"}}, do_constant_folding=True,
        verbose=verbose,
    )


def _append_metadata(path: Path, meta: dict, skip_present: bool = False) -> None:
    """Add ``meta`` to an ONNX file's ``metadata_props`` by appending to the file.

    A serialised ``ModelProto`` holding only ``metadata_props``, appended to the file, merges
    into the model when parsed (protobuf concatenation semantics): no copy of the model is
    made. ``skip_present=True`` first reads the file to leave keys it already has as they are
    (ONNX forbids duplicate keys).
    """
    import onnx

    if skip_present:
        present = {p.key for p in onnx.load(str(path), load_external_data=False).metadata_props}
        meta = {k: v for k, v in meta.items() if k not in present}
    piece = onnx.ModelProto()
    for key, value in meta.items():
        entry = piece.metadata_props.add()
        entry.key, entry.value = key, value
    with open(path, "ab") as fout:
        fout.write(piece.SerializeToString())


def quantize_onnx_dynamic(src: str | os.PathLike, dst: str | os.PathLike,
                          verbose: bool = False) -> Path:
    """int8 dynamic quantisation of the MatMul weights (``onnxruntime.quantization``).

    Faster on CPU and a quarter of the size, less exact (docs/speed.md; check on your data
    before relying on it). The metadata of
    ``src`` (labels, what the outputs hold) is carried over. The quantiser's advice logged on
    the root logger ("Please consider to run pre-processing ...") is hidden unless ``verbose``.
    """
    import_onnxruntime()
    import onnx
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.partial")
    try:
        with quiet_exporter(verbose), _quiet_root_records("onnxruntime", verbose):
            quantize_dynamic(
                str(src),
                str(tmp),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
                # needed for graphs from onnxruntime.transformers.optimizer (com.microsoft ops
                # defeat shape inference: "Unable to find data type for weight_name=...")
                extra_options={"DefaultTensorType": TensorProto.FLOAT},
            )
        _append_metadata(tmp, {p.key: p.value for p in
                               onnx.load(str(src), load_external_data=False).metadata_props},
                         skip_present=True)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


@contextlib.contextmanager
def _quiet_root_records(package: str, verbose: bool = False):
    """Drop root-logger records below ERROR emitted from ``package``'s files, for this block.

    For libraries that call ``logging.warning(...)`` directly (the root logger), where raising
    a named logger's level cannot reach them; everything else logged meanwhile passes.
    """
    if verbose:
        yield
        return
    marker = f"{os.sep}{package}{os.sep}"

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or marker not in record.pathname

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)

