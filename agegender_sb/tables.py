"""Result tables: columns, CSV/JSONL writers that flush every row, and reading for ``--resume``.

Columns are ``path, start, end, duration, age, <one probability per gender label>, gender,
error``. Three kinds of rows share them:

- file rows: ``start`` and ``end`` empty, ``duration`` the file's length in seconds;
- segment rows (``--segments``): ``start``/``end`` in seconds of one analysed window, written
  just before their file's row;
- speaker rows (``--speakers``): ``path`` is the speaker id, ``start``/``end`` empty,
  ``duration`` the total analysed duration of the speaker's files.

On failure a file row has only ``path`` and ``error``. Numbers are
written with 3 decimals for seconds, 2 for years and 4 for probabilities. In JSONL, empty
values are ``null``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "FORMATS",
    "TableError",
    "columns",
    "guess_format",
    "format_record",
    "TableWriter",
    "read_table",
    "prepare_resume",
    "is_group_end",
]

FORMATS = ("csv", "jsonl")

# Decimals per column kind.
_SECONDS, _YEARS, _PROB = 3, 2, 4


class TableError(ValueError):
    """An existing table that cannot be resumed (wrong columns, corrupt line)."""


def columns(labels: Sequence[str]) -> list[str]:
    """Output columns for a model with gender ``labels`` (in the model's label order).

    Example
    -------
    >>> columns(("female", "male", "child"))
    ['path', 'start', 'end', 'duration', 'age', 'female', 'male', 'child', 'gender', 'error']
    """
    fixed = {"path", "start", "end", "duration", "age", "gender", "error"}
    clash = fixed.intersection(labels)
    if clash:
        raise ValueError(f"gender labels clash with output columns: {sorted(clash)}")
    return ["path", "start", "end", "duration", "age", *labels, "gender", "error"]


def guess_format(path: str | os.PathLike | None, fmt: str | None = None) -> str:
    """``fmt`` if given, else ``jsonl`` for ``*.jsonl``/``*.json`` outputs, else ``csv``.

    Example
    -------
    >>> guess_format("out.jsonl"), guess_format("out.tsv"), guess_format(None, "jsonl")
    ('jsonl', 'csv', 'jsonl')
    """
    if fmt:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    if path is not None and Path(path).suffix.lower() in (".jsonl", ".json"):
        return "jsonl"
    return "csv"


def _round(value, digits):
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return value
    return round(value, digits)


def format_record(record: dict, labels: Sequence[str]) -> dict:
    """A record with numbers rounded for writing and missing values as ``None``.

    Example
    -------
    >>> rec = {"path": "a.wav", "duration": 2.0, "age": 31.234567, "female": 0.123456,
    ...        "male": 0.8, "child": 0.076544, "gender": "male"}
    >>> format_record(rec, ("female", "male", "child"))["age"]
    31.23
    """
    out = {}
    for col in columns(labels):
        value = record.get(col)
        if col in ("start", "end", "duration"):
            value = _round(value, _SECONDS)
        elif col == "age":
            value = _round(value, _YEARS)
        elif col in labels:
            value = _round(value, _PROB)
        elif value is not None:
            value = str(value)
            if col == "error":  # one row = one line
                value = " ".join(value.split())
            value = value or None
        out[col] = value
    return out


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if not math.isfinite(value) else f"{value}"
    return str(value)


def _csv_line(values: Sequence) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([_csv_cell(v) for v in values])
    return buf.getvalue()


class TableWriter:
    """Write result rows to a file or stdout, flushing after every row.

    Parameters
    ----------
    path : str or PathLike, optional
        Output file; ``None`` writes to ``stream`` (stdout by default).
    labels : sequence of str
        The model's gender labels (probability columns, in order).
    fmt : {"csv", "jsonl"}
    append : bool
        Append to an existing file (``--resume``); the CSV header is written only if the
        file is empty.
    precise : bool
        Write numbers unrounded (used for the part files of distributed runs).

    Example
    -------
    >>> buf = io.StringIO()
    >>> w = TableWriter(None, ("female", "male", "child"), "csv", stream=buf)
    >>> w.write({"path": "x.wav", "error": "x.wav: no such file"})
    >>> print(buf.getvalue(), end="")
    path,start,end,duration,age,female,male,child,gender,error
    x.wav,,,,,,,,,x.wav: no such file
    """

    def __init__(self, path, labels, fmt="csv", append=False, stream=None, precise=False):
        self.labels = tuple(labels)
        self.columns = columns(self.labels)
        self.fmt = guess_format(path, fmt)
        self.precise = precise
        self._own = path is not None
        if self._own:
            path = Path(path)
            if path.parent and not path.parent.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
            empty = not path.exists() or path.stat().st_size == 0
            self._fh = open(path, "a" if append else "w", encoding="utf-8", newline="")
            need_header = empty or not append
        else:
            self._fh = stream if stream is not None else sys.stdout
            need_header = True
        if self.fmt == "csv" and need_header:
            self._fh.write(_csv_line(self.columns))
            self._fh.flush()

    def write(self, record: dict) -> None:
        """Write one row and flush it."""
        if self.precise:
            row = {c: record.get(c) for c in self.columns}
        else:
            row = format_record(record, self.labels)
        if self.fmt == "csv":
            line = _csv_line([row[c] for c in self.columns])
        else:
            line = json.dumps(row, ensure_ascii=False) + "\n"
        self._fh.write(line)
        self._fh.flush()

    def close(self) -> None:
        if self._own:
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _parse_value(col: str, text, labels):
    if text is None or text == "":
        return None
    if col in ("start", "end", "duration", "age") or col in labels:
        return float(text)
    return str(text)


def _complete_lines(data: bytes) -> list[tuple[int, bytes]]:
    """``(end offset, line)`` for each newline-terminated line."""
    out, pos = [], 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return out
        out.append((nl + 1, data[pos:nl]))
        pos = nl + 1


def _parse_lines(path, data: bytes, fmt: str, labels) -> tuple[list[tuple[int, dict]], int]:
    """Parse complete lines → ``([(end offset, record)], header end offset)``."""
    cols = columns(labels)
    lines = _complete_lines(data)
    records, header_end = [], 0
    if fmt == "csv":
        if not lines:
            return [], 0
        header_end, header = lines[0]
        try:
            got = next(csv.reader([header.decode("utf-8")]))
        except UnicodeDecodeError as err:
            raise TableError(f"{path}, line 1: not UTF-8 text ({err})") from err
        if got != cols:
            raise TableError(f"{path}: columns {got} do not match this model's {cols}")
        lines = lines[1:]
    for lineno, (end, raw) in enumerate(lines, start=2 if fmt == "csv" else 1):
        try:
            text = raw.decode("utf-8")
            if not text.strip():
                continue
            if fmt == "csv":
                cells = next(csv.reader([text]))
                if len(cells) != len(cols):
                    raise ValueError(f"{len(cells)} fields, expected {len(cols)}")
                raw_rec = dict(zip(cols, cells))
            else:
                raw_rec = json.loads(text)
                if not isinstance(raw_rec, dict):
                    raise ValueError(f"not a JSON object: {text.strip()[:80]}")
                if set(raw_rec) != set(cols):
                    raise ValueError(f"keys {sorted(raw_rec)} do not match {cols}")
            rec = {c: _parse_value(c, raw_rec.get(c), labels) for c in cols}
        except (ValueError, TypeError) as err:  # UnicodeDecodeError is a ValueError
            raise TableError(f"{path}, line {lineno}: cannot be parsed ({err})") from err
        records.append((end, rec))
    return records, header_end


def is_group_end(record: dict) -> bool:
    """Whether a row closes a group: a file or speaker row (segment rows have a ``start``)."""
    return record.get("start") is None


def read_table(path: str | os.PathLike, labels: Sequence[str], fmt: str | None = None) -> list:
    """All complete rows of a table as dicts (numbers as floats, empty as ``None``).

    A last line without its newline (an interrupted write) is ignored.

    Raises
    ------
    TableError
        If the columns differ from ``columns(labels)`` or a complete line is not a row.
    """
    fmt = guess_format(path, fmt)
    records, _ = _parse_lines(path, Path(path).read_bytes(), fmt, tuple(labels))
    return [rec for _, rec in records]


def prepare_resume(path: str | os.PathLike, labels: Sequence[str],
                   fmt: str | None = None) -> list[dict]:
    """Make an existing table safe to append to, and return its rows.

    Cuts the file after its last file (or speaker) row: this drops a truncated last line and
    segment rows of a file whose own row was never written (an interrupted run). Nothing
    before that point is changed. A missing file is fine (no rows).

    Returns
    -------
    list of dict
        The rows kept.

    Raises
    ------
    TableError
        As :func:`read_table`.
    """
    path = Path(path)
    if not path.exists():
        return []
    fmt = guess_format(path, fmt)
    data = path.read_bytes()
    records, header_end = _parse_lines(path, data, fmt, tuple(labels))
    keep, n_kept = header_end, 0
    for i, (end, rec) in enumerate(records):
        if is_group_end(rec):
            keep, n_kept = end, i + 1
    kept = [r for _, r in records[:n_kept]]
    if keep < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(keep)
    return kept
