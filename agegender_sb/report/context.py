"""What a report says besides its panels: the table's model and settings (its provenance
record ``<table>.agegender.json``), the counts of rows without an answer, and speakers pooled
from file rows for tables made without ``agegender predict --speakers``.

Example
-------
>>> rows = [{"path": "a.wav", "start": None, "speaker": None, "error": None, "age": 30.0},
...         {"path": "b.wav", "start": None, "speaker": None, "error": "no speech detected"},
...         {"path": "c.wav", "start": None, "speaker": None, "error": "c.wav: not audio"}]
>>> outcome_counts(rows)
{'answered': 1, 'no speech': 1, 'errors': 1}
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from agegender_sb.batch.tables import row_status
from agegender_sb.inference.results import Status
from agegender_sb.report.scoring import row_kind

__all__ = ["outcome_counts", "provenance_lines", "pooled_speaker_rows"]



def outcome_counts(rows: list[dict]) -> dict:
    """Files (rows of kind ``file``) answered, without speech, and failed."""
    files = [r for r in rows if row_kind(r) == "file"]
    statuses = [row_status(r) for r in files]
    no_speech = sum(1 for s in statuses if s in (Status.NO_SPEECH, Status.NO_TURNS))
    errors = sum(1 for s in statuses if s.is_failure)
    return {"answered": len(files) - no_speech - errors, "no speech": no_speech,
            "errors": errors}


def provenance_lines(table: str | os.PathLike) -> list[str]:
    """Model and settings from ``<table>.agegender.json`` as short lines (empty without it).

    Read defensively: fields it does not know are shown as ``key=value``; an unreadable
    record gives one line saying so, never an error (the picture is still worth drawing).
    """
    path = Path(f"{os.fspath(table)}.agegender.json")
    if not path.is_file():
        return []
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return [f"(provenance record {path.name} unreadable: {err})"]
    if not isinstance(record, dict):
        return [f"(provenance record {path.name} is not a JSON object)"]
    model = record.get("model") if isinstance(record.get("model"), dict) else {}
    head = []
    if model.get("source") is not None:
        head.append(f"model {model['source']}")
    if model.get("fingerprint"):
        head.append(f"weights {model['fingerprint']}")
    for key in ("backend", "precision", "fast_path"):
        if record.get(key) is not None:
            head.append(f"{key} {record[key]}")
    if record.get("agegender_sb"):
        head.append(f"agegender_sb {record['agegender_sb']}")
    lines = ["; ".join(head)] if head else []
    analysis = record.get("analysis")
    if isinstance(analysis, dict) and analysis:
        detector = analysis.get("detector")
        rest = ", ".join(f"{k}={v}" for k, v in sorted(analysis.items()) if k != "detector")
        if rest:
            lines.append(f"analysis: {rest}")
        if detector is not None:
            lines.append(f"detector: {detector}")
    return lines


def pooled_speaker_rows(rows: list[dict], spk_map, labels) -> list[dict]:
    """Speaker rows pooled from the table's file rows by ``spk_map`` (a speakers file), by
    seconds of speech, as ``agegender predict --speakers`` pools them
    (:func:`agegender_sb.batch.rows.speaker_row`). Speakers none of whose files has an
    answer get a row without an age."""
    from agegender_sb.batch.rows import speaker_row

    files = {r["path"]: r for r in rows if row_kind(r) == "file"}
    out = []
    for speaker, paths in spk_map.speakers_of(list(files)).items():
        file_rows = [files[p] for p in paths
                     if files[p].get("age") is None or math.isfinite(files[p]["age"])]
        row = speaker_row(speaker, file_rows, labels)
        out.append({"path": None, "start": None, "end": None, **row})
    return out
