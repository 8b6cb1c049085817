"""ONNX export and the ONNX Runtime backend.

The exported graph has the interface of audEERING's published ONNX export of
``wav2vec2-large-robust-24-ft-age-gender``, so tools built for theirs can take ours:

* one input, ``signal`` ``[1, T]`` float32: raw 16 kHz mono audio, **not** normalised (the
  per-utterance normalisation is part of the graph); ``T`` is dynamic (``T >= 400``);
* three outputs: ``hidden_states`` ``[1, H]`` (time-pooled last layer), ``logits_age``
  ``[1, 1]`` (age / 100) and ``logits_gender`` ``[1, n]`` in label order.

As in audEERING's model card (whose ``forward`` applies ``softmax`` to the gender head),
``logits_gender`` holds **probabilities** by default, despite its name;
``gender_probabilities=False`` exports raw logits. The file's metadata says which, and names
the labels. ``onnxruntime`` is needed only to run the graph (``pip install
"agegender_sb[onnx]"``); exporting needs ``onnx`` and ``onnxscript``.
"""

from __future__ import annotations

import copy
import importlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .audio import MIN_SAMPLES, AudioError, check_signal
from .fast_linear import use_onednn_linear

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "OnnxAgeGender",
    "OnnxExportAdapter",
    "export_onnx",
    "quantize_onnx_dynamic",
]

INPUT_NAME = "signal"
OUTPUT_NAMES = ("hidden_states", "logits_age", "logits_gender")
DEFAULT_OPSET = 18

_ONNX_EXTRA_HINT = 'install the ONNX extra: pip install "agegender_sb[onnx]"'


# --------------------------------------------------------------------------------------
# torch side
# --------------------------------------------------------------------------------------


class OnnxExportAdapter(nn.Module):
    """Give :class:`agegender_sb.model.AgeGenderModel` audEERING's ONNX signature.

    ``forward(signal [1, T]) -> (hidden_states [1, H], logits_age [1, 1], logits_gender [1, n])``
    runs the package's one forward path (which normalises the raw signal itself) without
    padding (``wav_lens=None``: one utterance per call, no data-dependent branches).
    ``gender_probabilities=True`` applies softmax to the gender head, as audEERING's export does.
    """

    def __init__(self, model: nn.Module, gender_probabilities: bool = True):
        super().__init__()
        self.model = model
        self.gender_probabilities = gender_probabilities

    def forward(self, signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(signal, None)
        gender = out.gender_logits
        if self.gender_probabilities:
            gender = torch.softmax(gender, dim=-1)
        return out.embedding, out.age.reshape(-1, 1), gender


def _fold_weight_norm(module: nn.Module) -> None:
    """Replace weight-norm (parametrization or legacy hook) by a plain weight, in place.

    wav2vec2's positional conv is weight-normed; folding it gives a simpler graph (one
    constant instead of norm/div/mul at every run) and avoids exporter corner cases.

    Pitfall: ``torch.nn.utils.parametrize.remove_parametrizations`` must NOT be used on a
    deep copy: ``copy.deepcopy`` shares the dynamically created ``Parametrized*`` class
    with the original, and ``remove_parametrizations`` deletes the ``weight`` property from
    that class, which breaks the *original* module ("'ParametrizedConv1d' object has no
    attribute 'weight'").  So the fold below only touches the instance.
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
                sub.register_parameter(hook.name, nn.Parameter(value, requires_grad=False))


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    labels: tuple[str, ...] | list[str] = ("female", "male", "child"),
    *,
    gender_probabilities: bool = True,
    opset: int | None = None,
    dynamo: bool = True,
    attn_implementation: str = "eager",
    example_seconds: float = 2.0,
    verbose: bool = False,
) -> Path:
    """Export an :class:`~agegender_sb.model.AgeGenderModel` to ONNX; return the path.

    The graph takes ``signal`` ``[1, T]`` (raw 16 kHz mono float32; normalisation inside,
    ``T`` dynamic, ``T >= 400``) and returns ``hidden_states``, ``logits_age`` and
    ``logits_gender``, the names of audEERING's published export. The file's metadata records
    the gender labels (``agegender_sb.labels``, comma-separated, output order) and whether
    ``logits_gender`` holds probabilities (``agegender_sb.logits_gender``:
    ``probabilities`` or ``logits``).

    Parameters
    ----------
    model : torch.nn.Module
        ``(wavs, wav_lens) -> ModelOutput``; deep-copied, the caller's module is untouched.
    path : str or PathLike
        Output ``.onnx`` file (written to a temporary name first, then renamed).
    labels : sequence of str
        Gender labels in output order, stored in the metadata.
    gender_probabilities : bool
        Softmax on the gender output, as audEERING's export (default); False keeps logits.
    opset : int, optional
        ONNX opset (default 18).
    dynamo : bool
        ``torch.onnx.export(dynamo=True)`` (default, needs ``onnxscript``); False uses the
        TorchScript exporter.
    attn_implementation : str
        transformers attention used while tracing; ``"eager"`` yields plain MatMul/Softmax.
    example_seconds : float
        Length of the tracing example.
    verbose : bool
        Show exporter warnings.

    Notes
    -----
    Full-size export (24 layers, torch 2.14, dynamo) takes about 30 s and 7 GB of RAM and
    writes a 1.2 GB file.
    """

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opset = DEFAULT_OPSET if opset is None else int(opset)

    module = copy.deepcopy(model).float().cpu().eval()
    _fold_weight_norm(module)
    use_onednn_linear(module, enabled=False)  # plain MatMul in the graph
    for sub in module.modules():
        if hasattr(sub, "set_attention"):
            sub.set_attention(attn_implementation)
    module = OnnxExportAdapter(module, gender_probabilities=gender_probabilities).eval()
    for p in module.parameters():
        p.requires_grad_(False)

    n = max(MIN_SAMPLES, int(round(example_seconds * 16000)))
    example = (torch.randn(1, n, generator=torch.Generator().manual_seed(0)),)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        _export_to(module, example, tmp, opset, dynamo, verbose)
        _add_metadata(tmp, {
            "agegender_sb.labels": ",".join(labels),
            "agegender_sb.logits_gender": "probabilities" if gender_probabilities else "logits",
        })
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _add_metadata(path: Path, meta: dict) -> None:
    """Add ``meta`` to an ONNX file's metadata (keys already present are kept as they are)."""
    import onnx

    proto = onnx.load(str(path))
    present = {p.key for p in proto.metadata_props}
    for key, value in meta.items():
        if key not in present:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _export_to(module, example, tmp: Path, opset: int, dynamo: bool, verbose: bool) -> None:
    """Run torch's ONNX exporter (dynamo or TorchScript) into ``tmp``."""
    with warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
        if dynamo:
            time_dim = torch.export.Dim("time", min=MIN_SAMPLES, max=16000 * 3600)
            program = torch.onnx.export(
                module, example, dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({1: time_dim},), optimize=True, verbose=verbose,
                external_data=False,
            )
            program.save(str(tmp))
        else:
            torch.onnx.export(
                module, example, str(tmp), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_axes={INPUT_NAME: {1: "time"}}, do_constant_folding=True,
                verbose=verbose,
            )


# --------------------------------------------------------------------------------------
# onnxruntime side
# --------------------------------------------------------------------------------------


def _import_onnxruntime():
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as err:
        raise ImportError(
            "The ONNX Runtime backend needs the 'onnxruntime' package, which is not "
            f"installed; {_ONNX_EXTRA_HINT}"
        ) from err


def quantize_onnx_dynamic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """int8 dynamic quantisation of the MatMul weights (``onnxruntime.quantization``).

    Faster on CPU and a quarter of the size, less exact (measured with random full-size weights:
    ~1e-2 on the age output; check on your data before relying on it). The metadata of
    ``src`` (labels, gender output kind) is carried over.
    """
    _import_onnxruntime()
    import onnx
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.partial")
    try:
        quantize_dynamic(
            str(src),
            str(tmp),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            # needed for graphs from onnxruntime.transformers.optimizer (com.microsoft ops
            # defeat shape inference: "Unable to find data type for weight_name=...")
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
        _add_metadata(tmp, {p.key: p.value for p in
                            onnx.load(str(src), load_external_data=False).metadata_props})
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


class OnnxAgeGender:
    """ONNX Runtime session for an exported age/gender graph (ours or audEERING's).

    Parameters
    ----------
    path : str or PathLike
        The ``.onnx`` file.
    providers : list, optional
        ONNX Runtime execution providers (default ``["CPUExecutionProvider"]``).
    threads : int, optional
        ``intra_op_num_threads`` (default: ONNX Runtime's choice, the physical cores).

    Attributes
    ----------
    labels : tuple of str or None
        Gender labels from the file's metadata (None for files without it).
    outputs_probabilities : bool
        Whether ``logits_gender`` holds probabilities (audEERING's convention; assumed for
        files without our metadata).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: list[Any] | None = None,
        threads: int | None = None,
    ):
        ort = _import_onnxruntime()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads is not None:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        self.session = ort.InferenceSession(
            str(self.path), sess_options=so, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        missing = set(OUTPUT_NAMES) - set(self.output_names)
        if missing:
            raise ValueError(f"{self.path}: not an age/gender graph (no {', '.join(missing)})")
        meta = self.session.get_modelmeta().custom_metadata_map
        labels = meta.get("agegender_sb.labels")
        self.labels = tuple(labels.split(",")) if labels else None
        self.outputs_probabilities = meta.get("agegender_sb.logits_gender",
                                              "probabilities") == "probabilities"

    def __call__(self, wav: np.ndarray) -> dict[str, np.ndarray]:
        """Raw 16 kHz mono ``[T]`` or ``[1, T]`` → dict of the three outputs."""
        x = np.asarray(wav, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[0] != 1:
            raise AudioError(f"signal: expected shape [T] or [1, T], got {tuple(x.shape)}")
        check_signal(torch.from_numpy(x[0]), "signal")
        outs = self.session.run(self.output_names, {self.input_name: x})
        return dict(zip(self.output_names, outs))

    def forward(self, wav: np.ndarray):
        """One utterance → :class:`~agegender_sb.model.ModelOutput` (batch of 1, CPU tensors).

        Gender probabilities are turned back into logits with ``log`` (logits up to an additive
        constant, so the softmax is unchanged).
        """
        from .model import ModelOutput

        out = self(wav)
        gender = torch.from_numpy(out["logits_gender"]).float()
        if self.outputs_probabilities:
            gender = torch.log(gender.clamp(min=torch.finfo(torch.float32).tiny))
        return ModelOutput(
            age=torch.from_numpy(out["logits_age"]).float().reshape(-1),
            gender_logits=gender,
            embedding=torch.from_numpy(out["hidden_states"]).float(),
        )
