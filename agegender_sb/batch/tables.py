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

In CSV, numbers have exactly that many decimals (``2.580``); in JSONL they are JSON numbers
with at most that many (``2.58``).

File names are written as the operating system gives them: UTF-8 text, and bytes that are not
UTF-8 unchanged (Python's ``surrogateescape``), so every name round-trips through a table and
``--resume``; CSV fields holding a comma, a quote, a line break or a carriage return are
quoted (RFC 4180). Beside a table written to a file, ``<table>.agegender.json`` records what
made it; ``--resume`` refuses a table made by another analysis, and ``<table>.lock`` keeps a
second process from writing the same table (:mod:`agegender_sb.batch.provenance`).
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agegender_sb.batch.inputs import file_key
from agegender_sb.errors import TableError
from agegender_sb.inference.results import Status

__all__ = [
    "FORMATS",
    "TableError",
    "columns",
    "guess_format",
    "format_record",
    "row_kind",
    "row_status",
    "TableWriter",
    "read_table",
    "file_groups",
    "truncate_incomplete",
    "rewrite_table",
]

FORMATS = ("csv", "jsonl")
ENCODING, ERRORS = "utf-8", "surrogateescape"

# Decimals per column kind.
_SECONDS, _YEARS, _PROB = 3, 2, 4
_FIXED = ("path", "speaker", "start", "end", "duration", "speech", "age", "gender", "error")



def columns(labels: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """Output columns for a model with gender ``labels`` (in the model's label order).

    ``extra``: more number columns between ``gender`` and ``error`` (a calibration's
    ``age_low``, ``age_high``, ``p_<label>``, ``p_age_<lo>_<hi>``: see
    :mod:`agegender_sb.report.calibration`).

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


def _digits(col: str, labels, extra=()) -> int | None:
    """Decimals a column's numbers are written with (None: not a number column)."""
    if col in ("start", "end", "duration", "speech"):
        return _SECONDS
    if col in ("age", "age_low", "age_high"):
        return _YEARS
    return _PROB if col in labels or col in extra else None


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


def row_kind(row: dict) -> str:
    """``"file"``, ``"segment"`` (a window or turn), ``"file-speaker"`` (a speaker's turns in
    one file, pooled) or ``"speaker"`` (``--speakers``: pooled over files): the one place
    row kinds are told apart.

    Example
    -------
    >>> [row_kind(r) for r in ({"path": "a.wav"}, {"path": "a.wav", "start": 0.0},
    ...  {"path": "a.wav", "speaker": "s1"}, {"path": None, "speaker": "s1"})]
    ['file', 'segment', 'file-speaker', 'speaker']
    """
    if row.get("path") is None:
        return "speaker"
    if row.get("start") is not None:
        return "segment"
    return "file-speaker" if row.get("speaker") is not None else "file"


def row_status(row: dict) -> Status:
    """What a row's ``error`` column says: a result (``OK``), one of the statuses that are
    results without age and gender (``NO_SPEECH``, ``NO_TURNS``), or a failure.

    Example
    -------
    >>> [row_status({"error": e}).name for e in (None, "no speech detected", "x.wav: bad")]
    ['OK', 'NO_SPEECH', 'FAILED']
    """
    error = row.get("error")
    if error is None:
        return Status.OK
    return _STATUS_OF.get(error, Status.FAILED)


_STATUS_OF = {s.value: s for s in (Status.NO_SPEECH, Status.NO_TURNS)}


def _number(value: float, digits: int | None) -> str:
    if not math.isfinite(value):
        return repr(value)
    return f"{value:.{digits}f}" if digits is not None else repr(value)


def _csv_cell(value, digits: int | None = None) -> str:
    if value is None:
        return ""
    text = _number(value, digits) if isinstance(value, float) else str(value)
    if any(c in text for c in ',"\r\n') or text != text.strip():
        text = '"' + text.replace('"', '""') + '"'
    return text


def _csv_line(values: Sequence, digits: Sequence | None = None) -> str:
    """One RFC 4180 record (``\\n``-terminated), quoting what needs it, ``\\r`` included;
    numbers with ``digits`` decimals each (None: as Python writes them).

    Example
    -------
    >>> _csv_line(["a,b", None, 1.5, 'x"\\ry'], [None, None, 3, None])
    '"a,b",,1.500,"x""\\ry"\\n'
    """
    digits = digits or [None] * len(values)
    return ",".join(_csv_cell(v, d) for v, d in zip(values, digits)) + "\n"


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
                 extra=()):
        self.labels, self.extra = tuple(labels), tuple(extra)
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
        self._digits = [None if precise else _digits(c, self.labels, self.extra)
                        for c in self.columns]

    def write(self, record: dict) -> None:
        """Write one row and flush it."""
        if self.precise:
            row = {c: record.get(c) for c in self.columns}
        else:
            row = format_record(record, self.labels, self.extra)
        if self.fmt == "csv":
            line = _csv_line([row[c] for c in self.columns], self._digits)
        else:
            line = json.dumps(row, ensure_ascii=False) + "\n"
        if not self._own:  # a terminal or pipe may not take undecodable names
            line = line.encode(ENCODING, ERRORS).decode(ENCODING, "backslashreplace")
        self._fh.write(line)
        self._fh.flush()

    def sync(self) -> None:
        """Push what was written to the disk (``fsync``), for a file about to be renamed."""
        if self._own:
            self._fh.flush()
            os.fsync(self._fh.fileno())

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


def _ends_group(record: dict) -> bool:
    """Whether a row closes a group: a file row (its group: its segment and turn-speaker rows
    before it) or a speaker row."""
    return row_kind(record) in ("file", "speaker")


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


def truncate_incomplete(path: str | os.PathLike, labels: Sequence[str],
                        fmt: str | None = None, extra: Sequence[str] = ()) -> None:
    """Cut a table after its last complete group: a truncated last record and the rows of a
    file whose own row was never written (an interrupted run) go; nothing before changes.

    Raises
    ------
    TableError
        As :func:`read_table`.
    """
    path = Path(path)
    fmt = guess_format(path, fmt)
    data = path.read_bytes()
    records, header_end = _parse(path, data, fmt, tuple(labels), tuple(extra))
    keep = header_end
    for end, rec in records:
        if _ends_group(rec):
            keep = end
    if keep < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(keep)


def file_groups(rows: Sequence[dict]) -> dict:
    """``{file key: rows}``: each file's complete group (its segment and turn-speaker rows,
    its own row last) in table order; speaker rows and an unfinished last group left out.
    Keys are :func:`~agegender_sb.batch.inputs.file_key` of the path.
    """
    groups: dict = {}
    pending: list = []
    for row in rows:
        kind = row_kind(row)
        if kind == "speaker":
            pending = []
            continue
        pending.append(row)
        if kind == "file":
            groups[file_key(row["path"])] = pending
            pending = []
    return groups


def rewrite_table(path: str | os.PathLike, labels: Sequence[str], fmt: str,
                  rows: Sequence[dict], extra: Sequence[str] = ()) -> None:
    """Replace the table at ``path`` by ``rows`` in one step (a temporary file beside it,
    flushed to disk, then renamed over it): a reader or a kill sees the old table or the
    new one, never a mix."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        with TableWriter(tmp, labels, fmt, extra=extra) as writer:
            for row in rows:
                writer.write(row)
            writer.sync()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
