"""The training recipe's calibration: fitted on the best checkpoint's validation predictions,
written into the exported model folder, measured on the test set for ``results.json``.

Rows are those of ``test_predictions.csv`` (``ID, age, <probabilities>, gender, true_age,
true_gender``); each utterance is a file row of :mod:`agegender_sb.report.calibration`.

Example
-------
>>> rows = [{"ID": f"u{i}", "age": 30.0 + i, "f": 0.7, "m": 0.3, "gender": "f",
...          "true_age": 31.0, "true_gender": "f"} for i in range(9)]
>>> cal = fit_on_rows(rows, ("f", "m"), "fp", levels=(0.8,))
>>> cal.kinds["file"]["groups"]["all"]["half_width"]  # |errors| 1, 0, 1, ..., 7: the 8th
{'0.8': 6.0}
"""

from __future__ import annotations

import math

from agegender_sb.report.calibration import Calibration
from agegender_sb.report.evaluation import evaluate_pairs

__all__ = ["rows_to_pairs", "fit_on_rows", "results_entry"]


def rows_to_pairs(rows, labels) -> list:
    """``[(table row, truth entry)]`` for the recipe's prediction rows."""
    pairs = []
    for r in rows:
        true_age = r.get("true_age")
        known = true_age is not None and true_age != "" and math.isfinite(float(true_age))
        row = {"path": r["ID"], "speaker": None, "start": None, "age": float(r["age"]),
               "gender": r["gender"], "error": None,
               **{lab: float(r[lab]) for lab in labels}}
        pairs.append((row, {"age": float(true_age) if known else None,
                            "gender": r.get("true_gender") or None}))
    return pairs


def fit_on_rows(rows, labels, fingerprint: str, levels=(0.9,), min_group: int = 30,
                corpus: dict | None = None) -> Calibration:
    """A :class:`~agegender_sb.report.calibration.Calibration` of file rows from prediction rows.

    Raises
    ------
    CalibrationError
        Too few rows with a true age for the levels.
    """
    return Calibration.fit({"file": rows_to_pairs(rows, labels)}, labels, fingerprint,
                           levels, min_group, corpus)


def results_entry(cal: Calibration, rows, labels, replicates: int = 1000) -> dict:
    """``results.json``'s ``calibration`` entry: what was fitted and, on ``rows`` (the test
    set), the coverage and width of the intervals at each level and the gender calibration
    error before and after, each ``{"value", "low", "high", "n"}`` (bootstrap over
    utterances)."""
    pairs = rows_to_pairs(rows, labels)
    out = {"fitted_on": cal.corpus.get("split", "valid"), "levels": list(cal.levels),
           "n_fitted": cal.kinds["file"]["n"],
           "half_width": cal.kinds["file"]["groups"]["all"]["half_width"],
           "temperature": cal.kinds["file"]["temperature"], "test": {}}
    raw = evaluate_pairs(pairs, labels, by=(), replicates=replicates)["overall"]
    for level in cal.levels:
        applied = cal.with_options(level=level)
        got = evaluate_pairs([(applied.calibrated_row(r), t) for r, t in pairs], labels,
                             by=(), replicates=replicates)["overall"]
        entry = {k: got[k] for k in ("coverage", "width") if k in got}
        if "ece" in got:
            entry.update(ece_calibrated=got["ece"], ece_raw=raw["ece"])
        out["test"][f"{level:g}"] = entry
    return out
