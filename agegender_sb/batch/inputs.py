"""What a run reads, resolved once: audio files, folders, list files, turns, speaker maps.

:func:`resolve_inputs` turns command-line inputs into :class:`Inputs`: unique real files (a
file named twice, by another spelling, a link or a folder that holds it, is analysed once,
under the first name given), each with its speaker turns or None (analyse it whole), the
speaker map, and every path the run reads, for the output guard. Turns come from a segment
list (``.csv`` with ``start``, ``end`` and optionally ``speaker`` columns) or RTTM
(``--rttm``, matched by the audio file's stem).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agegender_sb.defaults import AUDIO_EXTENSIONS
from agegender_sb.errors import InputError

__all__ = [
    "AUDIO_EXTENSIONS",
    "LIST_EXTENSIONS",
    "InputError",
    "Inputs",
    "file_key",
    "resolve_inputs",
    "read_list_items",
    "read_speakers",
    "SpeakerMap",
]

#: File name extensions read as list files (case-insensitive).
LIST_EXTENSIONS = (".txt", ".csv", ".lst", ".list")


def file_key(path: str | os.PathLike) -> str:
    """The identity of a file: its real path (links followed, ``.``/``..`` gone).

    >>> file_key("a/../b.wav") == file_key("./b.wav")
    True
    """
    return os.path.realpath(os.fspath(path))


@dataclass
class Inputs:
    """Inputs resolved once.

    Attributes
    ----------
    items : list of (str, list of Turn or None)
        Unique files in input order: ``None`` analyses the whole file; a list of turns
        analyses those turns; an empty list (``--rttm`` without an entry for the file) gives
        the file a "no speaker turns" row.
    reads : list of str
        Every file the inputs name or consist of (audio, list, RTTM and speaker files).
    speakers : SpeakerMap or None
    notes : list of str
        What the user should hear about (files named twice, files without turns).
    """

    items: list
    reads: list = field(default_factory=list)
    speakers: SpeakerMap | None = None
    notes: list = field(default_factory=list)


def _csv_reader(text: str) -> csv.DictReader:
    """A CSV reader whose column names are stripped of spaces (``path, start, end``)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    reader.fieldnames = [(name or "").strip() for name in (reader.fieldnames or [])]
    return reader


def _resolve(entry: str, base: Path) -> str:
    p = Path(entry)
    return str(p if p.is_absolute() else base / p)


def read_list_items(path: str | os.PathLike) -> list[tuple[str, object]]:
    """``(path, turn or None)`` rows of a list file.

    A ``.csv`` with ``start`` and ``end`` columns (seconds; ``speaker`` optional) lists
    segments: one row per turn. Rows of one file must all have times or none.

    Raises
    ------
    InputError
        Naming the file and line: unreadable file, missing ``path`` column, a time that is
        not a number, or a file listed both whole and in segments.
    """
    from agegender_sb.speech.turns import Turn

    path = Path(path)
    base = path.parent
    try:
        text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    except OSError as err:
        raise InputError(f"{path}: cannot read the list file ({err})") from err
    if path.suffix.lower() != ".csv":
        return [(_resolve(line.strip(), base), None) for line in text.splitlines()
                if line.strip() and not line.strip().startswith("#")]
    reader = _csv_reader(text)
    names = reader.fieldnames or []
    if "path" not in names:
        raise InputError(f"{path}: a CSV list needs a 'path' column (columns: {names})")
    timed = "start" in names and "end" in names
    if ("start" in names) != ("end" in names):
        raise InputError(f"{path}: a segment list needs both 'start' and 'end' columns")
    out, kinds = [], {}
    for lineno, row in enumerate(reader, start=2):
        value = (row.get("path") or "").strip()
        if not value:
            continue
        item = _resolve(value, base)
        turn = None
        if timed and ((row.get("start") or "").strip() or (row.get("end") or "").strip()):
            try:
                start, end = float(row["start"]), float(row["end"])
            except (TypeError, ValueError):
                raise InputError(f"{path}, line {lineno}: start/end must be seconds, got "
                                 f"{row.get('start')!r}, {row.get('end')!r}") from None
            turn = Turn(start, end, (row.get("speaker") or "").strip() or None)
        kind = turn is not None
        if kinds.setdefault(item, kind) != kind:
            raise InputError(f"{path}, line {lineno}: {value} is listed both whole and in "
                             "segments")
        out.append((item, turn))
    return out


def _find_audio(folder: Path) -> list[str]:
    """Audio names under ``folder``, sorted; broken links, loops and FIFOs are kept, so
    that they get an error row instead of vanishing."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files + [d for d in dirs if Path(root, d).is_symlink()]:
            p = Path(root) / name
            if p.suffix.lower() in AUDIO_EXTENSIONS and not p.is_dir():
                found.append(str(p))
    return sorted(found)


def resolve_inputs(inputs: Iterable[str | os.PathLike], rttm=None, speakers=None) -> Inputs:
    """Resolve command-line inputs once (see :class:`Inputs`).

    - a folder → the audio files under it, recursively (by :data:`AUDIO_EXTENSIONS`, in any
      case), sorted;
    - a list file (:data:`LIST_EXTENSIONS`) → the paths (or segments) it lists;
    - anything else → itself (missing or unreadable files get an error row later).

    ``rttm`` (an RTTM file or folder) gives the turns of each file whose stem is a file id;
    ``speakers`` (Kaldi ``utt2spk`` or CSV ``path,speaker``) maps files to speakers.

    Raises
    ------
    InputError
        For an unusable list or speaker file, a folder without audio files, RTTM file ids that
        match no input or several, or a file given turns twice.
    """
    from agegender_sb.speech.turns import read_rttm, rttm_files

    reads: list[str] = []
    notes: list[str] = []
    out: dict[str, tuple[str, list | None]] = {}  # file key -> (first name, turns)
    again: list[tuple[str, str]] = []
    for item in inputs:
        item = os.fspath(item)
        p = Path(item)
        if p.is_dir():
            rows = [(f, None) for f in _find_audio(p)]
            if not rows:
                raise InputError(f"{p}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})"
                                 " found in this folder")
        elif p.suffix.lower() in LIST_EXTENSIONS:
            if not p.is_file():
                raise InputError(f"{p}: no such list file")
            reads.append(item)
            rows = read_list_items(p)
        else:
            rows = [(item, None)]
        for path, turn in rows:
            key = file_key(path)
            if key not in out:
                out[key] = (path, None if turn is None else [])
                reads.append(path)
            elif turn is None:
                if out[key][1] is not None:
                    raise InputError(f"{path}: listed both whole and in segments")
                again.append((path, out[key][0]))
            if turn is not None:
                if out[key][1] is None:
                    raise InputError(f"{path}: listed both whole and in segments")
                out[key][1].append(turn)
    if again:
        first = again[0]
        notes.append(f"{len(again)} input(s) name a file already listed (first: {first[0]} is "
                     f"{first[1]}); each file is analysed once")
    if rttm:
        reads += [str(f) for f in rttm_files(rttm)]
        _apply_rttm(out, read_rttm(rttm), notes)
    spk_map = None
    if speakers:
        reads.append(os.fspath(speakers))
        spk_map = read_speakers(speakers)
    return Inputs(list(out.values()), reads, spk_map, notes)


def _apply_rttm(out: dict, rttm: dict, notes: list) -> None:
    by_stem: dict[str, list[str]] = {}
    for key, (path, _) in out.items():
        by_stem.setdefault(Path(path).stem, []).append(key)
    unknown = sorted(set(rttm) - set(by_stem))
    if unknown:
        raise InputError(f"RTTM file ids with no audio among the inputs: "
                         f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    for file_id, turns in rttm.items():
        keys = by_stem[file_id]
        if len(keys) > 1:
            names = ", ".join(out[k][0] for k in keys[:4])
            raise InputError(f"RTTM file id {file_id!r} matches {len(keys)} inputs ({names}): "
                             "give each recording a distinct name, or one RTTM per run")
        path, given = out[keys[0]]
        if given is not None:
            raise InputError(f"{path}: turns given both by a segment list and RTTM")
        out[keys[0]] = (path, list(turns))
    without = [key for key, (_, turns) in out.items() if turns is None]
    for key in without:
        out[key] = (out[key][0], [])
    if without:
        notes.append(f"{len(without)} input(s) have no speaker turns in the RTTM (first: "
                     f"{out[without[0]][0]}); their rows say so")


class SpeakerMap:
    """Map input paths to speaker ids.

    Keys of the speaker file match an input by its path as given, its resolved absolute
    path, its file name, or its file name without extension (Kaldi utterance ids).
    """

    def __init__(self, mapping: dict[str, str]):
        self.mapping = dict(mapping)

    def speaker(self, path: str) -> str | None:
        p = Path(path)
        for key in (path, str(p.resolve()), p.name, p.stem):
            if key in self.mapping:
                return self.mapping[key]
        return None

    def speakers_of(self, paths: Sequence[str]) -> dict[str, list[str]]:
        """``{speaker: [paths]}`` with speakers in order of first appearance."""
        out: dict[str, list[str]] = {}
        for path in paths:
            spk = self.speaker(path)
            if spk is not None:
                out.setdefault(spk, []).append(path)
        return out


def read_speakers(path: str | os.PathLike) -> SpeakerMap:
    """Read a Kaldi ``utt2spk`` (``utt speaker`` a line) or a CSV with ``path,speaker``.

    In a CSV, relative paths are taken relative to its folder (the plain value, the file name
    and the stem also match).

    Raises
    ------
    InputError
        If the file cannot be read or parsed.

    Example
    -------
    >>> f = getfixture("tmp_path") / "utt2spk"
    >>> _ = f.write_text("spk1-utt1 spk1\\nspk2-utt1 spk2\\n")
    >>> read_speakers(f).speaker("/data/wav/spk2-utt1.wav")
    'spk2'
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the speaker file ({err})") from err
    mapping: dict[str, str] = {}
    if path.suffix.lower() == ".csv":
        reader = _csv_reader(text)
        names = reader.fieldnames or []
        if "path" not in names or "speaker" not in names:
            raise InputError(f"{path}: a speaker CSV needs 'path' and 'speaker' columns "
                             f"(columns: {names})")
        for row in reader:
            key, spk = (row["path"] or "").strip(), (row["speaker"] or "").strip()
            if key and spk:
                mapping[key] = spk
                mapping.setdefault(_resolve(key, path.parent), spk)
                mapping.setdefault(str(Path(_resolve(key, path.parent)).resolve()), spk)
        return SpeakerMap(mapping)
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise InputError(f"{path}, line {lineno}: expected 'utterance speaker', got {line!r}")
        mapping[fields[0]] = fields[1]
    return SpeakerMap(mapping)
