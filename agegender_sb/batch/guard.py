"""The output guard: nothing a run reads is ever written over.

A run reads audio files, list files, RTTM files, a speaker file, the model's own files and
an ONNX graph. :func:`check_output` refuses an output (and the files written beside it) that
is any of them, by resolved path and by file identity (hard links, different spellings),
before the model is loaded; :func:`model_files` lists what a local model source reads.

Example
-------
>>> folder = getfixture("tmp_path")
>>> wav = folder / "a.wav"
>>> _ = wav.write_bytes(b"RIFF")
>>> check_output(folder / "./a.wav", [wav])
Traceback (most recent call last):
...
agegender_sb.errors.OutputError: ...a.wav is read by this run (...a.wav): refusing to overwrite it
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from agegender_sb.errors import OutputError

__all__ = ["check_output", "model_files", "same_file"]


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two names are the same file: the same inode where both exist, else the same
    resolved path."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def model_files(source: str | os.PathLike | None, onnx_path=None) -> list[Path]:
    """The files a run reads for its model: every file of a local source folder (or the file
    itself) and the ONNX graph with its external weights (``<graph>.data``)."""
    out: list[Path] = []
    if source is not None and os.path.exists(source):
        src = Path(source)
        out += [p for p in src.rglob("*") if p.is_file()] if src.is_dir() else [src]
    if onnx_path is not None:
        graph = Path(onnx_path)
        out += [graph, graph.with_name(graph.name + ".data")]
    return out


def check_output(output: str | os.PathLike, reads: Iterable[str | os.PathLike],
                 beside: Iterable[str | os.PathLike] = (), what: str = "--output") -> None:
    """Refuse to write ``output`` (or the files in ``beside``, written next to it) where a
    file this run reads lives; refuse an output that is a folder.

    Raises
    ------
    OutputError
        Naming the output and the file it would overwrite.
    """
    output = Path(output)
    if output.is_dir():
        raise OutputError(f"{what} {output} is a folder; name a file to write")
    reads = [Path(r) for r in reads]
    for target in (output, *map(Path, beside)):
        for path in reads:
            if same_file(target, path):
                named = "" if target == output else f" (written beside {output})"
                raise OutputError(f"{what} {target}{named} is read by this run ({path}): "
                                  "refusing to overwrite it")
