"""What the ``agegender`` command reads: audio files, folders, list files, speaker maps."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "AUDIO_EXTENSIONS",
    "InputError",
    "expand_inputs",
    "read_list_file",
    "read_speakers",
    "SpeakerMap",
]

#: File name extensions searched for in folders (case-insensitive): formats libsndfile reads.
AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".sph", ".nist", ".aif",
    ".aiff", ".aifc", ".au", ".snd", ".w64", ".rf64", ".caf", ".voc",
})


class InputError(ValueError):
    """An input list or speaker file that cannot be used (a usage error)."""


def _resolve(entry: str, base: Path) -> str:
    p = Path(entry)
    return str(p if p.is_absolute() else base / p)


def read_list_file(path: str | os.PathLike) -> list[str]:
    """Paths listed in a ``.txt`` (one a line) or ``.csv`` (``path`` column) file.

    Relative paths are taken relative to the list file's folder. In ``.txt`` files, blank
    lines and lines starting with ``#`` are skipped.

    Raises
    ------
    InputError
        If the file cannot be read, or a CSV has no ``path`` column.
    """
    path = Path(path)
    base = path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the list file ({err})") from err
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise InputError(f"{path}: a CSV list needs a 'path' column "
                             f"(columns: {reader.fieldnames})")
        return [_resolve(row["path"].strip(), base) for row in reader
                if row.get("path") and row["path"].strip()]
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(_resolve(line, base))
    return out


def _find_audio(folder: Path) -> list[str]:
    found = [
        str(p) for p in folder.rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
    ]
    return sorted(found)


def expand_inputs(items: Iterable[str | os.PathLike]) -> list[str]:
    """Audio file paths from command-line inputs, in order, each once.

    - a folder → the audio files under it, recursively (by :data:`AUDIO_EXTENSIONS`), sorted;
    - a ``.txt`` or ``.csv`` file → the paths it lists;
    - anything else → itself (missing or unreadable files get an error row later).

    Raises
    ------
    InputError
        For an unusable list file or a folder without audio files.
    """
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        item = str(item)
        p = Path(item)
        if p.is_dir():
            paths = _find_audio(p)
            if not paths:
                raise InputError(f"{p}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})"
                                 " found in this folder")
        elif p.suffix.lower() in (".txt", ".csv", ".lst", ".list"):
            if not p.is_file():
                raise InputError(f"{p}: no such list file")
            paths = read_list_file(p)
        else:
            paths = [item]
        for path in paths:
            if path not in seen:
                seen.add(path)
                out.append(path)
    return out


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
