"""The corpus job as a pandas DataFrame: what ``agegender predict`` writes, from the same batch
runner, indexed as audformat indexes segmented tables (``file``, ``start``, ``end``)."""

from __future__ import annotations

import os

from agegender_sb.batch.inputs import resolve_inputs
from agegender_sb.batch.runner import BatchRunner
from agegender_sb.batch.tables import columns

__all__ = ["table_frame"]


def table_frame(clf, inputs, segments: bool = False, speakers=None, rttm=None,
                precise: bool = False, progress: bool = False, cal=None, **settings):
    """:meth:`~agegender_sb.inference.classifier.AgeGenderClassifier.predict_table`'s work
    (see there); ``cal`` a :class:`~agegender_sb.report.calibration.Calibration` or None."""
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError('predict_table needs pandas: pip install "agegender_sb[table]"'
                          ) from err
    from tqdm import tqdm

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    resolved = resolve_inputs(inputs, rttm, speakers)
    analyzer = clf.analyzer(**settings)
    with tqdm(total=len(resolved.items), disable=not progress, unit="file") as bar:
        runner = BatchRunner(analyzer, resolved, {}, segments,
                             progress=lambda _: bar.update(1), calibration=cal)
        rows = runner.run_to_rows(precise=precise).rows
    extra = cal.extra_columns() if cal is not None else ()
    cols = [c for c in columns(clf.labels, extra) if c not in ("start", "end")]
    spans = [r.get("_span") or (r.get("start") or 0.0, r.get("end")) for r in rows]
    frame = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
    index = pd.MultiIndex.from_arrays([
        [r.get("path") for r in rows],
        pd.to_timedelta([s for s, _ in spans], unit="s"),
        pd.to_timedelta([float("nan") if e is None else e for _, e in spans], unit="s"),
    ], names=["file", "start", "end"])
    return frame.set_index(index)
