"""Analysis results → table rows, and speakers pooled from file rows; used by the batch
runner (:mod:`agegender_sb.batch.runner`) only.

Row kinds and columns: see :mod:`agegender_sb.batch.tables`. Speaker rows (``--speakers``) are
pooled from file rows with the result type's one pooling rule
(:meth:`~agegender_sb.inference.results.AgeGenderPrediction.pool`, weights: seconds of
speech), taking the logarithm of the written probabilities as logits (equal up to a constant
per row, so the pooled probabilities are the same).
"""

from __future__ import annotations

import math

import torch

from agegender_sb.batch.tables import row_status
from agegender_sb.inference.results import (
    AgeGenderPrediction,
    FileResult,
    SpanResult,
    Status,
)

__all__ = ["file_rows", "error_row", "speaker_row", "speaker_rows", "is_failure"]

# Probabilities are written with 4 decimals: below this a written 0 says nothing more.
_PROB_FLOOR = 5e-5


def _values(result: SpanResult | FileResult) -> dict:
    if result.prediction is None:
        return {"error": result.message}
    return {"error": None, **result.prediction.to_records()[0]}


def file_rows(path: str, result: FileResult, segments: bool = False) -> list[dict]:
    """The rows of one analysed file, its own row last.

    With turns: one row per named speaker of the file (and per turn with ``segments``, with
    or without a speaker); without: one row per window of a windowed file with ``segments``.
    """
    rows = []
    if segments:
        for span in result.spans:
            if result.turns:
                rows.append({"path": path, "speaker": span.speaker, "start": span.start,
                             "end": span.end, "duration": span.duration,
                             "speech": span.speech, **_values(span)})
            elif span.windowed:
                for (start, end), speech, rec in zip(
                        span.windows, span.window_speech, span.window_predictions.to_records()):
                    rows.append({"path": path, "start": start, "end": end,
                                 "duration": end - start, "speech": speech, "error": None,
                                 **rec})
    for speaker, pooled in result.speakers().items():
        total = sum(s.duration for s in result.spans if s.speaker == speaker)
        # "_span" (not a column): from its first turn's start to its last turn's end,
        # the row's place in predict_table's segmented index
        rows.append({"path": path, "speaker": speaker, "duration": total,
                     "speech": pooled.speech, "_span": (pooled.start, pooled.end),
                     **_values(pooled)})
    rows.append({"path": path, "duration": result.duration, "speech": result.speech,
                 **_values(result)})
    return rows


def error_row(path: str, err: Exception) -> dict:
    """The row of a file that could not be analysed."""
    return {"path": path, "error": str(err) or type(err).__name__}


def is_failure(row: dict) -> bool:
    """Whether a row reports a failure (no speech, no turns are results, not failures)."""
    return row_status(row).is_failure


def speaker_row(speaker: str, rows: list[dict], labels) -> dict:
    """One row for ``speaker``: its files' rows pooled by seconds of speech.

    Example
    -------
    >>> a = {"age": 20.0, "female": 0.9, "male": 0.05, "child": 0.05, "speech": 3.0,
    ...      "duration": 3.0, "error": None}
    >>> b = {"age": 40.0, "female": 0.1, "male": 0.8, "child": 0.1, "speech": 1.0,
    ...      "duration": 2.0, "error": None}
    >>> r = speaker_row("s1", [a, b], ("female", "male", "child"))
    >>> r["age"], r["gender"], r["duration"], r["speech"]
    (25.0, 'female', 5.0, 4.0)
    """
    ok = [r for r in rows if row_status(r) is Status.OK and (r.get("speech") or 0) > 0]
    if not ok:
        if rows and not any(is_failure(r) for r in rows):  # a result, not a failure
            return {"speaker": speaker, "error": Status.NO_SPEECH.value}
        return {"speaker": speaker, "error": f"speaker {speaker}: none of its {len(rows)} "
                                             "file(s) was analysed successfully"}
    logits = torch.tensor([[math.log(max(r[lab], _PROB_FLOOR)) for lab in labels] for r in ok],
                          dtype=torch.float64)
    ages = torch.tensor([r["age"] for r in ok], dtype=torch.float64)  # years: scale 1
    pred = AgeGenderPrediction.from_outputs(ages, logits, torch.zeros(len(ok), 1), labels,
                                            age_scale=1.0)
    pooled = pred.pool([r["speech"] for r in ok]).to_records()[0]
    return {"speaker": speaker, "duration": float(sum(r.get("duration") or 0 for r in ok)),
            "speech": float(sum(r["speech"] for r in ok)), "error": None, **pooled}


def speaker_rows(spk_map, paths, results: dict, labels) -> list[dict]:
    """One row per speaker of ``spk_map`` among ``paths``, pooled from the file rows in
    ``results`` (``{path: file row}``)."""
    return [speaker_row(spk, [results.get(p, {"error": "not analysed"}) for p in spk_paths],
                        labels)
            for spk, spk_paths in spk_map.speakers_of(paths).items()]
