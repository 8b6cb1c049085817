"""Fingerprint of a corpus's inputs, so that ``prepare`` notices a changed corpus.

The fingerprint holds

* ``labels``: ``path -> sha256`` of every label file the corpus reader reads or looks
  for (``None`` for an optional file that is absent, so adding one counts as a change);
* ``audio``: the number of audio files and one sha256 over their sorted
  ``path, size, mtime`` lines (the audio is not read: a re-encoded file with the same
  size and mtime goes unnoticed, an edited or touched one does not).

The audio files are those of the manifests plus every file with an audio suffix under
the data folder (so files added to a corpus whose readers list folders, such as TIMIT,
count too).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from agegender_sb.defaults import AUDIO_EXTENSIONS

#: Suffixes (lower case) taken as audio when walking a data folder: the package's one set.
AUDIO_SUFFIXES = AUDIO_EXTENSIONS


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's contents, read in 1 MiB blocks.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> file_sha256(f.name)[:16]
    'ba7816bf8f01cfea'
    >>> os.unlink(f.name)
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def audio_files_under(folder: str | os.PathLike) -> list[str]:
    """Files under ``folder`` (recursively) whose suffix is in :data:`AUDIO_SUFFIXES`.

    Parameters
    ----------
    folder : path-like
        Where to look; a file or a missing path gives an empty list.

    Returns
    -------
    list of str
        Absolute paths, sorted (strings: a corpus may hold a million clips).
    """
    folder = os.path.realpath(folder)
    if not os.path.isdir(folder):
        return []
    found = []
    for parent, _dirs, files in os.walk(folder):
        found += [
            os.path.join(parent, name)
            for name in files
            if os.path.splitext(name)[1].lower() in AUDIO_SUFFIXES
        ]
    return sorted(found)


def input_fingerprint(
    label_files: Iterable[str | os.PathLike], audio_files: Iterable[str | os.PathLike]
) -> dict:
    """Fingerprint of the label files' contents and the audio files' sizes and mtimes.

    Parameters
    ----------
    label_files : iterable of path-like
        Files hashed by content; absent ones are recorded as ``None``.
    audio_files : iterable of path-like
        Files recorded by path, size and modification time (a missing one as missing).

    Returns
    -------
    dict
        ``{"labels": {path: sha256 or None}, "audio": {"files": n, "sha256": hex}}``
        (JSON-serialisable).
    """
    labels = {
        str(p): (file_sha256(p) if p.is_file() else None)
        for p in sorted(set(map(Path, label_files)))
    }
    digest = hashlib.sha256()
    paths = sorted(set(map(os.fspath, audio_files)))
    for path in paths:
        try:
            st = os.stat(path)
            line = f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n"
        except OSError:
            line = f"{path}\tmissing\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return {"labels": labels, "audio": {"files": len(paths), "sha256": digest.hexdigest()}}


def describe_change(old: dict | None, new: dict) -> str | None:
    """Why two fingerprints differ, in words; ``None`` if they are equal.

    >>> a = {"labels": {"/c/spk": "1"}, "audio": {"files": 2, "sha256": "x"}}
    >>> describe_change(a, a) is None
    True
    >>> describe_change(a, {"labels": {"/c/spk": "2"}, "audio": {"files": 3, "sha256": "y"}})
    'label file /c/spk changed; audio files changed (2 -> 3 files, or their sizes/mtimes)'
    """
    if old == new:
        return None
    if not isinstance(old, dict) or "labels" not in old or "audio" not in old:
        return "no input fingerprint recorded (prepared by an older version)"
    reasons = []
    for path in sorted(set(old["labels"]) | set(new["labels"])):
        before, after = old["labels"].get(path), new["labels"].get(path)
        if before == after and (path in old["labels"]) == (path in new["labels"]):
            continue
        if after is None:
            reasons.append(f"label file {path} is gone")
        elif before is None:
            reasons.append(f"label file {path} appeared")
        else:
            reasons.append(f"label file {path} changed")
    if old["audio"] != new["audio"]:
        reasons.append(
            f"audio files changed ({old['audio'].get('files')} -> {new['audio']['files']} files,"
            " or their sizes/mtimes)"
        )
    return "; ".join(reasons) or "fingerprint differs"
