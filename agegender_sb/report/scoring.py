"""Tables read back for reports: prediction rows, true labels matched to them, and the
paper's metrics (MAE per age band, gender accuracy and UAR).

Example
-------
>>> rows = [{"path": "a.wav", "speaker": None, "start": None, "age": 30.0, "gender": "male"},
...         {"path": "a.wav", "speaker": None, "start": 0.0, "age": 28.0, "gender": "male"},
...         {"path": None, "speaker": "s1", "start": None, "age": 30.0, "gender": "male"}]
>>> [row_kind(r) for r in rows]
['file', 'segment', 'speaker']
>>> truth_gender("F", ("female", "male", "child"), "truth.csv", 2)
'female'
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from agegender_sb.batch.tables import row_kind
from agegender_sb.defaults import AGE_BANDS
from agegender_sb.errors import ReportError

#: The error of reports (``agegender plot``): :class:`~agegender_sb.errors.ReportError`.
PlotError = ReportError


# ---------------------------------------------------------------------------- reading
def _labels_from_header(path: Path) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """Gender labels (the columns between ``age`` and ``gender``), the extra columns (between
    ``gender`` and ``error``: a calibration's) and the table's format."""
    from agegender_sb.batch.tables import guess_format

    fmt = guess_format(path)
    try:
        with open(path, "rb") as fh:
            start = fh.read(4096)
    except OSError as err:
        raise PlotError(f"{path}: cannot read the table ({err})") from err
    if b"\x00" in start:  # audio (RIFF/WAVE, FLAC, ...) or another binary file
        raise PlotError(f"{path}: a binary file, not a table written by agegender predict "
                        "(plot draws a CSV or JSONL table: agegender predict ... -o TABLE, "
                        "then agegender plot TABLE)")
    first = start.split(b"\n", 1)[0].decode("utf-8", errors="surrogateescape").rstrip("\r")
    if fmt == "csv":
        names = next(csv.reader([first]), [])
    else:
        try:
            names = list(json.loads(first)) if first.strip() else []
        except ValueError as err:
            raise PlotError(f"{path}: line 1 is not JSON ({err})") from err
    if "age" not in names or "gender" not in names or names.index("gender") < names.index(
            "age"):
        raise PlotError(f"{path}: not a table written by agegender predict (columns: "
                        f"{names[:12]})")
    extra = tuple(n for n in names[names.index("gender") + 1:] if n != "error")
    return tuple(names[names.index("age") + 1:names.index("gender")]), extra, fmt


def read_predictions(table: str | os.PathLike) -> tuple[list[dict], tuple[str, ...]]:
    """The rows of a table ``agegender predict`` wrote and its gender labels.

    Raises
    ------
    PlotError
        Naming the file: unreadable, not such a table, or without any row.
    """
    from agegender_sb.batch.tables import TableError, read_table

    path = Path(table)
    labels, extra, fmt = _labels_from_header(path)
    try:
        rows = read_table(path, labels, fmt, extra)
    except TableError as err:
        raise PlotError(str(err)) from err
    if not rows:
        raise PlotError(f"{path}: the table has no rows")
    return rows, labels


def has_age(row: dict) -> bool:
    return row.get("age") is not None and math.isfinite(row["age"])


def voices(rows: list[dict]) -> list[dict]:
    """One row per voice: file rows, except that a file analysed in speaker turns gives its
    ``file-speaker`` rows instead (the file row mixes its speakers). Rows without an age
    (failures, no speech) are left out."""
    turn_files = {r["path"] for r in rows if row_kind(r) == "file-speaker"}
    out = [r for r in rows if (row_kind(r) == "file" and r["path"] not in turn_files)
           or row_kind(r) == "file-speaker"]
    return [r for r in out if has_age(r)]


# ---------------------------------------------------------------------------- truth
def truth_gender(value: str, labels, where: str, line: int) -> str | None:
    """A truth table's gender value as one of ``labels``: the label itself (any case) or its
    unique first letter (Kaldi's ``spk2gender`` writes ``m``/``f``); empty → None.

    Raises
    ------
    PlotError
        For a value that names no label.
    """
    text = (value or "").strip().lower()
    if not text:
        return None
    for lab in labels:
        if text == lab.lower():
            return lab
    initial = [lab for lab in labels if lab.lower().startswith(text)]
    if len(text) == 1 and len(initial) == 1:
        return initial[0]
    raise PlotError(f"{where}, line {line}: gender {value!r} is none of the model's labels "
                    f"({', '.join(labels)})")


def read_truth(path: str | os.PathLike, labels) -> tuple[str, dict]:
    """Read a truth CSV: ``(key column, {key: {"age": float or None, "gender": label or
    None, "speaker": str or None}})``. The key column is ``path`` when present, else
    ``speaker``; with ``path`` as the key, a ``speaker`` column names each file's speaker.

    Raises
    ------
    PlotError
        Naming the file (and line): no key column, neither ``age`` nor ``gender``, an age
        that is not a finite number >= 0, a gender that names no label.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise PlotError(f"{path}: cannot read the truth table ({err})") from err
    reader = csv.DictReader(io.StringIO(text, newline=""))
    names = reader.fieldnames or []
    key = "path" if "path" in names else "speaker" if "speaker" in names else None
    if key is None or not {"age", "gender"} & set(names):
        raise PlotError(f"{path}: a truth table needs a 'path' or 'speaker' column and "
                        f"'age' and/or 'gender' columns (columns: {names})")
    out = {}
    for line, row in enumerate(reader, start=2):
        name = (row.get(key) or "").strip()
        if not name:
            continue
        age = (row.get("age") or "").strip()
        try:
            age = float(age) if age else None
        except ValueError:
            raise PlotError(f"{path}, line {line}: age {age!r} is not a number") from None
        if age is not None and not (math.isfinite(age) and age >= 0):
            raise PlotError(f"{path}, line {line}: age {row.get('age')!r} is not a finite "
                            "number >= 0 (leave the cell empty for an unknown age)")
        speaker = (row.get("speaker") or "").strip() if key == "path" else name
        out[name] = {"age": age, "gender": truth_gender(row.get("gender"), labels, str(path),
                                                        line), "speaker": speaker or None}
    if not out:
        raise PlotError(f"{path}: the truth table has no rows")
    return key, out


def _file_keys(path: str, base: Path) -> list[str]:
    p = Path(path)
    keys = [path, p.name, p.stem]
    try:
        keys.insert(1, str(p.resolve()))
    except OSError:
        pass
    return keys


def match_truth(rows: list[dict], key: str, truth: dict, base: Path | None = None) -> list:
    """``[(row, truth entry)]``: file rows by path (as written, resolved, file name or stem;
    truth paths relative to ``base`` are resolved there), speaker rows by speaker id
    (``--speakers`` rows, or turn speakers when the table has none)."""
    if key == "path":
        lookup = {}
        for name, entry in truth.items():
            lookup.setdefault(name, entry)
            if base is not None and not Path(name).is_absolute():
                lookup.setdefault(str((base / name).resolve()), entry)
        pairs = []
        for row in rows:
            if row_kind(row) != "file":
                continue
            for k in _file_keys(row["path"], base or Path(".")):
                if k in lookup:
                    pairs.append((row, lookup[k]))
                    break
        return pairs
    kind = "speaker" if any(row_kind(r) == "speaker" for r in rows) else "file-speaker"
    return [(r, truth[r["speaker"]]) for r in rows
            if row_kind(r) == kind and r["speaker"] in truth]


def score(pairs: list, labels, band_edges=AGE_BANDS) -> dict:
    """MAE (overall and per age band), accuracy, UAR and the confusion matrix of matched
    ``(row, truth)`` pairs, by :class:`~agegender_sb.training.metrics.AgeGenderStats`: the
    summary dict, plus ``pairs_age`` ``[(true, predicted)]`` for the scatter plot. Rows
    without a prediction are left out (their count is ``n_without_prediction``).

    Example
    -------
    >>> labels = ("female", "male")
    >>> pairs = [({"age": 30.0, "gender": "male"}, {"age": 25.0, "gender": "male"}),
    ...          ({"age": 50.0, "gender": "male"}, {"age": 40.0, "gender": "female"})]
    >>> s = score(pairs, labels)
    >>> s["mae"], s["acc"], s["uar"], s["confusion"]
    (7.5, 0.5, 0.5, [[0, 1], [0, 1]])
    """
    import torch

    from agegender_sb.training.metrics import AgeGenderStats

    stats = AgeGenderStats(labels, band_edges)
    scored = [(r, t) for r, t in pairs if has_age(r)]
    nan = float("nan")
    pred_age = torch.tensor([r["age"] for r, _ in scored], dtype=torch.float64)
    true_age = torch.tensor([t["age"] if t["age"] is not None else nan for _, t in scored],
                            dtype=torch.float64)
    pred_g = torch.tensor([labels.index(r["gender"]) for r, _ in scored], dtype=torch.long)
    true_g = torch.tensor([labels.index(t["gender"]) if t["gender"] else -1
                           for _, t in scored], dtype=torch.long)
    if scored:
        stats.append(pred_age, true_age, pred_g, true_g)
    out = stats.summarize()
    out.pop("loss")
    out["pairs_age"] = [(t["age"], r["age"]) for r, t in scored if t["age"] is not None]
    out["n_without_prediction"] = len(pairs) - len(scored)
    out["labels"] = list(labels)
    return out


