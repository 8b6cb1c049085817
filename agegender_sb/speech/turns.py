"""Speaker turns given from outside: ``Turn(start, end, speaker)`` in seconds, read from
NIST RTTM files (:func:`read_rttm`, what pyannote.audio writes), a ``pyannote.core.Annotation``
(:func:`turns_from_annotation`) or plain tuples (:func:`turns_from_tuples`), and checked
against a file's duration (:func:`check_turns`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agegender_sb.errors import TurnError

__all__ = [
    "TURN_TOLERANCE_S",
    "Turn",
    "TurnError",
    "check_turns",
    "read_rttm",
    "rttm_files",
    "turns_from_annotation",
    "turns_from_tuples",
]

TURN_TOLERANCE_S = 0.01
"""Seconds a turn may end past the file's end before :func:`check_turns` calls it an error."""


# --------------------------------------------------------------------------------------------
# Speaker turns
# --------------------------------------------------------------------------------------------



@dataclass(frozen=True)
class Turn:
    """One speaker turn: ``start`` and ``end`` in seconds from the file's start.

    ``speaker`` is the diarisation's label (``None`` when unknown). Turns of different
    speakers may overlap (people talk at once); each turn is analysed on its own span, so
    overlapped speech counts for both.

    >>> Turn(1.5, 3.0, "spk0").duration
    1.5
    """

    start: float
    end: float
    speaker: str | None = None

    @property
    def duration(self) -> float:
        """``end - start`` in seconds."""
        return self.end - self.start


def _turn_key(turn: Turn):
    return (turn.start, turn.end, "" if turn.speaker is None else turn.speaker)


# NIST RTTM record types other than SPEAKER: skipped by read_rttm.
_RTTM_OTHER_TYPES = frozenset(
    "SEGMENT NOSCORE NO_RT_METADATA LEXEME NON-LEX NON-SPEECH FILLER EDIT IP SU CB A/P "
    "SPKR-INFO".split()
)


def _read_rttm_file(path: Path, into: dict[str, list[Turn]], origin: dict[str, Path]) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TurnError(f"{path}: not a text RTTM file ({error})") from None
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith((";;", "#")):
            continue
        where = f"{path}, line {number}"
        kind = fields[0].upper()
        if kind in _RTTM_OTHER_TYPES:
            continue
        if kind != "SPEAKER":
            raise TurnError(f"{where}: unknown RTTM record type {fields[0]!r}")
        if len(fields) != 10:
            raise TurnError(
                f"{where}: a SPEAKER record has 10 fields (SPEAKER file-id channel start "
                f"duration <NA> <NA> speaker <NA> <NA>), found {len(fields)}"
            )
        file_id, start_text, duration_text, speaker = fields[1], fields[3], fields[4], fields[7]
        try:
            start, duration = float(start_text), float(duration_text)
        except ValueError:
            raise TurnError(
                f"{where}: start {start_text!r} and duration {duration_text!r} must be numbers"
            ) from None
        if not (math.isfinite(start) and start >= 0):
            raise TurnError(f"{where}: start must be a finite number >= 0, got {start_text}")
        if not (math.isfinite(duration) and duration > 0):
            raise TurnError(f"{where}: duration must be a finite number > 0, got {duration_text}")
        if file_id not in seen and file_id in origin:
            raise TurnError(f"{path}: file id {file_id!r} is also in {origin[file_id]}")
        seen.add(file_id)
        origin[file_id] = path
        label = None if speaker == "<NA>" else speaker
        into.setdefault(file_id, []).append(Turn(start, start + duration, label))


def rttm_files(path) -> list[Path]:
    """The RTTM files ``path`` stands for: itself, or the ``*.rttm`` files of a folder (not in
    subfolders; the extension in any case), sorted.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    TurnError
        A folder with no RTTM file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such RTTM file or folder")
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".rttm" and p.is_file())
    if not files:
        raise TurnError(f"{path}: folder has no *.rttm file")
    return files


def read_rttm(path) -> dict[str, list[Turn]]:
    """Speaker turns from a NIST RTTM file, or from every ``*.rttm`` file in a folder.

    Reads ``SPEAKER <file-id> <channel> <start> <duration> <NA> <NA> <speaker> <NA> <NA>``
    records (seconds; what pyannote.audio writes). Blank lines, ``;;`` and ``#`` comments and
    other NIST record types (``SPKR-INFO``, ``SEGMENT``, ...) are skipped; a speaker of
    ``<NA>`` becomes ``None``. Channels are not told apart.

    Parameters
    ----------
    path : str or os.PathLike
        An RTTM file, or a folder whose ``*.rttm`` files (not in subfolders, the extension in
        any case) are merged.

    Returns
    -------
    dict of str to list of Turn
        Turns per file id, sorted by start (then end, speaker), file ids in the order read.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    TurnError
        Naming the file and line: an unknown record type, a SPEAKER record without 10
        fields, a start or duration that is not a number, a start < 0 or not finite, a
        duration <= 0 or not finite; a file id found in two files of a folder; a folder with
        no ``*.rttm`` file.

    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.rttm").write_text(
    ...     "SPEAKER meeting 1 3.50 1.25 <NA> <NA> spk_1 <NA> <NA>\\n"
    ...     "SPEAKER meeting 1 0.00 2.00 <NA> <NA> spk_0 <NA> <NA>\\n")
    >>> turns = read_rttm(folder / "a.rttm")
    >>> list(turns)
    ['meeting']
    >>> for turn in turns["meeting"]:
    ...     print(turn)
    Turn(start=0.0, end=2.0, speaker='spk_0')
    Turn(start=3.5, end=4.75, speaker='spk_1')
    """
    files = rttm_files(path)
    turns: dict[str, list[Turn]] = {}
    origin: dict[str, Path] = {}
    for file in files:
        _read_rttm_file(file, turns, origin)
    return {file_id: sorted(items, key=_turn_key) for file_id, items in turns.items()}


def turns_from_annotation(annotation) -> list[Turn]:
    """Speaker turns of a ``pyannote.core.Annotation`` (a diarisation), sorted by start.

    Each track becomes ``Turn(segment.start, segment.end, str(label))``.

    Raises
    ------
    ImportError
        pyannote.core is not installed (``pip install "agegender_sb[pyannote]"``).
    TypeError
        ``annotation`` is not an ``Annotation``.
    """
    try:
        from pyannote.core import Annotation
    except ImportError as error:
        raise ImportError(
            'turns_from_annotation needs pyannote.core: pip install "agegender_sb[pyannote]"'
        ) from error
    if not isinstance(annotation, Annotation):
        raise TypeError(f"expected a pyannote.core.Annotation, got {type(annotation).__name__}")
    turns = [
        Turn(float(segment.start), float(segment.end), str(label))
        for segment, _, label in annotation.itertracks(yield_label=True)
    ]
    return sorted(turns, key=_turn_key)


def turns_from_tuples(items: Iterable[Sequence]) -> list[Turn]:
    """Speaker turns from ``(start, end)`` or ``(start, end, speaker)`` tuples, in seconds.

    :class:`Turn` objects may stand among them (kept as they are). Values are converted
    (``float(start)``, ``float(end)``, ``str(speaker)`` unless ``None``) and kept in the
    given order; :func:`check_turns` checks and sorts them.

    Raises
    ------
    TurnError
        An item that is not 2 or 3 long, or whose start or end is not a number.

    >>> turns_from_tuples([(0, 1.5), (2, 3, "b")])
    [Turn(start=0.0, end=1.5, speaker=None), Turn(start=2.0, end=3.0, speaker='b')]
    >>> turns_from_tuples([Turn(0.0, 1.5, "a"), (2, 3, "b")])
    [Turn(start=0.0, end=1.5, speaker='a'), Turn(start=2.0, end=3.0, speaker='b')]
    """
    turns = []
    for index, item in enumerate(items):
        if isinstance(item, Turn):
            turns.append(item)
            continue
        try:
            values = tuple(item)
        except TypeError:
            raise TurnError(
                f"turn {index}: expected (start, end[, speaker]), got {item!r}"
            ) from None
        if len(values) not in (2, 3):
            raise TurnError(f"turn {index}: expected (start, end[, speaker]), got {item!r}")
        try:
            start, end = float(values[0]), float(values[1])
        except (TypeError, ValueError):
            raise TurnError(f"turn {index}: start and end must be numbers, got {item!r}") from None
        speaker = values[2] if len(values) == 3 else None
        turns.append(Turn(start, end, None if speaker is None else str(speaker)))
    return turns


def check_turns(turns: Iterable[Turn], duration: float, name: str) -> list[Turn]:
    """Check speaker turns against a file of ``duration`` seconds; return them sorted.

    Overlapping turns (two speakers at once) are kept as they are: each turn is analysed on
    its own span, so overlapped speech is in both. A turn ending up to
    :data:`TURN_TOLERANCE_S` (10 ms) past the file's end is clipped to it.

    Parameters
    ----------
    turns : iterable of Turn
        Turns in seconds.
    duration : float
        The file's duration in seconds.
    name : str
        What the turns belong to (a file path), for the error messages.

    Returns
    -------
    list of Turn
        Sorted by start (then end, speaker).

    Raises
    ------
    TurnError
        No turns at all; naming ``name`` and the turn: a non-finite start or end, start < 0,
        end <= start, an
        end more than 10 ms past ``duration`` (or a start at or past it), or a turn given
        twice (same start, end and speaker).

    >>> check_turns([Turn(2.0, 4.005, "b"), Turn(0.0, 2.5, "a")], 4.0, "talk.wav")
    [Turn(start=0.0, end=2.5, speaker='a'), Turn(start=2.0, end=4.0, speaker='b')]
    >>> check_turns([Turn(3.0, 4.5)], 4.0, "talk.wav")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    agegender_sb.errors.TurnError: talk.wav: turn Turn(...) ends at 4.5 s, past the end of...
    """
    duration = float(duration)
    if not (math.isfinite(duration) and duration >= 0):
        raise TurnError(f"{name}: duration must be a finite number of seconds >= 0, got {duration}")
    checked = []
    turns = list(turns)
    if not turns:
        raise TurnError(f"{name}: no speaker turns given (an empty list or Annotation): "
                        "nothing to analyse (predict_file analyses the whole file)")
    for turn in turns:
        if not isinstance(turn, Turn):
            raise TypeError(f"{name}: expected Turn objects, got {type(turn).__name__}")
        if not (math.isfinite(turn.start) and math.isfinite(turn.end)):
            raise TurnError(f"{name}: turn {turn} has a start or end that is not finite")
        if turn.start < 0:
            raise TurnError(f"{name}: turn {turn} starts before the file (start < 0)")
        if turn.end <= turn.start:
            raise TurnError(f"{name}: turn {turn} has zero or negative length")
        if turn.start >= duration:
            raise TurnError(
                f"{name}: turn {turn} starts at {turn.start:g} s, at or past the end of the "
                f"file ({duration:g} s)"
            )
        if turn.end > duration + TURN_TOLERANCE_S:
            raise TurnError(
                f"{name}: turn {turn} ends at {turn.end:g} s, past the end of the file "
                f"({duration:g} s; {TURN_TOLERANCE_S:g} s tolerance)"
            )
        if turn.end > duration:
            turn = Turn(turn.start, duration, turn.speaker)
        checked.append(turn)
    checked.sort(key=_turn_key)
    for previous, turn in zip(checked, checked[1:]):
        if _turn_key(previous) == _turn_key(turn):
            raise TurnError(f"{name}: turn {turn} is given twice")
    return checked
