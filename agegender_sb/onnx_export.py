"""ONNX export and ONNX Runtime inference for the wav2vec2 age/gender model.

The exported graph follows the interface of audEERING's published ONNX export of
``wav2vec2-large-robust-24-ft-age-gender``:

* one input, ``signal`` ``[1, T]`` float32: raw 16 kHz mono audio, **not** normalised
  (the per-utterance normalisation ``(x - mean) / sqrt(var + 1e-7)`` of transformers'
  ``Wav2Vec2FeatureExtractor`` is part of the graph); ``T`` is dynamic (``T >= 400``);
* three outputs: ``hidden_states`` ``[1, H]`` (time-pooled last layer),
  ``logits_age`` ``[1, 1]`` (age / 100, roughly 0..1) and ``logits_gender`` ``[1, 3]``
  (female, male, child).

As in audEERING's model card (whose ``forward`` applies ``softmax`` to the gender head),
``logits_gender`` holds **probabilities** by default, despite its name, so tools written
for audEERING's export (``audonnx``) read our file the same way.  Pass
``gender_probabilities=False`` to :func:`export_onnx` to get raw logits instead.

Usage::

    from agegender_sb.onnx_export import OnnxAgeGender, export_onnx

    export_onnx(model, "age_gender.onnx")        # model: torch module, see below
    sess = OnnxAgeGender("age_gender.onnx")
    out = sess(wav)                               # wav: np.ndarray [T] or [1, T], 16 kHz
    age_years = 100 * out["logits_age"][0, 0]

``onnxruntime`` is only needed for :class:`OnnxAgeGender` (``pip install
"agegender_sb[onnx]"``); exporting needs ``onnx`` and, for the default dynamo exporter,
``onnxscript``.
"""

from __future__ import annotations

import copy
import importlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "AgeGenderHead",
    "OnnxAgeGender",
    "OnnxExportAdapter",
    "ReferenceAgeGenderModel",
    "export_onnx",
    "normalize_wav",
    "quantize_onnx_dynamic",
]

INPUT_NAME = "signal"
OUTPUT_NAMES = ("hidden_states", "logits_age", "logits_gender")
NORM_EPS = 1e-7
#: Shortest input the wav2vec2 feature encoder accepts (receptive field of the conv stack).
MIN_SAMPLES = 400
DEFAULT_OPSET = 18

_ONNX_EXTRA_HINT = 'install the ONNX extra: pip install "agegender_sb[onnx]"'


# --------------------------------------------------------------------------------------
# torch side
# --------------------------------------------------------------------------------------


def normalize_wav(wav: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Per-utterance zero mean / unit variance, as ``Wav2Vec2FeatureExtractor`` does.

    ``wav`` is ``[B, T]``; statistics run over ``T`` (population variance, ``ddof=0``).
    Idempotent up to ~1e-7, so normalising an already-normalised signal is harmless.
    """
    mean = wav.mean(dim=-1, keepdim=True)
    var = ((wav - mean) ** 2).mean(dim=-1, keepdim=True)
    return (wav - mean) / torch.sqrt(var + eps)


class AgeGenderHead(nn.Module):
    """audEERING's head: dropout -> Linear(H, H) -> tanh -> dropout -> Linear(H, n)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.0):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        x = torch.tanh(self.dense(x))
        x = self.dropout(x)
        return self.out_proj(x)


class _HFEncoder(nn.Module):
    """Holds the transformers model as ``.model`` (the real package's layout)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, wavs: torch.Tensor) -> torch.Tensor:
        return self.model(wavs).last_hidden_state


class ReferenceAgeGenderModel(nn.Module):
    """Small stand-in for the package's model, used for tests and benchmarks.

    Same submodule layout as the real one (``encoder.model`` is a transformers
    ``Wav2Vec2Model``; ``age_head`` / ``gender_head`` have ``dense`` / ``out_proj``) and the
    same forward contract: ``(wavs [B, T], wav_lens [B] | None) ->
    (age_raw [B], gender_logits [B, 3], embedding [B, H])``.  ``wavs`` are raw audio;
    normalisation happens here.  ``wav_lens`` is ignored (single-utterance use only).
    """

    def __init__(self, config: Any, attn_implementation: str | None = "eager"):
        super().__init__()
        from transformers import Wav2Vec2Model

        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        self.encoder = _HFEncoder(Wav2Vec2Model(config))
        h = config.hidden_size
        self.age_head = AgeGenderHead(h, 1, getattr(config, "final_dropout", 0.0))
        self.gender_head = AgeGenderHead(h, 3, getattr(config, "final_dropout", 0.0))

    def forward(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.encoder(normalize_wav(wavs))
        emb = hidden.mean(dim=1)
        return self.age_head(emb).squeeze(-1), self.gender_head(emb), emb


class OnnxExportAdapter(nn.Module):
    """Turns a package-style model into audEERING's ONNX signature.

    ``model(wavs [1, T], wav_lens [1]) -> (age_raw [1], gender_logits [1, 3], emb [1, H])``
    becomes ``forward(wav [1, T]) -> (hidden_states [1, H], logits_age [1, 1],
    logits_gender [1, 3])``.  ``model`` may be any module or callable with that contract.

    ``normalize=True`` normalises ``wav`` before calling ``model``; keep it on even if the
    model normalises by itself (normalisation is idempotent up to 1e-7), so the graph is
    correct for raw audio whatever the wrapped model does.
    ``gender_probabilities=True`` applies softmax, as audEERING's export does.
    """

    def __init__(
        self,
        model: nn.Module | Callable[..., Any],
        normalize: bool = True,
        gender_probabilities: bool = True,
    ):
        super().__init__()
        self.model = model
        self.normalize = normalize
        self.gender_probabilities = gender_probabilities

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.normalize:
            wav = normalize_wav(wav)
        # Relative lengths (SpeechBrain convention); batch size 1 -> full length.
        wav_lens = torch.ones(wav.shape[0], dtype=wav.dtype, device=wav.device)
        age_raw, gender_logits, emb = self.model(wav, wav_lens)
        gender = gender_logits
        if self.gender_probabilities:
            gender = torch.softmax(gender_logits, dim=-1)
        return emb, age_raw.reshape(-1, 1), gender


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


def _set_attn_implementation(module: nn.Module, impl: str) -> None:
    """Force a transformers attention implementation on every sub-config found."""
    for sub in module.modules():
        cfg = getattr(sub, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            try:
                cfg._attn_implementation = impl
            except Exception:  # pragma: no cover - read-only property in odd versions
                pass


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    opset: int | None = None,
    *,
    dynamo: bool = True,
    adapt: bool | None = None,
    normalize: bool = True,
    gender_probabilities: bool = True,
    attn_implementation: str | None = "eager",
    example_seconds: float = 2.0,
    verbose: bool = False,
) -> Path:
    """Export ``model`` to ONNX with audEERING's input/output names; return the path.

    ``model`` is either a package-style model (``forward(wavs, wav_lens) -> (age_raw,
    gender_logits, embedding)``; wrapped in :class:`OnnxExportAdapter`, which adds the
    normalisation and softmax) or, with ``adapt=False``, a module already having the
    signature ``forward(wav [1, T]) -> (hidden_states, logits_age, logits_gender)``.
    ``adapt=None`` adapts unless ``model`` is an :class:`OnnxExportAdapter` already.

    The model is deep-copied (the caller's module is untouched), put in eval mode on CPU,
    its weight-norm folded, and transformers attention forced to ``attn_implementation``
    (both "eager" and "sdpa" export with both exporters and give the same numbers; "eager"
    yields a plain MatMul/Softmax graph).  ``dynamo=True`` (default, needs ``onnxscript``)
    uses ``torch.onnx.export(dynamo=True)`` with a dynamic ``T`` axis (``Dim("time",
    min=400)``); ``dynamo=False`` uses the legacy TorchScript exporter with
    ``dynamic_axes``.  ``opset`` defaults to 18.  Full-size export (torch 2.14, dynamo):
    ~30 s, ~7 GB peak RSS, 1.2 GB file (fp32, single file, under protobuf's 2 GB limit).

    Measured on 2 CPU cores (``benchmarks/onnx_probe.py``): attention fusion by
    ``onnxruntime.transformers.optimizer`` does not match this graph and would not matter
    (Softmax < 1 % of ORT time; MatMul ~58 %, feature-encoder Conv ~14 %, Transpose ~8 %).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opset = DEFAULT_OPSET if opset is None else int(opset)

    if adapt is None:
        adapt = not isinstance(model, OnnxExportAdapter)
    module = copy.deepcopy(model).float().cpu().eval()
    _fold_weight_norm(module)
    if attn_implementation is not None:
        _set_attn_implementation(module, attn_implementation)
    if adapt:
        module = OnnxExportAdapter(
            module, normalize=normalize, gender_probabilities=gender_probabilities
        ).eval()
    for p in module.parameters():
        p.requires_grad_(False)

    n = max(MIN_SAMPLES, int(round(example_seconds * 16000)))
    example = (torch.randn(1, n, generator=torch.Generator().manual_seed(0)),)

    with warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
        if dynamo:
            time_dim = torch.export.Dim("time", min=MIN_SAMPLES, max=16000 * 3600)
            onnx_program = torch.onnx.export(
                module,
                example,
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({1: time_dim},),
                optimize=True,
                verbose=verbose,
                external_data=False,
            )
            onnx_program.save(str(path))
        else:
            torch.onnx.export(
                module,
                example,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={INPUT_NAME: {1: "time"}},
                do_constant_folding=True,
                verbose=verbose,
            )
    return path


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
    """int8 dynamic quantisation of MatMul weights (``onnxruntime.quantization``).

    Trades accuracy for speed/size (expect ~1e-2 abs differences); fp32 is the default.
    """
    _import_onnxruntime()
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        # needed for graphs from onnxruntime.transformers.optimizer (com.microsoft ops
        # defeat shape inference: "Unable to find data type for weight_name=...")
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
    return dst


class OnnxAgeGender:
    """ONNX Runtime session for an exported age/gender graph.

    ``__call__(wav)`` takes raw 16 kHz mono audio, ``np.ndarray`` ``[T]`` or ``[1, T]``
    (any float dtype; cast to float32), and returns a dict with ``hidden_states``
    ``[1, H]``, ``logits_age`` ``[1, 1]`` and ``logits_gender`` ``[1, 3]``.
    ``providers`` defaults to ``["CPUExecutionProvider"]``; ``threads`` sets
    ``intra_op_num_threads`` (default: ORT's choice, i.e. the physical cores).
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
        self.session = ort.InferenceSession(
            str(self.path), sess_options=so, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, wav: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(wav, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[0] != 1:
            raise ValueError(f"expected audio of shape [T] or [1, T], got {tuple(x.shape)}")
        if x.shape[1] < MIN_SAMPLES:
            raise ValueError(
                f"audio too short: {x.shape[1]} samples, need >= {MIN_SAMPLES} (25 ms at 16 kHz)"
            )
        outs = self.session.run(self.output_names, {self.input_name: x})
        return dict(zip(self.output_names, outs))
