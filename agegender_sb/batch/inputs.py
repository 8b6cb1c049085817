"""What the ``agegender`` command reads: audio files, folders, list files, turns, speaker maps.

Inputs become ``(path, turns)`` items: ``turns`` is None (analyse the whole file) or a list of
:class:`~agegender_sb.speech.turns.Turn` from a segment list (``.csv`` with ``start``, ``end`` and
``speaker`` columns) or an RTTM file (``--rttm``, matched by the audio file's stem).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from agegender_sb.errors import InputError

__all__ = [
    "AUDIO_EXTENSIONS",
    "InputError",
    "collect_items",
    "read_speakers",
    "SpeakerMap",
]

#: File name extensions searched for in folders (case-insensitive): formats libsndfile reads.
AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".sph", ".nist", ".aif",
    ".aiff", ".aifc", ".au", ".snd", ".w64", ".rf64", ".caf", ".voc",
})



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
    reader = csv.DictReader(io.StringIO(text, newline=""))
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


def collect_items(items: Iterable[str | os.PathLike], rttm=None) -> list[tuple[str, list | None]]:
    """``(path, turns or None)`` from command-line inputs, in order, each path once.

    - a folder → the audio files under it, recursively (by :data:`AUDIO_EXTENSIONS`), sorted;
    - a ``.txt`` or ``.csv`` file → the paths (or segments) it lists;
    - anything else → itself (missing or unreadable files get an error row later).

    ``rttm`` (a ``{file id: [Turn]}`` mapping, :func:`agegender_sb.speech.turns.read_rttm`) gives
    the turns of each file whose stem is a file id.

    Raises
    ------
    InputError
        For an unusable list file, a folder without audio files, RTTM file ids that match no
        input, or a file given turns twice.
    """
    out: dict[str, list | None] = {}
    for item in items:
        item = os.fspath(item)
        p = Path(item)
        if p.is_dir():
            rows = [(f, None) for f in _find_audio(p)]
            if not rows:
                raise InputError(f"{p}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})"
                                 " found in this folder")
        elif p.suffix.lower() in (".txt", ".csv", ".lst", ".list"):
            if not p.is_file():
                raise InputError(f"{p}: no such list file")
            rows = read_list_items(p)
        else:
            rows = [(item, None)]
        for path, turn in rows:
            if turn is None:
                out.setdefault(path, None)
            else:
                out.setdefault(path, [])
                if out[path] is None:
                    raise InputError(f"{path}: listed both whole and in segments")
                out[path].append(turn)
    if rttm:
        by_stem: dict[str, list[str]] = {}
        for path in out:
            by_stem.setdefault(Path(path).stem, []).append(path)
        unknown = sorted(set(rttm) - set(by_stem))
        if unknown:
            raise InputError(f"RTTM file ids with no audio among the inputs: "
                             f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
        for file_id, turns in rttm.items():
            for path in by_stem[file_id]:
                if out[path] is not None:
                    raise InputError(f"{path}: turns given both by a segment list and RTTM")
                out[path] = list(turns)
    return list(out.items())


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
        reader = csv.DictReader(io.StringIO(text, newline=""))
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
