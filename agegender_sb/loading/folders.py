"""Model folders: writing a SpeechBrain model folder, converting an audEERING checkpoint to
one, and describing any source (``agegender info``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from agegender_sb.defaults import SAMPLE_RATE
from agegender_sb.loading.checkpoint import (
    CheckpointError,
)
from agegender_sb.loading.config import (
    packaged_hparams_path,
    plain_values,
    render_model_yaml,
    setting_fields,
)
from agegender_sb.loading.sources import MODULE_FILES, SourceError, load_model, resolve_source


# ---------------------------------------------------------------------------- writing
def save_model_folder(
    model: torch.nn.Module,
    values: dict,
    dest: str | os.PathLike,
    config: dict | None = None,
    overwrite: bool = True,
) -> Path:
    """Write an :class:`~agegender_sb.model.network.AgeGenderModel` as a SpeechBrain model folder.

    ``hyperparams.yaml`` (the packaged ``inference.yaml`` with ``values``: architecture,
    labels, settings), ``encoder.ckpt``, ``age_head.ckpt``, ``gender_head.ckpt`` and, when
    given, ``config.json``. Files are written to ``dest/.partial`` first and then moved into
    place.

    Parameters
    ----------
    model : torch.nn.Module
        Has ``encoder``, ``age_head`` and ``gender_head`` submodules.
    values : dict
        Plain settings of the packaged YAML (keys of
        :func:`~agegender_sb.loading.config.setting_fields`; others are ignored).
    dest : str or PathLike
    config : dict, optional
        A ``config.json`` to keep next to the weights.
    overwrite : bool
        Replace the model files of an existing, non-empty ``dest``; if False such a folder
        is refused.
    """
    import json

    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise SourceError(f"{dest}: exists and is not a folder")
    if not overwrite and dest.is_dir() and any(dest.iterdir()):
        raise SourceError(f"{dest}: folder exists and is not empty (overwrite to replace it)")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    settings = {k: v for k, v in values.items() if k in setting_fields()}
    (tmp / "hyperparams.yaml").write_text(render_model_yaml(settings), encoding="utf-8")
    for name in MODULE_FILES:
        state = {k: v.detach().cpu().contiguous() for k, v in
                 getattr(model, name).state_dict().items()}
        torch.save(state, tmp / f"{name}.ckpt")
    if config is not None:
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    for item in tmp.iterdir():
        os.replace(item, dest / item.name)
    tmp.rmdir()
    return dest


def convert(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    overwrite: bool = False,
    **resolve_kwargs,
) -> Path:
    """Convert an audEERING-layout checkpoint into a SpeechBrain model folder (files in,
    files out).

    The folder holds ``hyperparams.yaml`` (the packaged inference file with this
    checkpoint's architecture and labels), ``encoder.ckpt``, ``age_head.ckpt``,
    ``gender_head.ckpt`` and a copy of ``config.json``; ``AgeGenderClassifier.from_hparams``
    loads it, and it can be hosted like any SpeechBrain model.

    Parameters
    ----------
    source : str or PathLike
        Hub id or local folder of an audEERING-layout checkpoint.
    dest : str or PathLike
        Output folder; an existing non-empty one is refused unless ``overwrite``.
    **resolve_kwargs
        ``savedir``, ``fetch_config``, ... for :func:`resolve_source`.
    """
    src = resolve_source(source, **resolve_kwargs)
    if src.kind != "audeering":
        what = ("already a SpeechBrain model folder, nothing to convert"
                if src.kind == "speechbrain" else "a plain wav2vec2 checkpoint without heads")
        raise CheckpointError(f"{source}: {what}")
    dest = Path(dest)
    if not overwrite and dest.is_dir() and any(dest.iterdir()):
        raise SourceError(f"{dest}: folder exists and is not empty (--overwrite / "
                          "overwrite=True to replace it)")
    hparams = load_model(src)
    values = {k: hparams[k] for k in setting_fields()}
    return save_model_folder(hparams["model"], values, dest, config=src.config,
                             overwrite=True)


def _count_parameters(path: Path) -> int:
    """Number of values in a weight file, from its header (safetensors) or a memory map."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                shapes = [handle.get_slice(k).get_shape() for k in handle.keys()]
        except Exception as err:  # SafetensorError: truncated, empty, not a safetensors file
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # a non-zipfile pickle cannot be memory-mapped
            raise CheckpointError(f"{path}: cannot be read as plain tensors ({err})") from err
        shapes = [tuple(v.shape) for v in state.values()]
    total = 0
    for shape in shapes:
        n = 1
        for d in shape:
            n *= int(d)
        total += n
    return total


def describe(source: str | os.PathLike, **resolve_kwargs) -> dict:
    """What ``agegender info`` prints: layout, labels, sizes, parameter count, sample rate.

    Read from the config and the weight files' headers: no model is built and no weight
    is loaded (the 24-layer model is described in well under a second once fetched).

    Example
    -------
    >>> info = describe(getfixture("tiny_checkpoint"))
    >>> info["layout"], info["labels"], info["layers"]
    ('audeering', ['female', 'male', 'child'], 2)
    """
    src = resolve_source(source, **resolve_kwargs)
    arch = {**plain_values(packaged_hparams_path().read_text(encoding="utf-8"))["wav2vec2"],
            **src.hparams.get("wav2vec2", {})}
    if src.kind == "speechbrain":
        weights = [src.files[f"{m}.ckpt"] for m in MODULE_FILES]
    else:
        weights = [src.files["weights"]]
    labels = src.hparams.get("gender_labels")
    return {
        "source": str(source),
        "layout": src.kind,
        "labels": list(labels) if labels else [],
        "layers": int(arch["num_hidden_layers"]),
        "hidden_size": int(arch["hidden_size"]),
        "attention_heads": int(arch["num_attention_heads"]),
        "parameters": sum(_count_parameters(Path(w)) for w in weights),
        "sample_rate": int(src.hparams.get("sample_rate", SAMPLE_RATE)),
    }
