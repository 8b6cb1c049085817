"""Any table (CSV or TSV) with an audio path column and age and/or gender columns.

Column names are options: ``path_column`` (required), ``age_column`` and/or
``gender_column`` (at least one), ``speaker_column`` (recommended: without it every
file counts as its own speaker, so carved splits are only file-disjoint),
``split_column`` (values ``train``, ``valid``/``dev``/``validation``/``val``,
``test``; otherwise ``prepare`` splits speaker-disjointly), ``id_column`` (default:
the file name without extension, or the path relative to the table if names repeat),
``start_column``/``stop_column`` (segment bounds in seconds, optional).

Relative paths are resolved against the table's folder. Ages are numbers in years
(empty/``NA``/``unknown`` -> empty). Gender values are normalised with
:func:`corpora.common.normalise_gender` (m/male/M/man, f/female/F/woman,
child/c/kid...); anything else becomes empty and the distinct unrecognised values
are logged.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from pathlib import Path

from .common import (
    PrepareError,
    Utterance,
    audio_duration,
    normalise_gender,
    parse_age,
    resolve_path,
)

logger = logging.getLogger(__name__)

_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "validation": "valid",
    "val": "valid",
    "dev": "valid",
    "devel": "valid",
    "development": "valid",
    "test": "test",
    "eval": "test",
    "evaluation": "test",
}


def read_csv_table(
    data_folder: str | Path,
    table: str | Path | None = None,
    path_column: str = "path",
    age_column: str | None = None,
    gender_column: str | None = None,
    speaker_column: str | None = None,
    split_column: str | None = None,
    id_column: str | None = None,
    start_column: str | None = None,
    stop_column: str | None = None,
    delimiter: str | None = None,
) -> dict[str, list[Utterance]]:
    """Read a generic label table.

    Parameters
    ----------
    data_folder : path-like
        The table itself, or the folder holding it (then ``table`` names it).
    table : path-like, optional
        Table file, relative to ``data_folder`` unless absolute.
    path_column, age_column, gender_column, speaker_column, split_column : str
        Column names (see module docstring); at least one of age/gender is required.
    id_column, start_column, stop_column : str, optional
        Further optional columns.
    delimiter : str, optional
        Field separator; default tab for ``.tsv``/``.tab`` files, else comma.

    Returns
    -------
    dict
        ``split -> rows`` when ``split_column`` is given, else ``{"all": rows}``.
    """
    table_path = label_files(data_folder, table)[0]
    if not table_path.exists():
        raise PrepareError("table not found", table_path)
    if table_path.is_dir():
        raise PrepareError("is a folder: name the table with --table", table_path)
    if age_column is None and gender_column is None:
        raise PrepareError("give --age_column and/or --gender_column", table_path)
    if delimiter is None:
        delimiter = "\t" if table_path.suffix.lower() in (".tsv", ".tab") else ","
    root = table_path.parent

    records = []
    unknown_genders: Counter = Counter()
    with open(table_path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        for option, column in (
            ("path_column", path_column),
            ("age_column", age_column),
            ("gender_column", gender_column),
            ("speaker_column", speaker_column),
            ("split_column", split_column),
            ("id_column", id_column),
            ("start_column", start_column),
            ("stop_column", stop_column),
        ):
            if column is not None and column not in header:
                raise PrepareError(f"{option}={column!r} not in header {header}", table_path, 1)
        for row in reader:
            number = reader.line_num
            if None in row or any(v is None for v in row.values()):
                raise PrepareError("wrong number of fields", table_path, number)
            if not any(v.strip() for v in row.values()):
                continue
            value = row[path_column].strip()
            if not value:
                raise PrepareError("empty path", table_path, number)
            wav = resolve_path(value, root)
            age = parse_age(row[age_column], table_path, number) if age_column else None
            gender = None
            if gender_column:
                raw = row[gender_column].strip()
                gender = normalise_gender(raw)
                if gender is None and raw:
                    unknown_genders[raw] += 1
            split = "all"
            if split_column:
                raw_split = row[split_column].strip().lower()
                if raw_split not in _SPLIT_NAMES:
                    raise PrepareError(
                        f"unknown split {row[split_column]!r} (use train/valid/test)",
                        table_path,
                        number,
                    )
                split = _SPLIT_NAMES[raw_split]
            start = stop = None
            if start_column and row[start_column].strip():
                start = _seconds(row[start_column], table_path, number)
            if stop_column and row[stop_column].strip():
                stop = _seconds(row[stop_column], table_path, number)
            speaker = row[speaker_column].strip() if speaker_column else ""
            records.append(
                dict(
                    number=number,
                    wav=wav,
                    age=age,
                    gender=gender,
                    split=split,
                    start=start,
                    stop=stop,
                    speaker=speaker,
                    id=row[id_column].strip() if id_column else None,
                )
            )
    if unknown_genders:
        logger.warning(
            "%s: gender values left empty (not male/female/child): %s",
            table_path.name,
            dict(unknown_genders),
        )
    if id_column is None:
        stems = Counter(r["wav"].stem for r in records)
        for r in records:
            if stems[r["wav"].stem] == 1:
                r["id"] = r["wav"].stem
            else:
                try:
                    rel = r["wav"].relative_to(root)
                except ValueError:
                    rel = Path(*r["wav"].parts[1:])
                r["id"] = rel.with_suffix("").as_posix().replace("/", "__")
    if not speaker_column:
        logger.warning("no --speaker_column: every file is its own speaker")

    out: dict[str, list[Utterance]] = {}
    seen: dict[str, int] = {}
    durations: dict[Path, float] = {}
    for r in records:
        if not r["id"]:
            raise PrepareError("empty ID", table_path, r["number"])
        if r["id"] in seen:
            raise PrepareError(
                f"duplicate ID {r['id']!r} (also line {seen[r['id']]})", table_path, r["number"]
            )
        seen[r["id"]] = r["number"]
        if r["wav"] not in durations:
            if not r["wav"].is_file():
                raise PrepareError(f"audio file not found: {r['wav']}", table_path, r["number"])
            durations[r["wav"]] = audio_duration(r["wav"])
        file_dur = durations[r["wav"]]
        start, stop = r["start"], r["stop"]
        if start is None and stop is None:
            duration = file_dur
        else:
            start = start or 0.0
            stop = file_dur if stop is None else stop
            if stop <= start or stop > file_dur + 0.05:
                raise PrepareError(f"invalid segment {start}-{stop}", table_path, r["number"])
            duration = stop - start
        out.setdefault(r["split"], []).append(
            Utterance(
                id=r["id"],
                wav=r["wav"],
                duration=duration,
                speaker=r["speaker"] or r["id"],
                age=r["age"],
                gender=r["gender"],
                start=start,
                stop=stop,
            )
        )
    return out


def _seconds(value: str, path: Path, line: int) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise PrepareError(f"invalid time {value!r}", path, line) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise PrepareError(f"invalid time {value!r} (need a finite number >= 0)", path, line)
    return seconds


def label_files(data_folder: str | Path, table: str | Path | None = None, **_options) -> list[Path]:
    """The table ``read_csv_table`` reads: ``data_folder`` itself, or ``table`` in it."""
    base = Path(data_folder).expanduser()
    return [resolve_path(str(table), base) if table is not None else base.resolve()]
