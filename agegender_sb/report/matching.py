"""Truth entries matched to the rows of a table, per row kind, and the speaker of each match.

A truth table (read by :func:`agegender_sb.report.scoring.read_truth`) names files (``path``) or
speakers (``speaker``). Its entries apply to:

- by ``path``: file rows (as :func:`agegender_sb.report.scoring.match_truth` matches them) and the
  window rows of those files (``--segments`` without turns: the same voice);
- by ``speaker``: speaker rows (``--speakers``), turn-speaker rows and turn rows.

Each kind of row has its own error distribution (a 4-second window errs more than a whole
file), so calibration and evaluation keep the kinds apart.

Example
-------
>>> rows = [{"path": "a.wav", "speaker": None, "start": 0.0, "age": 30.0},
...         {"path": "a.wav", "speaker": None, "start": None, "age": 31.0}]
>>> found = match_by_kind(rows, "path", {"a.wav": {"age": 33.0, "gender": None}})
>>> sorted(found), primary_kind(found)
(['file', 'segment'], 'file')
"""

from __future__ import annotations

from pathlib import Path

from agegender_sb.report.scoring import match_truth, row_kind

__all__ = ["KINDS", "match_by_kind", "primary_kind", "speaker_of"]

#: Row kinds, in the order a report lists them.
KINDS = ("file", "segment", "file-speaker", "speaker")


def match_by_kind(rows: list[dict], key: str, truth: dict,
                  base: Path | None = None) -> dict[str, list]:
    """``{kind: [(row, truth entry)]}`` for each kind of row the truth applies to (kinds
    without a match left out)."""
    out: dict[str, list] = {}
    if key == "path":
        files = match_truth(rows, "path", truth, base)
        out["file"] = files
        entry_of = {r["path"]: e for r, e in files}
        out["segment"] = [(r, entry_of[r["path"]]) for r in rows
                          if row_kind(r) == "segment" and r.get("speaker") is None
                          and r["path"] in entry_of]
    else:
        for kind in ("speaker", "file-speaker", "segment"):
            out[kind] = [(r, truth[r["speaker"]]) for r in rows
                         if row_kind(r) == kind and r.get("speaker") in truth]
    return {k: v for k, v in out.items() if v}


def primary_kind(matched: dict) -> str | None:
    """The kind a report scores by default: files for a truth by path; for a truth by
    speaker, speaker rows, else turn-speaker rows, else turns (as ``plot --truth``)."""
    for kind in ("file", "speaker", "file-speaker", "segment"):
        if matched.get(kind):
            return kind
    return None


def speaker_of(row: dict, entry: dict, spk_map=None) -> str | None:
    """The speaker a matched row belongs to: the row's own speaker, else the truth's
    ``speaker`` column, else the ``--speakers`` map's speaker of the row's file."""
    if row.get("speaker") is not None:
        return row["speaker"]
    if entry.get("speaker"):
        return entry["speaker"]
    if spk_map is not None and row.get("path") is not None:
        return spk_map.speaker(row["path"])
    return None
