"""Result tables: columns, writers that flush every row, locking, provenance, resuming.

Columns are ``path, speaker, start, end, duration, speech, age, <one probability per gender
label>, gender, error``. Four kinds of rows share them:

- file rows: ``speaker``, ``start`` and ``end`` empty; ``duration`` the file's length and
  ``speech`` the seconds of speech the result rests on;
- turn and window rows (``--segments``): ``start``/``end`` in seconds, written before their
  file's row;
- turn-speaker rows (speaker turns given by ``--rttm`` or a segment list): ``path`` and
  ``speaker``, ``start``/``end`` empty, the speaker's turns in that file pooled; written
  before their file's row;
- speaker rows (``--speakers``): ``path`` empty, ``speaker`` the speaker id, pooled over the
  speaker's files; written last.

A file without speech has empty ``age``/probabilities/``gender`` and ``error`` "no speech
detected"; a file that failed has only ``path`` and ``error``. Numbers are written with 3
decimals for seconds, 2 for years and 4 for probabilities. In JSONL, empty values are
``null``.

File names are written as the operating system gives them: UTF-8 text, and bytes that are not
UTF-8 unchanged (Python's ``surrogateescape``), so every name round-trips through a table and
``--resume``; CSV fields holding a comma, a quote, a line break or a carriage return are
quoted (RFC 4180). Beside a table written to a file, ``<table>.agegender.json`` records what
made it (:func:`write_provenance`); ``--resume`` refuses a table made by another analysis,
and ``<table>.lock`` keeps a second process from writing the same table.
"""

from __future__ import annotations

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
    "provenance_path",
    "write_provenance",
    "check_provenance",
    "lock_table",
]

FORMATS = ("csv", "jsonl")
ENCODING, ERRORS = "utf-8", "surrogateescape"

# Decimals per column kind.
_SECONDS, _YEARS, _PROB = 3, 2, 4
_FIXED = ("path", "speaker", "start", "end", "duration", "speech", "age", "gender", "error")


class TableError(ValueError):
    """An output table that cannot be written or resumed (the message says why)."""


def columns(labels: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """Output columns for a model with gender ``labels`` (in the model's label order).

    ``extra``: more number columns between ``gender`` and ``error`` (a calibration's
    ``age_low``, ``age_high``, ``p_<label>``, ``p_age_<lo>_<hi>``: see
    :mod:`agegender_sb.calibration`).

    Example
    -------
    >>> columns(("female", "male", "child"))  # doctest: +NORMALIZE_WHITESPACE
    ['path', 'speaker', 'start', 'end', 'duration', 'speech', 'age', 'female', 'male',
     'child', 'gender', 'error']
    """
    clash = set(_FIXED).intersection(labels)
    if clash:
        raise ValueError(f"gender labels clash with output columns: {sorted(clash)}")
    clash = set(_FIXED).union(labels).intersection(extra)
    if clash or len(set(extra)) != len(extra):
        raise ValueError(f"extra columns clash with output columns: {list(extra)}")
    return ["path", "speaker", "start", "end", "duration", "speech", "age", *labels, "gender",
            *extra, "error"]


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
    return round(value, digits) if math.isfinite(value) else value


def format_record(record: dict, labels: Sequence[str], extra: Sequence[str] = ()) -> dict:
    """A record with numbers rounded for writing and missing values as ``None``.

    Example
    -------
    >>> rec = {"path": "a.wav", "duration": 2.0, "age": 31.234567, "female": 0.123456,
    ...        "male": 0.8, "child": 0.076544, "gender": "male"}
    >>> format_record(rec, ("female", "male", "child"))["age"]
    31.23
    """
    out = {}
    for col in columns(labels, extra):
        value = record.get(col)
        if col in ("start", "end", "duration", "speech"):
            value = _round(value, _SECONDS)
        elif col in ("age", "age_low", "age_high"):
            value = _round(value, _YEARS)
        elif col in labels or col in extra:
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
    text = repr(value) if isinstance(value, float) and not math.isfinite(value) else str(value)
    if any(c in text for c in ',"\r\n') or text != text.strip():
        text = '"' + text.replace('"', '""') + '"'
    return text


def _csv_line(values: Sequence) -> str:
    """One RFC 4180 record (``\\n``-terminated), quoting what needs it, ``\\r`` included.

    Example
    -------
    >>> _csv_line(["a,b", None, 1.5, 'x"\\ry'])
    '"a,b",,1.5,"x""\\ry"\\n'
    """
    return ",".join(_csv_cell(v) for v in values) + "\n"


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
    extra : sequence of str
        Number columns after ``gender`` (see :func:`columns`).
    transform : callable, optional
        Applied to each record before it is written (a calibration's
        :meth:`~agegender_sb.calibration.Calibration.calibrated_row`).

    Example
    -------
    >>> buf = io.StringIO()
    >>> w = TableWriter(None, ("female", "male", "child"), "csv", stream=buf)
    >>> w.write({"path": "x.wav", "error": "x.wav: no such file"})
    >>> print(buf.getvalue(), end="")
    path,speaker,start,end,duration,speech,age,female,male,child,gender,error
    x.wav,,,,,,,,,,,x.wav: no such file
    """

    def __init__(self, path, labels, fmt="csv", append=False, stream=None, precise=False,
                 extra=(), transform=None):
        self.labels, self.extra, self.transform = tuple(labels), tuple(extra), transform
        self.columns = columns(self.labels, self.extra)
        self.fmt = guess_format(path, fmt)
        self.precise = precise
        self._own = path is not None
        if self._own:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            empty = not path.exists() or path.stat().st_size == 0
            self._fh = open(path, "a" if append else "w", encoding=ENCODING, errors=ERRORS,
                            newline="")
            need_header = empty or not append
        else:
            self._fh = stream if stream is not None else sys.stdout
            need_header = True
        if self.fmt == "csv" and need_header:
            self._fh.write(_csv_line(self.columns))
            self._fh.flush()

    def write(self, record: dict) -> None:
        """Write one row and flush it."""
        if self.transform is not None:
            record = self.transform(record)
        if self.precise:
            row = {c: record.get(c) for c in self.columns}
        else:
            row = format_record(record, self.labels, self.extra)
        if self.fmt == "csv":
            line = _csv_line([row[c] for c in self.columns])
        else:
            line = json.dumps(row, ensure_ascii=False) + "\n"
        if not self._own:  # a terminal or pipe may not take undecodable names
            line = line.encode(ENCODING, ERRORS).decode(ENCODING, "backslashreplace")
        self._fh.write(line)
        self._fh.flush()

    def close(self) -> None:
        if self._own:
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _parse_value(col: str, text, numbers):
    if text is None or text == "":
        return None
    if col in ("start", "end", "duration", "speech", "age") or col in numbers:
        return float(text)
    return str(text)


def _records(data: bytes, fmt: str) -> list[tuple[int, int, bytes]]:
    """``(line number, end offset, record bytes)`` for each complete record.

    A CSV record may span lines inside quotes: it ends at a newline outside quotes.
    """
    out, pos, start, line, first_line = [], 0, 0, 1, 1
    quotes = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return out
        if fmt == "csv":
            quotes += data.count(b'"', pos, nl)
        pos = nl + 1
        if fmt == "jsonl" or quotes % 2 == 0:
            out.append((first_line, pos, data[start:nl]))
            start, quotes, first_line = pos, 0, line + 1
        line += 1


def _parse(path, data: bytes, fmt: str, labels, extra=()) -> tuple[list[tuple[int, dict]], int]:
    """Parse complete records → ``([(end offset, record)], header end offset)``."""
    import csv

    cols = columns(labels, extra)
    records = _records(data, fmt)
    out, header_end = [], 0
    if fmt == "csv":
        if not records:
            return [], 0
        _, header_end, header = records[0]
        got = next(csv.reader([header.decode(ENCODING, ERRORS)]))
        if got != cols:
            raise TableError(f"{path}: columns {got} do not match this model's {cols}")
        records = records[1:]
    for lineno, end, raw in records:
        try:
            text = raw.decode(ENCODING, ERRORS)
            if not text.strip():
                continue
            if fmt == "csv":
                cells = next(csv.reader(io.StringIO(text, newline="")))
                if len(cells) != len(cols):
                    raise ValueError(f"{len(cells)} fields, expected {len(cols)}")
                raw_rec = dict(zip(cols, cells))
            else:
                raw_rec = json.loads(text)
                if not isinstance(raw_rec, dict):
                    raise ValueError(f"not a JSON object: {text.strip()[:80]}")
                if set(raw_rec) != set(cols):
                    raise ValueError(f"keys {sorted(raw_rec)} do not match {cols}")
            rec = {c: _parse_value(c, raw_rec.get(c), (*labels, *extra)) for c in cols}
        except (ValueError, TypeError, StopIteration) as err:
            raise TableError(f"{path}, line {lineno}: cannot be parsed ({err})") from err
        out.append((end, rec))
    return out, header_end


def is_group_end(record: dict) -> bool:
    """Whether a row closes a group: a file row (no speaker, no start) or a speaker row."""
    if record.get("path") is None:
        return True
    return record.get("start") is None and record.get("speaker") is None


def read_table(path: str | os.PathLike, labels: Sequence[str], fmt: str | None = None,
               extra: Sequence[str] = ()) -> list:
    """All complete rows of a table as dicts (numbers as floats, empty as ``None``).

    A last record without its newline (an interrupted write) is ignored.

    Raises
    ------
    TableError
        If the columns differ from ``columns(labels, extra)`` or a complete record is not a row.
    """
    fmt = guess_format(path, fmt)
    records, _ = _parse(path, Path(path).read_bytes(), fmt, tuple(labels), tuple(extra))
    return [rec for _, rec in records]


def prepare_resume(path: str | os.PathLike, labels: Sequence[str],
                   fmt: str | None = None, extra: Sequence[str] = ()) -> list[dict]:
    """Make an existing table safe to append to, and return its rows.

    Cuts the file after its last file (or speaker) row: this drops a truncated last record
    and the rows of a file whose own row was never written (an interrupted run). Nothing
    before that point is changed. A missing file is fine (no rows).

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
    records, header_end = _parse(path, data, fmt, tuple(labels), tuple(extra))
    keep, n_kept = header_end, 0
    for i, (end, rec) in enumerate(records):
        if is_group_end(rec):
            keep, n_kept = end, i + 1
    kept = [r for _, r in records[:n_kept]]
    if keep < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(keep)
    return kept


# ---------------------------------------------------------------------------- provenance
def provenance_path(table: str | os.PathLike) -> Path:
    """Where the record of what made ``table`` lives: ``<table>.agegender.json``."""
    table = Path(table)
    return table.with_name(table.name + ".agegender.json")


def write_provenance(table: str | os.PathLike, record: dict) -> Path:
    """Write ``record`` beside ``table`` atomically (temporary file, then rename)."""
    path = provenance_path(table)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _flat(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_provenance(table: str | os.PathLike, record: dict) -> None:
    """Refuse to resume ``table`` unless it was made by the analysis ``record`` describes.

    Raises
    ------
    TableError
        Naming the first differing fields (or the missing record).

    Example
    -------
    >>> t = getfixture("tmp_path") / "t.csv"
    >>> _ = t.write_text("x\\n"); _ = write_provenance(t, {"analysis": {"window": 4.0}})
    >>> check_provenance(t, {"analysis": {"window": 2.0}})
    Traceback (most recent call last):
    ...
    agegender_sb.tables.TableError: ...: made by another analysis: analysis.window is 4.0 \
there, 2.0 here; resume with the same settings, or write a new table
    """
    path = provenance_path(table)
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TableError(f"{table}: no record of what made this table ({path.name} is "
                         "missing), so appending could mix two analyses; write a new "
                         "table") from None
    except (OSError, ValueError) as err:
        raise TableError(f"{path}: unreadable ({err})") from err
    a, b = _flat(old if isinstance(old, dict) else {}), _flat(record)
    # the model is identified by its fingerprint, not by the path or id it was loaded from
    differ = [k for k in sorted(set(a) | set(b)) if k not in ("created", "model.source")
              and a.get(k) != b.get(k)]
    if differ:
        said = "; ".join(f"{k} is {a.get(k)!r} there, {b.get(k)!r} here" for k in differ[:4])
        raise TableError(f"{table}: made by another analysis: {said}; resume with the same "
                         "settings, or write a new table")


def lock_table(table: str | os.PathLike):
    """Hold ``<table>.lock`` so that no second process writes ``table`` (released by the
    kernel if the process dies). Returns the held lock; ``release()`` it when done.

    Raises
    ------
    TableError
        If another process holds it.
    """
    from filelock import FileLock, Timeout

    table = Path(table)
    table.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(table.with_name(table.name + ".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TableError(f"{table}: another agegender process is writing this table "
                         f"(lock {lock.lock_file}); wait for it or choose another "
                         "output") from None
    return lock
