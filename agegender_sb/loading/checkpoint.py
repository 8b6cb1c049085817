"""Tensors only: the key table, weight-norm folding, strict loading, lazy tensors.

audEERING publish their age/gender models as a transformers folder: ``config.json``,
``model.safetensors`` and/or ``pytorch_model.bin``, ``preprocessor_config.json``. Their tensors
are named after the model card's ``AgeGenderModel``: ``wav2vec2.*``, ``age.*``, ``gender.*``.
This module maps those names onto our modules with one table (:data:`KEY_PREFIXES`), folds
the two spellings of the positional convolution's weight norm in one place
(:func:`fold_weight_norm`), and refuses anything but an exact match (:func:`load_strict`):
every tensor present, with its shape, floating point where the model's is, and finite.
Where the files come from and what the architecture is: :mod:`agegender_sb.loading.sources` and
:mod:`agegender_sb.loading.config`. This module imports nothing else of the package.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import torch

from agegender_sb.errors import CheckpointError

__all__ = [
    "KEY_PREFIXES",
    "WEIGHT_NORM_SPELLINGS",
    "WEIGHT_FILES",
    "CheckpointError",
    "fold_weight_norm",
    "load_strict",
    "load_file_strict",
    "LazyTensor",
    "load_state_dict_file",
    "split_audeering_state_dict",
    "PRETRAINING_ONLY_PREFIXES",
    "wav2vec2_encoder_state_dict",
    "load_wav2vec2_encoder",
    "fingerprint",
]

#: Checkpoint key prefix → (our module, prefix inside that module).
KEY_PREFIXES = {
    "wav2vec2.": ("encoder", "model."),
    "age.": ("age_head", ""),
    "gender.": ("gender_head", ""),
}

#: Weight-norm tensor names: older transformers/torch (as in audEERING's files) → newer
#: ``torch.nn.utils.parametrizations.weight_norm``.
WEIGHT_NORM_SPELLINGS = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
}

#: Weight files of a transformers folder, in order of preference.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def fold_weight_norm(state_dict: dict, target_keys) -> dict:
    """Rename weight-norm tensors to the spelling ``target_keys`` uses.

    Parameters
    ----------
    state_dict : dict
        Tensors named in either spelling of :data:`WEIGHT_NORM_SPELLINGS`.
    target_keys : iterable of str
        The keys of the module that will receive them.

    Returns
    -------
    dict
        A new dict; keys that need no renaming are kept as they are.

    Example
    -------
    >>> sd = {"conv.weight_g": 1, "conv.weight_v": 2, "conv.bias": 3}
    >>> target = ["conv.parametrizations.weight.original0",
    ...           "conv.parametrizations.weight.original1", "conv.bias"]
    >>> for key in sorted(fold_weight_norm(sd, target)):
    ...     print(key)
    conv.bias
    conv.parametrizations.weight.original0
    conv.parametrizations.weight.original1
    """
    target_keys = set(target_keys)
    out = {}
    for key, value in state_dict.items():
        new_key = key
        if key not in target_keys:
            for old, new in WEIGHT_NORM_SPELLINGS.items():
                if key.endswith("." + old) and key[: -len(old)] + new in target_keys:
                    new_key = key[: -len(old)] + new
                elif key.endswith("." + new) and key[: -len(new)] + old in target_keys:
                    new_key = key[: -len(new)] + old
        out[new_key] = value
    return out


def load_strict(module: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Load every tensor into ``module``, or raise :class:`CheckpointError` naming the problem.

    Weight-norm spellings are folded first. Missing, unexpected and mis-shaped tensors are
    all reported in one message.

    Parameters
    ----------
    module : torch.nn.Module
    state_dict : dict
    source : str
        Where the tensors came from, for the message.

    Example
    -------
    >>> lin = torch.nn.Linear(2, 2)
    >>> load_strict(lin, {"weight": torch.zeros(2, 2)}, "demo")
    Traceback (most recent call last):
    ...
    agegender_sb.errors.CheckpointError: demo does not match Linear: missing: bias
    """
    own = module.state_dict()
    state_dict = fold_weight_norm(state_dict, own.keys())
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)})"
        for k in set(own) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    problems = [
        f"{what}: {', '.join(keys)}"
        for what, keys in (("missing", missing), ("unexpected", unexpected),
                           ("wrong shape", shapes))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"{source} does not match {type(module).__name__}: " + "; ".join(problems)
        )
    # One tensor at a time: a lazily read file never needs a second copy of the model.
    targets = module.state_dict(keep_vars=True)
    with torch.no_grad():
        for key, value in state_dict.items():
            if isinstance(value, LazyTensor):
                value = value.load()
            _check_values(value, targets[key], f"{source}: tensor {key}")
            targets[key].copy_(value)


def _check_values(value, target: torch.Tensor, name: str) -> None:
    """Refuse a tensor that would be cast silently or would poison every output."""
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{name} is a {type(value).__name__}, not a tensor")
    if target.is_floating_point():
        if not value.is_floating_point():
            raise CheckpointError(f"{name} holds {value.dtype} values where the model has "
                                  f"{target.dtype}: not a float checkpoint")
        if bool(torch.isfinite(value.sum())):  # a NaN or an infinity makes the sum one
            return  # 0.05 s for the 24-layer model, against 1.7 s counting value by value
        bad = int((~torch.isfinite(value)).sum())  # or finite values whose sum overflows
        if bad:
            raise CheckpointError(f"{name} holds {bad} NaN or infinite value(s)")


def load_file_strict(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load one module's tensor file strictly (SpeechBrain ``Pretrainer`` custom hook).

    Model folders declare it in their ``pretrainer`` (``custom_hooks``), so that
    SpeechBrain's own loading is as strict as this package's.
    """
    load_strict(module, load_state_dict_file(path), str(path))


def fingerprint(modules: dict, extra=()) -> str:
    """Short hash identifying a model's weights (and ``extra`` strings, e.g. the labels).

    Names, shapes and dtypes of every tensor, all values of small tensors and a fixed stride
    of at most 65,536 values of large ones: any two real checkpoints differ in it, and the
    24-layer model is hashed in well under a second.

    Example
    -------
    >>> a, b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    >>> fingerprint({"m": a}) == fingerprint({"m": a})
    True
    >>> fingerprint({"m": a}) == fingerprint({"m": b})
    False
    """
    digest = hashlib.sha256()
    for text in extra:
        digest.update(str(text).encode("utf-8") + b"\0")
    for prefix, module in modules.items():
        for name, tensor in module.state_dict().items():
            flat = tensor.detach().cpu().reshape(-1)
            step = max(1, flat.numel() // 65536)
            digest.update(f"{prefix}.{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(flat[::step].contiguous().float().numpy().tobytes())
    return digest.hexdigest()[:16]


class LazyTensor:
    """A tensor of a safetensors file, read when :meth:`load` is called (shape known before).

    :func:`load_strict` checks names and shapes first and then reads the tensors one by one,
    each through its own short-lived memory map, so loading a checkpoint needs the model's
    memory plus one tensor, not the model plus the whole file.
    """

    def __init__(self, shape, key: str, path: Path):
        self.shape, self.key, self.path = torch.Size(shape), key, path

    def load(self) -> torch.Tensor:
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as handle:
                return handle.get_tensor(self.key).clone()
        except Exception as err:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{self.path}: cannot read tensor {self.key} ({err})") from err


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """Tensors of ``*.safetensors`` (as :class:`LazyTensor`) or of a torch pickle.

    Pickles are read with ``weights_only=True``: no code is run.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                return {key: LazyTensor(handle.get_slice(key).get_shape(), key, path)
                        for key in handle.keys()}
        except Exception as err:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise CheckpointError(
            f"{path}: cannot be loaded as plain tensors (torch.load weights_only=True): {err}"
        ) from err


def split_audeering_state_dict(state_dict: dict, source: str = "checkpoint") -> dict:
    """Split audEERING's flat state dict into ``{module: state dict}`` by :data:`KEY_PREFIXES`.

    Raises
    ------
    CheckpointError
        For tensors that belong to none of our modules.

    Example
    -------
    >>> parts = split_audeering_state_dict({"wav2vec2.masked_spec_embed": 0, "age.dense.bias": 1})
    >>> parts["encoder"], parts["age_head"], parts["gender_head"]
    ({'model.masked_spec_embed': 0}, {'dense.bias': 1}, {})
    """
    parts: dict[str, dict] = {name: {} for name, _ in KEY_PREFIXES.values()}
    unknown = []
    for key, value in state_dict.items():
        for prefix, (module, inner) in KEY_PREFIXES.items():
            if key.startswith(prefix):
                parts[module][inner + key[len(prefix):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{source}: unexpected tensors outside wav2vec2./age./gender.: {', '.join(unknown)}"
        )
    return parts


#: Tensors of a ``Wav2Vec2ForPreTraining`` checkpoint that only pre-training uses (the
#: quantiser and the contrastive projections); a plain encoder init ignores them.
PRETRAINING_ONLY_PREFIXES = ("quantizer.", "project_hid.", "project_q.")


def wav2vec2_encoder_state_dict(state_dict: dict, source: str = "checkpoint") -> dict:
    """The ``Wav2Vec2Model`` tensors of a plain wav2vec2 checkpoint, keyed for our encoder.

    Accepts a ``Wav2Vec2ForPreTraining`` / ``Wav2Vec2Model`` state dict with ``wav2vec2.``
    prefixes (pre-training-only tensors, :data:`PRETRAINING_ONLY_PREFIXES`, are dropped), or
    unprefixed ``Wav2Vec2Model`` keys. Keys are returned with the encoder's ``model.`` prefix.

    Raises
    ------
    CheckpointError
        For any other tensor (e.g. a CTC ``lm_head`` or age/gender heads).

    Example
    -------
    >>> sd = {"wav2vec2.masked_spec_embed": 0, "quantizer.codevectors": 1, "project_q.bias": 2}
    >>> wav2vec2_encoder_state_dict(sd)
    {'model.masked_spec_embed': 0}
    >>> wav2vec2_encoder_state_dict({"encoder.layer_norm.bias": 0, "lm_head.bias": 1})
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    agegender_sb.errors.CheckpointError: ...plain wav2vec2 checkpoint: lm_head.bias
    """
    prefixed = any(k.startswith("wav2vec2.") for k in state_dict)
    out, unknown = {}, []
    for key, value in state_dict.items():
        if key.startswith(PRETRAINING_ONLY_PREFIXES):
            continue
        if prefixed:
            if not key.startswith("wav2vec2."):
                unknown.append(key)
                continue
            key = key[len("wav2vec2."):]
        elif not key.startswith(("feature_extractor.", "feature_projection.", "encoder.",
                                 "masked_spec_embed", "adapter.")):
            unknown.append(key)
            continue
        out["model." + key] = value
    if unknown:
        raise CheckpointError(
            f"{source}: unexpected tensors in a plain wav2vec2 checkpoint: {', '.join(unknown)}"
        )
    return out


def load_wav2vec2_encoder(encoder: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Strictly load a plain wav2vec2 checkpoint (no heads) into a ``Wav2Vec2Encoder``.

    Every encoder tensor must be present with its shape; only the tensors listed in
    :data:`PRETRAINING_ONLY_PREFIXES` may be left over (see
    :func:`wav2vec2_encoder_state_dict`). The heads are not touched.

    Raises
    ------
    CheckpointError
        Naming missing, unexpected or mis-shaped tensors.
    """
    load_strict(encoder, wav2vec2_encoder_state_dict(state_dict, source), source)
