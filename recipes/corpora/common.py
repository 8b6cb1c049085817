"""Shared helpers for the corpus readers: records, label normalisation, splits, output.

The manifest format written by ``prepare.py`` has the columns

``ID, wav, start, stop, duration, age, gender, speaker``

* ``wav``: absolute path of the audio file;
* ``start``/``stop``: segment bounds in seconds, empty for whole files;
* ``duration``: seconds (``stop - start`` for segments, else from the audio header);
* ``age``: years, empty where unknown;
* ``gender``: ``female``, ``male``, ``child`` or empty where unknown.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import soundfile as sf

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["ID", "wav", "start", "stop", "duration", "age", "gender", "speaker"]
SPLITS = ("train", "valid", "test")
GENDERS = ("female", "male", "child")

#: Default child threshold: an utterance is labelled ``child`` iff ``age < child_age``.
#: 15 makes children "up to and including 14 years", matching aGender's children
#: group (7-14 years), one of the corpora the published model was trained on.
DEFAULT_CHILD_AGE = 15.0


class PrepareError(ValueError):
    """Bad input for data preparation; the message names the file (and line)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, line=None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
        self.path = None if path is None else Path(path)
        self.line = line


@dataclass(frozen=True)
class Utterance:
    """One manifest row.

    Attributes
    ----------
    id : str
        Unique utterance identifier.
    wav : Path
        Absolute path of the audio file.
    duration : float
        Duration in seconds (of the segment when ``start``/``stop`` are set).
    speaker : str
        Speaker identifier (used for speaker-disjoint splits).
    age : float or None
        Age in years, ``None`` when unknown.
    gender : str or None
        ``"female"``, ``"male"``, ``"child"`` or ``None`` when unknown.
    start, stop : float or None
        Segment bounds in seconds, ``None`` for whole files.
    """

    id: str
    wav: Path
    duration: float
    speaker: str
    age: float | None = None
    gender: str | None = None
    start: float | None = None
    stop: float | None = None


# --------------------------------------------------------------------------- reading


def read_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, stripped_line)`` for the non-empty lines of a text file.

    Parameters
    ----------
    path : path-like
        The file; a missing file raises :class:`PrepareError` naming it.

    Yields
    ------
    tuple of (int, str)
        1-based line number and the line without surrounding whitespace.
    """
    path = Path(path)
    if not path.is_file():
        raise PrepareError("required file is missing", path)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if line:
                yield number, line


def read_key_value(
    path: str | os.PathLike, min_fields: int = 2, max_fields: int | None = 2
) -> dict[str, tuple[int, list[str]]]:
    """Read a Kaldi-style ``<key> <value...>`` table.

    Parameters
    ----------
    path : path-like
        The table.
    min_fields, max_fields : int
        Allowed number of whitespace-separated fields per line (key included);
        ``max_fields=None`` splits only once (the value is the rest of the line).

    Returns
    -------
    dict
        ``key -> (line_number, values)``.

    Raises
    ------
    PrepareError
        On a malformed line or a duplicate key (naming file and line).
    """
    table: dict[str, tuple[int, list[str]]] = {}
    for number, line in read_lines(path):
        fields = line.split(maxsplit=1) if max_fields is None else line.split()
        if len(fields) < min_fields or (max_fields is not None and len(fields) > max_fields):
            raise PrepareError(f"malformed line {line!r}", path, number)
        key = fields[0]
        if key in table:
            raise PrepareError(
                f"duplicate key {key!r} (first on line {table[key][0]})", path, number
            )
        table[key] = (number, fields[1:])
    return table


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds of an audio file, read from its header with soundfile.

    Parameters
    ----------
    path : path-like
        Audio file in any format libsndfile reads (WAV, NIST/SPHERE, FLAC, MP3, ...).

    Returns
    -------
    float
        ``frames / samplerate``.

    Raises
    ------
    PrepareError
        If the file is missing or cannot be read.
    """
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises RuntimeError/LibsndfileError/OSError
        raise PrepareError(f"cannot read audio header ({err})", path) from err
    if info.samplerate <= 0 or info.frames <= 0:
        raise PrepareError("audio header reports no samples", path)
    return info.frames / info.samplerate


# ------------------------------------------------------------------------ labels

_MALE = {"m", "male", "man", "men", "boy", "masculine", "male_masculine", "male, masculine"}
_FEMALE = {
    "f", "w", "female", "woman", "women", "girl", "feminine", "female_feminine",
    "female, feminine",
}  # fmt: skip
_CHILD = {"c", "child", "children", "kid", "kids"}


def normalise_gender(value: str | None) -> str | None:
    """Map a corpus gender/sex label to ``female``, ``male``, ``child`` or ``None``.

    Recognised (case-insensitive, surrounding whitespace ignored):

    * male: ``m``, ``male``, ``man``, ``boy``, ``masculine``, ``male_masculine``;
    * female: ``f``, ``w``, ``female``, ``woman``, ``girl``, ``feminine``,
      ``female_feminine``;
    * child: ``c``, ``child``, ``children``, ``kid``.

    Everything else (``other``, ``non-binary``, ``intersex``, ``transgender``,
    ``do_not_wish_to_say``, ``unknown``, empty, ...) is unknown (``None``): a label is
    never guessed.

    Parameters
    ----------
    value : str or None
        Raw label.

    Returns
    -------
    str or None
        The normalised label.
    """
    if value is None:
        return None
    key = value.strip().lower()
    if key in _MALE:
        return "male"
    if key in _FEMALE:
        return "female"
    if key in _CHILD:
        return "child"
    return None


_MISSING = {"", "na", "n/a", "nan", "none", "null", "unknown", "?", "-"}


def parse_age(value: str | None, path=None, line=None) -> float | None:
    """Parse an age in years; empty/``NA``/``unknown`` give ``None``.

    Parameters
    ----------
    value : str or None
        Raw cell.
    path, line : optional
        Where the value comes from, for the error message.

    Returns
    -------
    float or None
        The age.

    Raises
    ------
    PrepareError
        If the value is neither missing nor a finite non-negative number.
    """
    if value is None or value.strip().lower() in _MISSING:
        return None
    try:
        age = float(value)
    except ValueError:
        raise PrepareError(f"invalid age {value!r}", path, line) from None
    if not math.isfinite(age) or age < 0 or age > 130:
        raise PrepareError(f"implausible age {value!r}", path, line)
    return age


def apply_child_rule(utts: Iterable[Utterance], child_age: float) -> list[Utterance]:
    """Label utterances of speakers younger than ``child_age`` as ``child``.

    ``gender`` becomes ``"child"`` iff the age is known and ``age < child_age``; this
    overrides the corpus's male/female label (the manifest has a single gender column,
    as the model has a single 3-way female/male/child head). Other utterances keep
    their label. ``child_age <= 0`` disables the rule.

    Parameters
    ----------
    utts : iterable of Utterance
        Input rows.
    child_age : float
        Threshold in years (default in ``prepare``: 15, i.e. children are 0-14).

    Returns
    -------
    list of Utterance
        New rows.
    """
    out = []
    for utt in utts:
        if child_age > 0 and utt.age is not None and utt.age < child_age:
            utt = replace(utt, gender="child")
        out.append(utt)
    return out


# ------------------------------------------------------------------------ splits


def _apportion(count: int, sizes: dict, taken: dict) -> dict:
    """Share ``count`` speakers among strata in proportion to their sizes.

    Largest-remainder rounding (ties by stratum order), never more than a stratum
    has left (``sizes[k] - taken[k]``).

    >>> _apportion(2, {"female": 8, "male": 8}, {"female": 0, "male": 0})
    {'female': 1, 'male': 1}
    >>> _apportion(3, {"female": 1, "male": 11}, {"female": 0, "male": 0})
    {'female': 0, 'male': 3}
    """
    total = sum(sizes.values())
    quotas = {k: count * n / total for k, n in sizes.items()}
    share = {k: min(math.floor(q), sizes[k] - taken[k]) for k, q in quotas.items()}
    by_remainder = sorted(sizes, key=lambda k: math.floor(quotas[k]) - quotas[k])
    while sum(share.values()) < count:
        open_ = [k for k in by_remainder if share[k] < sizes[k] - taken[k]]
        if not open_:
            break
        share[open_[0]] += 1
        by_remainder.remove(open_[0])
        by_remainder.append(open_[0])
    return share


def speaker_split(
    utts: Sequence[Utterance],
    fractions: dict[str, float],
    seed: int,
    strata: dict[str, object] | None = None,
) -> dict[str, list[Utterance]]:
    """Split utterances speaker-disjointly and deterministically.

    Speakers are sorted, shuffled with ``random.Random(seed)`` and the first
    ``round(fraction * n_speakers)`` (at least one when the fraction is positive) go
    to each named split in the order given; the remaining speakers go to ``train``.

    With ``strata`` (e.g. speaker -> gender), each stratum's speakers are sorted and
    shuffled on their own, and each carved split takes the same number of speakers as
    without strata, shared among the strata in proportion to their sizes
    (largest-remainder rounding). With 8 female and 8 male speakers and a fraction of
    0.1, valid gets one of each.

    Parameters
    ----------
    utts : sequence of Utterance
        Rows to split.
    fractions : dict
        ``split -> fraction of speakers`` for the carved splits (e.g.
        ``{"valid": 0.1}``); ``train`` gets the rest.
    seed : int
        Random seed.
    strata : dict, optional
        ``speaker -> stratum`` (any value, ``None`` included); speakers missing from it
        form the ``None`` stratum.

    Returns
    -------
    dict
        ``split -> rows`` including ``train`` and every key of ``fractions``.

    Raises
    ------
    PrepareError
        If there are too few speakers to leave at least one in every split.
    """
    speakers = sorted({u.speaker for u in utts})
    total = sum(fractions.values())
    if any(f < 0 for f in fractions.values()) or total >= 1:
        raise PrepareError(f"split fractions {fractions} must be >= 0 and sum to < 1")
    rng = random.Random(seed)
    groups: dict[str, list[str]] = {}
    for spk in speakers:
        key = None if strata is None else strata.get(spk)
        groups.setdefault(repr(key), []).append(spk)
    groups = {k: groups[k] for k in sorted(groups)}
    for members in groups.values():
        rng.shuffle(members)
    taken = {k: 0 for k in groups}
    sizes = {k: len(v) for k, v in groups.items()}
    assignment: dict[str, str] = {}
    requested = 0
    for split, fraction in fractions.items():
        count = round(fraction * len(speakers))
        if fraction > 0:
            count = max(1, count)
        requested += count
        for key, n in _apportion(count, sizes, taken).items():
            for spk in groups[key][taken[key] : taken[key] + n]:
                assignment[spk] = split
            taken[key] += n
    if requested >= len(speakers):
        raise PrepareError(
            f"cannot carve {fractions} speaker-disjointly from {len(speakers)} speakers"
        )
    out: dict[str, list[Utterance]] = {"train": [], **{s: [] for s in fractions}}
    for utt in utts:
        out[assignment.get(utt.speaker, "train")].append(utt)
    return out


# ------------------------------------------------------------------------ writing


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return ""
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return text or "0"


def write_manifest(utts: Iterable[Utterance], path: str | os.PathLike) -> Path:
    """Write a manifest CSV atomically (temporary file in the same folder + ``os.replace``).

    Parameters
    ----------
    utts : iterable of Utterance
        Rows to write.
    path : path-like
        Destination CSV.

    Returns
    -------
    Path
        The destination.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(MANIFEST_COLUMNS)
            for u in utts:
                writer.writerow(
                    [
                        u.id,
                        str(u.wav),
                        _fmt(u.start),
                        _fmt(u.stop),
                        _fmt(u.duration),
                        _fmt(u.age, 2),
                        u.gender or "",
                        u.speaker,
                    ]
                )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def resolve_path(value: str, root: Path) -> Path:
    """Absolute path of ``value``, relative paths being taken from ``root``."""
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = root / p
    return Path(os.path.abspath(p))
