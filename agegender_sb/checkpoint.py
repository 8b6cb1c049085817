"""audEERING-layout checkpoints ↔ our modules: key table, strict loading, conversion.

audEERING publish their age/gender models as a transformers folder: ``config.json``,
``model.safetensors`` and/or ``pytorch_model.bin``, ``preprocessor_config.json``. Their tensors
are named after the model card's ``AgeGenderModel``: ``wav2vec2.*``, ``age.*``, ``gender.*``.
This module maps those names onto our modules with one table (:data:`KEY_PREFIXES`), folds
the two spellings of the positional convolution's weight norm in one place
(:func:`fold_weight_norm`), and refuses anything but an exact match (:func:`load_strict`).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import torch
import yaml

__all__ = [
    "KEY_PREFIXES",
    "WEIGHT_NORM_SPELLINGS",
    "CheckpointError",
    "fold_weight_norm",
    "load_strict",
    "LazyTensor",
    "load_state_dict_file",
    "read_config",
    "hparams_from_config",
    "split_audeering_state_dict",
    "find_weights_file",
    "render_hparams",
    "convert_audeering_checkpoint",
    "PRETRAINING_ONLY_PREFIXES",
    "wav2vec2_encoder_state_dict",
    "load_wav2vec2_encoder",
    "save_model_folder",
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

#: config.json fields copied into our hyperparameters (same names in both).
ARCH_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "conv_dim",
    "conv_kernel",
    "conv_stride",
    "conv_bias",
    "feat_extract_norm",
    "do_stable_layer_norm",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
    "hidden_act",
    "feat_extract_activation",
    "layer_norm_eps",
    "hidden_dropout",
    "attention_dropout",
    "activation_dropout",
    "feat_proj_dropout",
    "layerdrop",
    "apply_spec_augment",
    "mask_time_prob",
    "mask_time_length",
    "mask_feature_prob",
    "mask_feature_length",
    "final_dropout",
)
#: Top-level inference settings a saved model folder keeps besides the architecture.
SETTING_FIELDS = ("sample_rate", "age_scale", "norm_eps", "attn_implementation")
REQUIRED_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


class CheckpointError(RuntimeError):
    """A checkpoint that does not match the model exactly; the message names the tensors."""


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
    agegender_sb.checkpoint.CheckpointError: demo does not match Linear: missing: bias
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
            targets[key].copy_(value)


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


def read_config(path: str | os.PathLike) -> dict:
    """Read and check an audEERING-layout ``config.json``.

    Raises
    ------
    CheckpointError
        If it is not a wav2vec2 configuration or lacks architecture fields.
    """
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read the model configuration ({err})") from err
    if config.get("model_type", "wav2vec2") != "wav2vec2":
        raise CheckpointError(f"{path}: model_type is {config['model_type']!r}, not 'wav2vec2'")
    missing = [f for f in REQUIRED_FIELDS if f not in config]
    if missing:
        raise CheckpointError(f"{path}: missing fields {', '.join(missing)}")
    return config


def labels_from_config(config: dict) -> list[str] | None:
    """Gender labels in output order from ``id2label``, or None if the config has none.

    transformers fills ``LABEL_0, LABEL_1`` when a config has no labels; those count as none.

    Example
    -------
    >>> labels_from_config({"id2label": {"1": "male", "0": "female", "2": "child"}})
    ['female', 'male', 'child']
    """
    id2label = config.get("id2label")
    if not id2label:
        return None
    labels = [id2label[k] for k in sorted(id2label, key=int)]
    if [int(k) for k in sorted(id2label, key=int)] != list(range(len(labels))):
        raise CheckpointError(f"id2label ids are not 0..{len(labels) - 1}: {id2label}")
    if all(re.fullmatch(r"LABEL_\d+", lab) for lab in labels):
        return None
    return labels


def hparams_from_config(config: dict, require_labels: bool = True) -> dict:
    """Our hyperparameter overrides for the architecture and labels a config describes.

    Parameters
    ----------
    config : dict
        Contents of ``config.json``.
    require_labels : bool
        Raise if ``id2label`` is absent (an age/gender checkpoint must have it).

    Example
    -------
    >>> hp = hparams_from_config({"hidden_size": 8, "num_hidden_layers": 6,
    ...     "num_attention_heads": 2, "intermediate_size": 16,
    ...     "id2label": {"0": "female", "1": "male", "2": "child"}})
    >>> hp["num_hidden_layers"], hp["gender_labels"]
    (6, ['female', 'male', 'child'])
    """
    overrides = {k: config[k] for k in ARCH_FIELDS if k in config}
    labels = labels_from_config(config)
    if labels is not None:
        overrides["gender_labels"] = labels
    elif require_labels:
        raise CheckpointError("config.json has no id2label: not an age/gender checkpoint")
    return overrides


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


def find_weights_file(folder: str | os.PathLike) -> Path:
    """The preferred weight file of a local transformers folder (safetensors first)."""
    folder = Path(folder)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no {' or '.join(WEIGHT_FILES)}")


def packaged_hparams_path(name: str = "inference.yaml") -> Path:
    """Path of a hyperparameter file shipped inside the package (``hparams/`` in a checkout)."""
    from importlib.resources import files

    try:
        path = Path(str(files("agegender_sb.hparams").joinpath(name)))
    except ModuleNotFoundError:  # running from a source checkout that is not installed
        path = Path(__file__).resolve().parent.parent / "hparams" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: packaged hyperparameter file not found")
    return path


def render_hparams(overrides: dict, template: str | os.PathLike | None = None) -> str:
    """The packaged inference YAML with top-level values replaced by ``overrides``.

    The result keeps the file's comments and ``!ref`` structure, so a converted model's
    ``hyperparams.yaml`` reads like the packaged one.

    Raises
    ------
    KeyError
        If an override names no top-level key of the template.
    """
    text = Path(template or packaged_hparams_path()).read_text(encoding="utf-8")
    for key, value in overrides.items():
        dumped = yaml.safe_dump(value, default_flow_style=True, width=1000)
        dumped = dumped.replace("\n...\n", "").strip()
        pattern = re.compile(rf"^{re.escape(key)}:.*$", re.MULTILINE)
        text, count = pattern.subn(lambda _m, k=key, d=dumped: f"{k}: {d}", text)
        if count != 1:
            raise KeyError(f"{key!r} is not a top-level key of the hyperparameter template")
    return text


def convert_audeering_checkpoint(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    savedir: str | os.PathLike | None = None,
    **from_hparams_kwargs,
) -> Path:
    """Convert an audEERING-layout checkpoint into a SpeechBrain model folder.

    The folder holds ``hyperparams.yaml`` (the packaged inference file with this checkpoint's
    architecture and labels), ``encoder.ckpt``, ``age_head.ckpt``, ``gender_head.ckpt``
    and a copy of ``config.json``. ``AgeGenderClassifier.from_hparams``
    loads it, and it can be hosted like any SpeechBrain model.

    Parameters
    ----------
    source : str or PathLike
        Hub id or local folder of an audEERING-layout checkpoint.
    dest : str or PathLike
        Output folder (created; existing files of the same names are replaced).
    savedir : str or PathLike, optional
        Where to keep fetched files.
    **from_hparams_kwargs
        Passed to ``AgeGenderClassifier.from_hparams`` (e.g. ``fetch_config``).

    Returns
    -------
    Path
        ``dest``.
    """
    from .interface import AgeGenderClassifier

    clf = AgeGenderClassifier.from_hparams(
        source=str(source), savedir=savedir, run_opts={"device": "cpu"}, **from_hparams_kwargs
    )
    if clf.source_layout != "audeering":
        raise CheckpointError(f"{source}: already a SpeechBrain model folder, nothing to convert")
    return save_speechbrain_folder(clf, dest)


def save_speechbrain_folder(clf, dest: str | os.PathLike) -> Path:
    """Write a loaded classifier's modules as a SpeechBrain model folder (see above)."""
    return save_model_folder(clf.mods.model, clf.labels, clf.arch_hparams, dest,
                             config=clf.config)


def save_model_folder(
    model: torch.nn.Module,
    labels,
    arch_hparams: dict,
    dest: str | os.PathLike,
    config: dict | None = None,
) -> Path:
    """Write an :class:`~agegender_sb.model.AgeGenderModel` as a SpeechBrain model folder.

    ``hyperparams.yaml`` (the packaged inference file with ``arch_hparams`` and ``labels``),
    ``encoder.ckpt``, ``age_head.ckpt``, ``gender_head.ckpt`` and, when given, ``config.json``.
    Files are written to ``dest/.partial`` first and moved into place one by one.

    Parameters
    ----------
    model : torch.nn.Module
        Has ``encoder``, ``age_head`` and ``gender_head`` submodules.
    labels : sequence of str
        Gender labels in output order.
    arch_hparams : dict
        Top-level keys of the inference YAML (architecture, dropout) to write.
    dest : str or PathLike
        Output folder (created; files of the same names are replaced).
    config : dict, optional
        A ``config.json`` to keep next to the weights.

    Returns
    -------
    Path
        ``dest``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    overrides = dict(arch_hparams)
    overrides["gender_labels"] = list(labels)
    (tmp / "hyperparams.yaml").write_text(render_hparams(overrides), encoding="utf-8")
    for name in ("encoder", "age_head", "gender_head"):
        state = {k: v.detach().cpu().contiguous() for k, v in
                 getattr(model, name).state_dict().items()}
        torch.save(state, tmp / f"{name}.ckpt")
    if config is not None:
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    for item in tmp.iterdir():
        os.replace(item, dest / item.name)
    tmp.rmdir()
    return dest


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
    agegender_sb.checkpoint.CheckpointError: ...plain wav2vec2 checkpoint: lm_head.bias
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
