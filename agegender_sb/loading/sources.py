"""The one front door for models: any source → checked local files → loaded modules.

A *source* is a Hugging Face hub id or a local folder, in one of three layouts:

- ``"audeering"``: a transformers folder (``config.json`` with age/gender ``id2label`` +
  ``model.safetensors`` or ``pytorch_model.bin``), as audEERING publish their models;
- ``"speechbrain"``: a model folder (``hyperparams.yaml`` + ``encoder.ckpt``,
  ``age_head.ckpt``, ``gender_head.ckpt``), as :func:`convert` and the recipe write;
- ``"wav2vec2"``: a plain wav2vec2 checkpoint without heads (the recipe's ``--init_from``).

:func:`resolve_source` fetches the files and decides the layout without executing anything:
a ``hyperparams.yaml`` is read as plain YAML and every tag in it is checked against
:data:`ALLOWED_TAGS` (what this package writes) before hyperpyyaml may see it; anything else
is refused unless the caller opts in with ``trust_remote_code=True``. :func:`load_model`
builds the modules and loads every tensor strictly; :func:`load_weights` loads a source's
tensors into modules built elsewhere (the training recipe's). ``AgeGenderClassifier
.from_hparams``, :func:`convert` and the recipe all come through here.

Example
-------
>>> src = resolve_source(getfixture("tiny_checkpoint"))
>>> src.kind, src.hparams["gender_labels"]
('audeering', ['female', 'male', 'child'])
>>> hparams = load_model(src)
>>> type(hparams["model"]).__name__
'AgeGenderModel'
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import yaml

from agegender_sb.errors import SourceError, UnsafeModelError
from agegender_sb.loading.checkpoint import (
    WEIGHT_FILES,
    CheckpointError,
    load_state_dict_file,
    load_strict,
    load_wav2vec2_encoder,
    split_audeering_state_dict,
)
from agegender_sb.loading.config import (
    labels_from_config,
    packaged_hparams_path,
    plain_values,
    read_config,
    setting_fields,
)

#: Modules a SpeechBrain model folder holds, one ``<name>.ckpt`` each.
MODULE_FILES = ("encoder", "age_head", "gender_head")

#: Tags a ``hyperparams.yaml`` may carry without ``trust_remote_code``: exactly what this
#: package writes (its modules, SpeechBrain's Pretrainer, the strict loading hook, ``len``).
ALLOWED_TAGS = frozenset({
    "!ref", "!copy",
    "!new:agegender_sb.model.normalizer.UtteranceNormalizer",
    "!new:agegender_sb.model.encoder.Wav2Vec2Encoder",
    "!new:agegender_sb.model.heads.MaskedMeanPooling",
    "!new:agegender_sb.model.heads.MLPHead",
    "!new:agegender_sb.model.network.AgeGenderModel",
    "!new:speechbrain.utils.parameter_transfer.Pretrainer",
    "!name:agegender_sb.loading.checkpoint.load_file_strict",
    "!apply:len",
})

#: Tags of model folders written by version 0.2 (flat modules) → where those names live now.
#: Folders carrying them load as before; folders written now carry the new names.
LEGACY_TAGS = {
    "!new:agegender_sb.audio.UtteranceNormalizer":
        "!new:agegender_sb.model.normalizer.UtteranceNormalizer",
    "!new:agegender_sb.encoder.Wav2Vec2Encoder": "!new:agegender_sb.model.encoder.Wav2Vec2Encoder",
    "!new:agegender_sb.heads.MaskedMeanPooling": "!new:agegender_sb.model.heads.MaskedMeanPooling",
    "!new:agegender_sb.heads.MLPHead": "!new:agegender_sb.model.heads.MLPHead",
    "!new:agegender_sb.model.AgeGenderModel": "!new:agegender_sb.model.network.AgeGenderModel",
    "!name:agegender_sb.checkpoint.load_file_strict":
        "!name:agegender_sb.loading.checkpoint.load_file_strict",
}
_LEGACY_TAG = re.compile("|".join(re.escape(k) + r"(?![\w.])" for k in LEGACY_TAGS))


def upgrade_tags(text: str) -> str:
    r"""A ``hyperparams.yaml`` text with version 0.2's tags replaced by today's names.

    Example
    -------
    >>> upgrade_tags("encoder: !new:agegender_sb.encoder.Wav2Vec2Encoder\n")
    'encoder: !new:agegender_sb.model.encoder.Wav2Vec2Encoder\n'
    """
    return _LEGACY_TAG.sub(lambda m: LEGACY_TAGS[m.group(0)], text)


logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_OFFLINE_HINT = ("use a local model folder (--source DIR / source=DIR), the savedir of an "
                 "earlier download, or, with the files in the Hugging Face cache, "
                 "HF_HUB_OFFLINE=1")


#: A model folder's calibration (agegender_sb.report.calibration), applied by default when
#: present.
CALIBRATION_FILE = "calibration.json"


@dataclass
class ModelSource:
    """A source resolved to local files.

    Attributes
    ----------
    kind : str
        ``"audeering"``, ``"speechbrain"`` or ``"wav2vec2"``.
    source : str
        As given (hub id or folder).
    files : dict
        File name → local path of the files the layout needs.
    hparams : dict
        Plain values implied for the packaged YAML (``wav2vec2`` architecture mapping,
        ``gender_labels`` except for plain wav2vec2, other settings of a model folder).
    config : dict or None
        The ``config.json`` (kept next to converted or exported models).
    trusted : bool
        Whether the caller allowed code from the folder's ``hyperparams.yaml``.
    """

    kind: str
    source: str
    files: dict = field(default_factory=dict)
    hparams: dict = field(default_factory=dict)
    config: dict | None = None
    trusted: bool = False


# ---------------------------------------------------------------------------- checks
def check_yaml_tags(text: str, name: str) -> None:
    """Refuse a hyperpyyaml text with any tag outside :data:`ALLOWED_TAGS`.

    The text is parsed (composed), never constructed, so nothing in it runs.

    Raises
    ------
    UnsafeModelError
        Naming the first tags found and the way to opt in.

    Example
    -------
    >>> check_yaml_tags("a: !apply:os.system [echo hi]\\n", "x.yaml")
    Traceback (most recent call last):
    ...
    agegender_sb.errors.UnsafeModelError: x.yaml: refusing to load: tag !apply:os.system (line 1) \
is not one this package writes and could run code; if you trust this model folder, pass \
trust_remote_code=True (--trust-remote-code)
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise CheckpointError(f"{name}: not valid YAML ({err})") from err
    bad, stack = [], [root] if root is not None else []
    while stack:
        node = stack.pop()
        tag = node.tag
        if not tag.startswith("tag:yaml.org,2002:") and tag not in ALLOWED_TAGS:
            bad.append(f"{tag} (line {node.start_mark.line + 1})")
        if isinstance(node, yaml.MappingNode):
            stack.extend(x for pair in node.value for x in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    if bad:
        tags = ", ".join(sorted(set(bad))[:5])
        raise UnsafeModelError(
            f"{name}: refusing to load: tag {tags} is not one this package writes and could "
            "run code; if you trust this model folder, pass trust_remote_code=True "
            "(--trust-remote-code)")


def _looks_local(source: str) -> bool:
    """A path (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``x``) rather than a hub id ``owner/name``."""
    if source.startswith((".", "/", "~", "\\")) or os.sep in source.replace("/", ""):
        return True
    return not _HUB_ID.match(source)


# ---------------------------------------------------------------------------- fetching
def _hub_address() -> tuple[str, int]:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def _hub_host() -> str:
    host, port = _hub_address()
    return f"{host}:{port}"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers within ``timeout`` (checked only without a proxy)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                                       "all_proxy")):
        return True  # the proxy decides; huggingface_hub reports its own errors
    try:
        with socket.create_connection(_hub_address(), timeout=timeout):
            return True
    except OSError:
        return False


class _Fetcher:
    """Fetch files of one hub repo (or local folder) into ``savedir`` with SpeechBrain."""

    def __init__(self, source, savedir, fetch_config, local_strategy):
        from speechbrain.utils.fetching import FetchConfig, LocalStrategy

        self.source, self.savedir = source, savedir
        self.config = fetch_config or FetchConfig()
        self.strategy = local_strategy or LocalStrategy.SYMLINK
        self.offline = not self.config.allow_network or bool(os.environ.get("HF_HUB_OFFLINE"))
        if not self.offline and not _hub_reachable():
            logger.warning("%s: the Hugging Face hub (%s) cannot be reached; looking in the local "
                           "cache", source, _hub_host())
            self.config = dataclasses.replace(self.config, allow_network=False)
            self.offline = True

    def get(self, name: str, required: bool = True) -> Path | None:
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
        from speechbrain.utils.fetching import fetch

        try:
            return Path(fetch(name, self.source, savedir=self.savedir,
                              fetch_config=self.config, local_strategy=self.strategy))
        except LocalEntryNotFoundError as err:
            if not required:
                return None
            where = ("the Hugging Face hub cannot be reached and it is not in the local cache"
                     if self.offline else f"it could not be downloaded ({err})")
            raise SourceError(f"{self.source}: {name}: {where}; {_OFFLINE_HINT}") from err
        except (EntryNotFoundError, ValueError) as err:  # not in that repo
            if not required:
                return None
            raise SourceError(f"{self.source}: the repository has no {name} ({err})") from err
        except OSError as err:
            if not required and isinstance(err, FileNotFoundError):
                return None
            raise SourceError(f"{self.source}: cannot fetch {name} ({err})") from err
        except Exception as err:  # huggingface_hub's HTTP and repository errors
            raise SourceError(f"{self.source}: cannot fetch {name} "
                              f"({type(err).__name__}: {err}); {_OFFLINE_HINT}") from err


# ---------------------------------------------------------------------------- resolving
def resolve_source(
    source: str | os.PathLike,
    savedir: str | os.PathLike | None = None,
    fetch_config=None,
    local_strategy=None,
    hparams_file: str = "hyperparams.yaml",
    trust_remote_code: bool = False,
) -> ModelSource:
    """Find the files of ``source`` and decide its layout, executing nothing.

    Parameters
    ----------
    source : str or PathLike
        Local folder or hub id (``owner/name``).
    savedir : str or PathLike, optional
        Where the model's files are linked or copied (SpeechBrain's ``fetch``; for hub ids
        and local folders alike), so that the savedir is itself a source.
    fetch_config : speechbrain.utils.fetching.FetchConfig, optional
        Token, revision, offline mode, cache folder.
    local_strategy : speechbrain.utils.fetching.LocalStrategy, optional
    hparams_file : str
        Name of a SpeechBrain folder's hyperparameter file.
    trust_remote_code : bool
        Allow a ``hyperparams.yaml`` with tags this package does not write.

    Raises
    ------
    SourceError
        A local folder that does not exist, a hub that cannot be reached (at once, with the
        ways out), a repository without the files.
    CheckpointError
        Files that are not a model of any accepted layout; :class:`UnsafeModelError` for
        a ``hyperparams.yaml`` with foreign tags.
    """
    source = str(source)
    path = Path(source).expanduser()
    if path.exists() or _looks_local(source):
        if not path.exists():
            raise SourceError(f"{source}: no such model folder (a hub id looks like "
                              "'owner/name')")
        if not path.is_dir():
            raise SourceError(f"{source}: is a file; a model source is a folder or a hub id")
        files = {n: path / n for n in (hparams_file, "config.json", *WEIGHT_FILES,
                                       *(f"{m}.ckpt" for m in MODULE_FILES),
                                       CALIBRATION_FILE)
                 if (path / n).is_file()}
        if savedir is not None:  # as SpeechBrain's fetch: the files linked (or copied) there
            files = _link_local(path, files, savedir, local_strategy)
            path = Path(savedir)
        get = files.get
        if hparams_file in files:
            return _speechbrain_source(source, files, trust_remote_code, hparams_file,
                                       lambda n: _local(path, n))
        if "config.json" not in files:
            raise SourceError(f"{source}: not a model folder: neither {hparams_file} "
                              "(SpeechBrain model folder) nor config.json (audEERING/"
                              "transformers checkpoint)")
        return _transformers_source(source, files, get)
    fetcher = _Fetcher(source, savedir, fetch_config, local_strategy)
    hp = fetcher.get(hparams_file, required=False)
    if hp is not None:
        return _speechbrain_source(source, {hparams_file: hp}, trust_remote_code,
                                   hparams_file, fetcher.get)
    files = {"config.json": fetcher.get("config.json")}
    for name in WEIGHT_FILES:
        found = fetcher.get(name, required=False)
        if found is not None:
            files[name] = found
            break
    return _transformers_source(source, files, files.get)


def _link_local(folder: Path, files: dict, savedir, local_strategy) -> dict:
    """Link (or copy, per ``local_strategy``; default symlink) a local model's files into
    ``savedir`` with SpeechBrain's ``fetch``, as it does for hub sources; return their new
    paths. ``preprocessor_config.json`` goes along where present."""
    from speechbrain.utils.fetching import LocalStrategy, fetch

    strategy = local_strategy or LocalStrategy.SYMLINK
    names = [*files, *(["preprocessor_config.json"]
                       if (folder / "preprocessor_config.json").is_file() else [])]
    out = {}
    for name in names:
        try:
            linked = Path(fetch(name, str(folder.resolve()), savedir=savedir,
                                local_strategy=strategy))
        except OSError as err:
            raise SourceError(f"{savedir}: cannot put {name} there ({err})") from err
        if name in files:
            out[name] = linked
    return out


def _local(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{folder}: model folder without {name}")
    return path


def _speechbrain_source(source, files, trusted, hparams_file, get) -> ModelSource:
    path = files[hparams_file]
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot be read ({err})") from err
    text = upgrade_tags(text)
    if not trusted:
        check_yaml_tags(text, str(path))
    values = plain_values(text, str(path))
    hparams = {k: values[k] for k in setting_fields() if k in values}
    for name in MODULE_FILES:
        files[f"{name}.ckpt"] = get(f"{name}.ckpt")
    config = None
    config_path = Path(path).with_name("config.json")
    if config_path.is_file():
        config = read_config(config_path)
    files["hyperparams"] = Path(path)
    return ModelSource("speechbrain", source, files, hparams, config, trusted)


def _transformers_source(source, files, get) -> ModelSource:
    from agegender_sb.loading.config import hparams_from_config

    config = read_config(files["config.json"])
    weights = next((get(n) for n in WEIGHT_FILES if get(n) is not None), None)
    if weights is None:
        raise CheckpointError(f"{source}: no {' or '.join(WEIGHT_FILES)} next to config.json")
    files = {"config.json": files["config.json"], "weights": Path(weights),
             **({CALIBRATION_FILE: files[CALIBRATION_FILE]} if CALIBRATION_FILE in files
                else {})}
    kind = "audeering" if labels_from_config(config) is not None else "wav2vec2"
    return ModelSource(kind, source, files, hparams_from_config(config, require_labels=False),
                       config)


# ---------------------------------------------------------------------------- loading
def load_model(src: ModelSource, overrides: dict | None = None) -> dict:
    """Build the modules for ``src`` and load every tensor strictly; return the hparams.

    audEERING checkpoints and SpeechBrain folders written by this package are built from
    the packaged ``inference.yaml`` with the source's values (then ``overrides``); a folder
    loaded with ``trust_remote_code`` is built from its own ``hyperparams.yaml``.

    Raises
    ------
    CheckpointError
        Naming the tensor or value that does not fit.
    """
    from hyperpyyaml import load_hyperpyyaml

    from agegender_sb.model.encoder import weights_loaded_next

    if src.kind == "wav2vec2":
        raise CheckpointError(f"{src.source}: a plain wav2vec2 checkpoint without age/gender "
                              "heads (id2label); fine-tune it with recipes/train.py first")
    if src.trusted:  # the folder's own YAML, with version 0.2's tags mapped to today's names
        text = upgrade_tags(Path(src.files["hyperparams"]).read_text(encoding="utf-8"))
        values = overrides or {}
    else:
        text = packaged_hparams_path().read_text(encoding="utf-8")
        values = _merge(src.hparams, overrides or {})
    with weights_loaded_next() as built:  # every encoder tensor is loaded strictly below
        hparams = load_hyperpyyaml(text, values)
    unfilled = [e for e in built if e is not hparams.get("encoder")]
    if unfilled:  # its weights allocated, never filled: refuse rather than compute with them
        raise CheckpointError(f"{src.source}: its hyperparameters build {len(unfilled)} "
                              "wav2vec2 encoder(s) besides `encoder`, which no weights "
                              "file fills")
    load_weights(src, hparams)
    hparams.update(source_kind=src.kind, config=src.config)
    return hparams


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_weights(src: ModelSource, hparams: dict) -> None:
    """Load ``src``'s tensors into ``hparams["encoder"]``, ``["age_head"]``, ``["gender_head"]``.

    A plain wav2vec2 source loads the encoder only (the heads keep their initialisation).
    """
    if src.kind == "speechbrain":
        for name in MODULE_FILES:
            path = src.files[f"{name}.ckpt"]
            load_strict(hparams[name], load_state_dict_file(path), str(path))
        return
    weights = src.files["weights"]
    state = load_state_dict_file(weights)
    if src.kind == "audeering":
        for name, part in split_audeering_state_dict(state, str(weights)).items():
            load_strict(hparams[name], part, f"{weights} ({name})")
    else:
        load_wav2vec2_encoder(hparams["encoder"], state, str(weights))
        logger.info("%s: plain wav2vec2 encoder loaded; heads start from random", weights)


