"""The ONNX Runtime backend: a session over an exported graph (ours or audEERING's), and
:class:`OnnxModel`, which takes the torch model's place in a classifier.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agegender_sb.audio import AudioError, check_signal, relative_to_samples
from agegender_sb.errors import CheckpointError

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "PROBS_OUTPUT",
    "OnnxAgeGender",
    "OnnxModel",
    "import_onnxruntime",
    "release_weights",
    "graph_fingerprint",
    "META_MODEL",
]

INPUT_NAME = "signal"
#: audEERING's output names, in order.
OUTPUT_NAMES = ("hidden_states", "logits_age", "logits_gender")
#: The extra output of ``export_onnx(..., gender_probabilities=True)``.
PROBS_OUTPUT = "probs_gender"

META_PREFIX = "agegender_sb."
META_LABELS = META_PREFIX + "labels"
META_GENDER = META_PREFIX + "logits_gender"
#: Fingerprint of the weights a graph was exported from (graphs of version 0.3 on).
META_MODEL = META_PREFIX + "model_fingerprint"

_ONNX_EXTRA_HINT = 'install the ONNX extra: pip install "agegender_sb[onnx]"'
# --------------------------------------------------------------------------------------
# onnxruntime side
# --------------------------------------------------------------------------------------


def import_onnxruntime():
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as err:
        raise ImportError(
            "The ONNX Runtime backend needs the 'onnxruntime' package, which is not "
            f"installed; {_ONNX_EXTRA_HINT}"
        ) from err



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
    prepack : bool
        Let ONNX Runtime pre-pack the MatMul weights (``session.disable_prepacking`` off):
        somewhat faster, but the session then holds a second, packed copy of the weights.
        Off by default, so that the ONNX backend needs no more memory than the torch one.

    Attributes
    ----------
    labels : tuple of str or None
        Gender labels from the file's metadata (None for files without it, e.g. audEERING's).
    gender_output : str
        What ``logits_gender`` holds: ``"logits"`` (audEERING's convention, ours, and the
        reading of files without our metadata) or ``"probabilities"`` (files of the previous
        version whose metadata says so).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The graph lacks audEERING's outputs, or the metadata says something unknown about
        ``logits_gender`` (the message names the file).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: list[Any] | None = None,
        threads: int | None = None,
        prepack: bool = False,
    ):
        ort = import_onnxruntime()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.disable_prepacking", "0" if prepack else "1")
        self.session_options = so
        if threads is not None:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=so,
                providers=providers or ["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own types: InvalidProtobuf, Fail, ...
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{self.path}: not a readable ONNX graph ({reason})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        missing = [name for name in OUTPUT_NAMES if name not in self.output_names]
        if missing:
            raise ValueError(f"{self.path}: not an age/gender graph (no {', '.join(missing)})")
        meta = self.session.get_modelmeta().custom_metadata_map
        labels = meta.get(META_LABELS)
        self.labels = tuple(labels.split(",")) if labels else None
        self.gender_output = meta.get(META_GENDER, "logits")  # audEERING's: raw logits
        self.exported_from = meta.get(META_MODEL)  # None: not recorded (audEERING's, 0.2)
        if self.gender_output not in ("logits", "probabilities"):
            raise ValueError(f"{self.path}: metadata {META_GENDER}={self.gender_output!r}, "
                             "expected 'logits' or 'probabilities'")

    @property
    def outputs_probabilities(self) -> bool:
        """Whether ``logits_gender`` holds probabilities (previous version's default export)."""
        return self.gender_output == "probabilities"

    def __call__(self, wav: np.ndarray) -> dict[str, np.ndarray]:
        """Raw 16 kHz mono ``[T]`` or ``[1, T]`` → dict of the graph's outputs, as stored."""
        x = np.asarray(wav, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[0] != 1:
            raise AudioError(f"signal: expected shape [T] or [1, T], got {tuple(x.shape)}")
        check_signal(torch.from_numpy(x[0]), "signal")
        outs = self.session.run(self.output_names, {self.input_name: x})
        return dict(zip(self.output_names, outs))

    def gender_logits(self, outputs: dict[str, np.ndarray]) -> torch.Tensor:
        """The gender logits ``[1, n]`` from :meth:`__call__`'s outputs, by the file's convention.

        Files whose ``logits_gender`` holds probabilities give their ``log``: logits up to an
        additive constant per row (the softmax is unchanged).
        """
        gender = torch.from_numpy(np.asarray(outputs["logits_gender"])).float()
        if self.outputs_probabilities:
            gender = torch.log(gender.clamp(min=torch.finfo(torch.float32).tiny))
        return gender

    def forward(self, wav: np.ndarray):
        """One utterance → :class:`~agegender_sb.model.network.ModelOutput` (batch of 1, CPU
        tensors).
        """
        from agegender_sb.model.network import ModelOutput

        out = self(wav)
        return ModelOutput(
            age=torch.from_numpy(out["logits_age"]).float().reshape(-1),
            gender_logits=self.gender_logits(out),
            embedding=torch.from_numpy(out["hidden_states"]).float(),
        )


class OnnxModel(nn.Module):
    """ONNX Runtime in place of :class:`~agegender_sb.model.network.AgeGenderModel`: same
    call, no torch model.

    ``model(wavs [batch, time], wav_lens [batch] or None) -> ModelOutput(age [batch],
    gender_logits [batch, n], embedding [batch, H])``: each row's valid samples
    (:func:`agegender_sb.audio.relative_to_samples`) go through the ``[1, T]`` graph unpadded,
    and the results are stacked, so a padded batch gives what the torch model gives (and what
    each utterance gives alone). Outputs are float32 on ``wavs``' device; gender logits follow
    the file's convention (:class:`OnnxAgeGender`).

    It is an ``nn.Module`` without parameters, so it can replace the torch model in a
    classifier's ``mods`` (``.to()``, ``.eval()`` are no-ops): ``AgeGenderClassifier(...,
    backend="onnx")`` builds one and drops the torch weights (:func:`release_weights`), so
    the backend holds one copy of the model (``benchmarks/onnx_export_memory.py --backends
    torch onnx`` compares the two; figures in docs/speed.md).

    Parameters
    ----------
    source : str, PathLike or OnnxAgeGender
        The ``.onnx`` file, or an open session.
    providers, threads, prepack
        As for :class:`OnnxAgeGender` (used when ``source`` is a path).

    Attributes
    ----------
    session : OnnxAgeGender
    labels : tuple of str or None
        From the file's metadata.
    """

    def __init__(self, source, providers: list[Any] | None = None, threads: int | None = None,
                 prepack: bool = False):
        super().__init__()
        self.session = (source if isinstance(source, OnnxAgeGender) else
                        OnnxAgeGender(source, providers=providers, threads=threads,
                                      prepack=prepack))
        self.labels = self.session.labels
        #: Fingerprint of the model the graph records being exported from (None: not recorded).
        self.exported_from = self.session.exported_from

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None):
        from agegender_sb.model.network import ModelOutput

        if not isinstance(wavs, torch.Tensor) or wavs.dim() != 2:
            shape = tuple(wavs.shape) if hasattr(wavs, "shape") else type(wavs).__name__
            raise AudioError(f"wavs: expected a [batch, time] tensor, got {shape}")
        batch, max_len = wavs.shape
        if batch == 0:
            raise AudioError("wavs: empty batch")
        if wav_lens is None:
            lengths = [max_len] * batch
        else:
            if tuple(wav_lens.shape) != (batch,):
                raise AudioError(f"wav_lens: expected shape ({batch},), got "
                                 f"{tuple(wav_lens.shape)}")
            lengths = relative_to_samples(wav_lens.detach().cpu(), max_len).tolist()
        rows = wavs.detach().float().cpu().numpy()
        outs = [self.session.forward(rows[i, :n]) for i, n in enumerate(lengths)]
        return ModelOutput(*(torch.cat(parts).to(wavs.device) for parts in zip(*outs)))


def release_weights(module: nn.Module) -> int:
    """Free the storage of every parameter and buffer of ``module``; return the bytes freed.

    For a classifier switching to :class:`OnnxModel`: the torch model is referenced from
    several places (``mods``, ``hparams``, the pretrainer), so dropping one reference frees
    nothing; emptying the tensors frees their memory wherever the module is still referenced.
    The module is unusable afterwards.

    Example
    -------
    >>> lin = nn.Linear(1000, 1000)
    >>> release_weights(lin), lin.weight.numel()
    (4004000, 0)
    """
    freed = 0
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            freed += tensor.numel() * tensor.element_size()
            empty = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
            if tensor.is_mkldnn:  # a packed Linear weight (backends.fast_linear)
                torch.utils.swap_tensors(tensor, nn.Parameter(empty, requires_grad=False))
            else:
                tensor.data = empty
    return freed


def graph_fingerprint(path: str | os.PathLike) -> str:
    """Short hash of an ONNX graph's bytes (and of ``<graph>.data`` beside it, where its
    weights live for big models): names the graph in a table's record."""
    import hashlib

    digest = hashlib.sha256()
    graph = Path(path)
    for part in (graph, graph.with_name(graph.name + ".data")):
        if part.is_file():
            with open(part, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]
