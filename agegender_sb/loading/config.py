"""The model as data: the packaged ``inference.yaml``, checkpoint configs, model-folder YAML.

``hparams/inference.yaml`` declares the architecture once, as the ``wav2vec2`` mapping
(keyword arguments of transformers' ``Wav2Vec2Config``), beside a few plain settings
(``gender_labels``, ``sample_rate``, ``age_scale``, ``norm_eps``, ``final_dropout``,
``attn_implementation``). Everything here is derived from that file: which ``config.json``
fields are architecture (:func:`architecture_fields`), which top-level values a model folder
repeats (:func:`setting_fields`), and the text of a model folder's ``hyperparams.yaml``
(:func:`render_model_yaml`, the packaged file with other values). Nothing here builds a
module or runs code from a YAML file: values are read with a plain YAML parser.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import re
from pathlib import Path

import yaml
from ruamel.yaml import YAML

from agegender_sb.loading.checkpoint import CheckpointError

__all__ = [
    "ARCH_KEY",
    "packaged_hparams_path",
    "architecture_fields",
    "setting_fields",
    "plain_values",
    "read_config",
    "labels_from_config",
    "hparams_from_config",
    "render_model_yaml",
]

#: Top-level key of the architecture mapping in ``inference.yaml``.
ARCH_KEY = "wav2vec2"
REQUIRED_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_STANDARD_TAG = "tag:yaml.org,2002:"
_SAFE = YAML(typ="safe", pure=True)


def packaged_hparams_path(name: str = "inference.yaml") -> Path:
    """Path of a hyperparameter file shipped inside the package (``hparams/`` in a checkout)."""
    from importlib.resources import files

    try:
        path = Path(str(files("agegender_sb.hparams").joinpath(name)))
    except ModuleNotFoundError:  # running from a source checkout that is not installed
        path = Path(__file__).resolve().parents[2] / "hparams" / name
    if not path.is_file():
        path = Path(__file__).resolve().parents[2] / "hparams" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: packaged hyperparameter file not found")
    return path


def _is_plain(node) -> bool:
    """Whether a YAML node holds data only (no hyperpyyaml tag anywhere inside)."""
    if not node.tag.startswith(_STANDARD_TAG):
        return False
    if isinstance(node, yaml.MappingNode):
        return all(_is_plain(k) and _is_plain(v) for k, v in node.value)
    if isinstance(node, yaml.SequenceNode):
        return all(_is_plain(v) for v in node.value)
    return True


def plain_values(text: str, name: str = "hyperparams.yaml") -> dict:
    """Top-level keys of a hyperpyyaml text whose values are plain data (no tags inside).

    Nothing is constructed but strings, numbers, lists and mappings: no code runs.

    Example
    -------
    >>> plain_values("a: 1\\nb: !ref <a>\\nc: {d: [1, 2]}\\n")
    {'a': 1, 'c': {'d': [1, 2]}}
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise CheckpointError(f"{name}: not valid YAML ({err})") from err
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise CheckpointError(f"{name}: expected a mapping at the top level")
    out = {}
    for key, value in root.value:
        if _is_plain(key) and _is_plain(value):
            # YAML 1.2 (ruamel, as hyperpyyaml reads it): "1e-05" is a float there
            out[_SAFE.load(yaml.serialize(key))] = _SAFE.load(yaml.serialize(value))
    return out


@functools.lru_cache(maxsize=1)
def _packaged_plain() -> dict:
    return plain_values(packaged_hparams_path().read_text(encoding="utf-8"), "inference.yaml")


def architecture_fields() -> tuple[str, ...]:
    """``Wav2Vec2Config`` fields the packaged YAML declares (the ``wav2vec2`` mapping).

    Example
    -------
    >>> "num_hidden_layers" in architecture_fields()
    True
    """
    return tuple(_packaged_plain()[ARCH_KEY])


def setting_fields() -> tuple[str, ...]:
    """Top-level plain values of the packaged YAML: what a model folder repeats.

    Example
    -------
    >>> sorted(setting_fields())  # doctest: +NORMALIZE_WHITESPACE
    ['age_scale', 'attn_implementation', 'final_dropout', 'gender_labels', 'norm_eps',
     'sample_rate', 'wav2vec2']
    """
    return tuple(_packaged_plain())


def read_config(path: str | os.PathLike) -> dict:
    """Read and check an audEERING-layout (transformers) ``config.json``.

    Raises
    ------
    CheckpointError
        If it is not a JSON object describing a wav2vec2 model with sensible architecture
        values (positive integer sizes, ...), naming the file and the field.
    """
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read the model configuration ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    if config.get("model_type", "wav2vec2") != "wav2vec2":
        raise CheckpointError(f"{path}: model_type is {config['model_type']!r}, not 'wav2vec2'")
    missing = [f for f in REQUIRED_FIELDS if f not in config]
    if missing:
        raise CheckpointError(f"{path}: missing fields {', '.join(missing)}")
    for field in REQUIRED_FIELDS:
        value = config[field]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"{path}: {field} must be a positive integer, got {value!r}")
    for field in ("conv_dim", "conv_kernel", "conv_stride"):
        value = config.get(field)
        if value is not None and (not isinstance(value, list) or not value or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
            raise CheckpointError(f"{path}: {field} must be a list of positive integers, "
                                  f"got {value!r}")
    for field in ("layer_norm_eps", "final_dropout"):
        value = config.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise CheckpointError(f"{path}: {field} must be a number >= 0, got {value!r}")
    try:
        labels_from_config(config)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    return config


def labels_from_config(config: dict) -> list[str] | None:
    """Gender labels in output order from ``id2label``, or None if the config has none.

    transformers fills ``LABEL_0, LABEL_1`` when a config has no labels; those count as none.

    Raises
    ------
    CheckpointError
        For ids that are not 0..n-1, labels that are not non-empty strings, or a label
        given twice (a table would get two columns of that name).

    Example
    -------
    >>> labels_from_config({"id2label": {"1": "male", "0": "female", "2": "child"}})
    ['female', 'male', 'child']
    """
    id2label = config.get("id2label")
    if not id2label:
        return None
    if not isinstance(id2label, dict):
        raise CheckpointError(f"id2label must be a mapping, got {type(id2label).__name__}")
    try:
        ids = sorted(id2label, key=int)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"id2label ids must be integers: {id2label}") from err
    if [int(k) for k in ids] != list(range(len(ids))):
        raise CheckpointError(f"id2label ids are not 0..{len(ids) - 1}: {id2label}")
    labels = [id2label[k] for k in ids]
    if not all(isinstance(lab, str) and lab.strip() for lab in labels):
        raise CheckpointError(f"id2label labels must be non-empty strings: {id2label}")
    twice = sorted({lab for lab in labels if labels.count(lab) > 1})
    if twice:
        raise CheckpointError(f"id2label names {', '.join(twice)} more than once: {id2label}")
    if all(re.fullmatch(r"LABEL_\d+", lab) for lab in labels):
        return None
    return labels


def hparams_from_config(config: dict, require_labels: bool = True) -> dict:
    """Overrides of the packaged YAML for the architecture and labels a config describes.

    Parameters
    ----------
    config : dict
        Contents of ``config.json``.
    require_labels : bool
        Raise if ``id2label`` is absent (an age/gender checkpoint must have it).

    Example
    -------
    >>> hp = hparams_from_config({"hidden_size": 8, "num_hidden_layers": 6,
    ...     "num_attention_heads": 2, "intermediate_size": 16, "final_dropout": 0.0,
    ...     "id2label": {"0": "female", "1": "male", "2": "child"}})
    >>> hp["wav2vec2"]["num_hidden_layers"], hp["gender_labels"], hp["final_dropout"]
    (6, ['female', 'male', 'child'], 0.0)
    """
    overrides: dict = {ARCH_KEY: {k: config[k] for k in architecture_fields() if k in config}}
    if "final_dropout" in config:
        overrides["final_dropout"] = config["final_dropout"]
    labels = labels_from_config(config)
    if labels is not None:
        overrides["gender_labels"] = labels
    elif require_labels:
        raise CheckpointError("config.json has no id2label: not an age/gender checkpoint")
    return overrides


def _yaml_float(value: float) -> str:
    """A float as YAML 1.1 reads it back as a float.

    Example
    -------
    >>> _yaml_float(1e-05), _yaml_float(0.1), _yaml_float(3.0)
    ('1.0e-05', '0.1', '3.0')
    """
    text = repr(float(value))
    if text in ("inf", "-inf", "nan"):
        return {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}[text]
    mantissa, _, exp = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return mantissa + ("e" + exp if exp else "")


def render_model_yaml(values: dict) -> str:
    """The packaged ``inference.yaml`` with ``values`` in place of its plain settings.

    The result keeps the file's comments, tags and ``!ref`` structure, so a model folder's
    ``hyperparams.yaml`` reads like the packaged one.

    Raises
    ------
    KeyError
        If a value names no plain setting of the packaged file.

    Example
    -------
    >>> text = render_model_yaml({"wav2vec2": {"num_hidden_layers": 6}})
    >>> plain_values(text)["wav2vec2"]["num_hidden_layers"], "!new:" in text
    (6, True)
    """
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    def flow(value):
        if isinstance(value, dict):
            return CommentedMap((k, flow(v)) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            seq = CommentedSeq(flow(v) for v in value)
            seq.fa.set_flow_style()
            return seq
        return value

    rt = YAML(typ="rt")
    # YAML 1.1 (hyperpyyaml) reads "1e-05" as a string: always write a mantissa with a dot
    rt.representer.add_representer(float, lambda rep, value: rep.represent_scalar(
        "tag:yaml.org,2002:float", _yaml_float(value)))
    rt.indent(mapping=4, sequence=4, offset=2)
    rt.width = 1000
    data = rt.load(packaged_hparams_path().read_text(encoding="utf-8"))
    unknown = [k for k in values if k not in setting_fields()]
    if unknown:
        raise KeyError(f"{', '.join(map(repr, unknown))}: not a setting of the packaged YAML")
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(data[key], dict):
            for sub, sub_value in value.items():
                data[key][sub] = flow(sub_value)
        else:
            data[key] = flow(value)
    buf = io.StringIO()
    rt.dump(data, buf)
    return buf.getvalue()
