"""Analysis results → table rows, and speakers pooled from rows; shared by the command line
(:mod:`agegender_sb.cli`) and :meth:`AgeGenderClassifier.predict_table`.

Row kinds and columns: see :mod:`agegender_sb.batch.tables`. Speaker rows (``--speakers``) are
pooled from file rows with the result type's one pooling rule
(:meth:`~agegender_sb.inference.results.AgeGenderPrediction.pool`, weights: seconds of speech),
taking
the logarithm of the written probabilities as logits (equal up to a constant per row, so the
pooled probabilities are the same).
"""

from __future__ import annotations

import math

import torch

from agegender_sb.inference.analysis import NO_SPEECH, FileResult, SpanResult
from agegender_sb.inference.results import AgeGenderPrediction

__all__ = ["file_rows", "error_row", "speaker_row", "speaker_rows", "is_failure",
           "iter_file_rows"]

# Probabilities are written with 4 decimals: below this a written 0 says nothing more.
_PROB_FLOOR = 5e-5


def _values(span: SpanResult, pred=None) -> dict:
    pred = span.prediction if pred is None else pred
    if pred is None:
        return {"error": span.error or NO_SPEECH}
    return {"error": None, **pred.to_records()[0]}


def file_rows(path: str, result: FileResult, segments: bool = False) -> list[dict]:
    """The rows of one analysed file, its own row last.

    With turns: one row per speaker of the file (and per turn with ``segments``); without:
    one row per window of a windowed file with ``segments``.
    """
    rows = []
    turns = any(s.speaker is not None for s in result.spans)
    if segments:
        for span in result.spans:
            if turns:
                rows.append({"path": path, "speaker": span.speaker, "start": span.start,
                             "end": span.end, "duration": span.duration,
                             "speech": span.speech, **_values(span)})
            elif span.windowed and span.window_predictions is not None:
                for (start, end), speech, rec in zip(
                        span.windows, span.window_speech, span.window_predictions.to_records()):
                    rows.append({"path": path, "start": start, "end": end,
                                 "duration": end - start, "speech": speech, "error": None,
                                 **rec})
    if turns:
        for speaker, pooled in result.speakers().items():
            total = sum(s.duration for s in result.spans if s.speaker == speaker)
            # "_span" (not a column): from its first turn's start to its last turn's end,
            # the row's place in predict_table's segmented index
            rows.append({"path": path, "speaker": speaker, "duration": total,
                         "speech": pooled.speech, "_span": (pooled.start, pooled.end),
                         **_values(pooled)})
    own = {"path": path, "duration": result.duration, "speech": result.speech}
    if result.prediction is None:
        own["error"] = result.error or NO_SPEECH
    else:
        own.update(error=None, **result.prediction.to_records()[0])
    rows.append(own)
    return rows


def error_row(path: str, err: Exception) -> dict:
    """The row of a file that could not be analysed."""
    return {"path": path, "error": str(err) or type(err).__name__}


def is_failure(row: dict) -> bool:
    """Whether a row reports a failure (no speech is a result, not a failure)."""
    return row.get("error") is not None and row.get("error") != NO_SPEECH


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
    ok = [r for r in rows if r.get("error") is None and (r.get("speech") or 0) > 0]
    if not ok:
        if rows and all(r.get("error") == NO_SPEECH for r in rows):
            return {"speaker": speaker, "error": NO_SPEECH}  # a result, not a failure
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


def iter_file_rows(analyzer, items, segments: bool = False):
    """``(path, result or error, rows)`` for each input item, in order (see
    :meth:`~agegender_sb.inference.analysis.Analyzer.analyse_many`); the file's own row is last."""
    for path, res in analyzer.analyse_many(items):
        if isinstance(res, Exception):
            yield path, res, [error_row(path, res)]
        else:
            yield path, res, file_rows(path, res, segments)


def speaker_rows(spk_map, paths, results: dict, labels, skip=()) -> list[dict]:
    """One row per speaker of ``spk_map`` among ``paths`` (not in ``skip``), pooled from the
    file rows in ``results`` (``{path: file row}``)."""
    return [speaker_row(spk, [results.get(p, {"error": "not analysed"}) for p in spk_paths],
                        labels)
            for spk, spk_paths in spk_map.speakers_of(paths).items() if spk not in skip]
