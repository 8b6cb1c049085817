"""The corpus job, from resolved inputs to a table: the one batch runner.

``agegender predict`` (one process or torchrun ranks) and
:meth:`~agegender_sb.inference.classifier.AgeGenderClassifier.predict_table` both call
:class:`BatchRunner`; it decides everything between the inputs and the table:

- **inputs once**: :func:`~agegender_sb.batch.inputs.resolve_inputs` gave unique real files
  (a file named twice is analysed once) and every path the run reads, which the output
  guard (:mod:`agegender_sb.batch.guard`) checked before the model was loaded;
- **flushed per file**: each file's rows reach the table as soon as the file is done,
  whatever its length (a killed run keeps every finished file's rows);
- **derived rows from file results**: speaker rows (``--speakers``) are pooled from the
  file rows as the table holds them, at the end of the run;
- **resume reconciles**: ``--resume`` keeps the rows of files analysed before (and of the
  part files of a killed distributed run), analyses the rest (failures are retried: their
  error rows go), and rewrites the table at the end as a fresh run would have written it:
  input order, one group per file, one row per speaker.

The table file is only ever replaced whole (a temporary file, then a rename) or appended to
with complete rows, so it never holds half a row or two analyses.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agegender_sb.batch.distributed import Distributed
from agegender_sb.batch.inputs import Inputs, file_key
from agegender_sb.batch.provenance import check_provenance, write_provenance
from agegender_sb.batch.rows import error_row, file_rows, is_failure, speaker_rows
from agegender_sb.batch.tables import (
    TableWriter,
    file_groups,
    format_record,
    read_table,
    rewrite_table,
    truncate_incomplete,
)
from agegender_sb.errors import TableError

__all__ = ["RunSummary", "BatchRunner", "part_path"]


@dataclass
class RunSummary:
    """What a run did: counts, and whether any file (or speaker) failed."""

    n_inputs: int = 0
    n_kept: int = 0  # files whose rows a resumed table already held
    n_analysed: int = 0
    n_failed: int = 0
    rows: list = field(default_factory=list)  # the rows, for in-memory runs

    @property
    def failed(self) -> bool:
        return self.n_failed > 0


def part_path(output: Path, rank: int, world: int) -> Path:
    """Where rank ``rank`` of ``world`` writes its rows during a distributed run."""
    return output.with_name(f"{output.name}.part{rank}-of-{world}.jsonl")


class BatchRunner:
    """Run the analysis over resolved inputs and write the table.

    Parameters
    ----------
    analyzer : Analyzer
        Built with its classifier and settings (the one place the model is called).
    inputs : Inputs
        From :func:`~agegender_sb.batch.inputs.resolve_inputs`.
    record : dict
        The provenance record of this analysis (model, backend, settings): written beside
        the table, compared on ``--resume``.
    segments : bool
        Also one row per window or turn.
    progress : callable, optional
        Called with each file's result (or error) as it completes.
    dist : Distributed, optional
        The torchrun launch (default: one process).
    calibration : Calibration, optional
        Adds its columns to every row (:mod:`agegender_sb.report.calibration`).
    """

    def __init__(self, analyzer, inputs: Inputs, record: dict, segments: bool = False,
                 progress: Callable | None = None, dist: Distributed | None = None,
                 calibration=None):
        self.analyzer = analyzer
        self.inputs = inputs
        self.record = record
        self.segments = segments
        self.labels = tuple(analyzer.clf.labels)
        self.progress = progress or (lambda result: None)
        self.dist = dist or Distributed({})
        self.device = str(getattr(analyzer.clf, "device", "cpu"))
        self.calibration = calibration
        self.extra = tuple(calibration.extra_columns()) if calibration is not None else ()

    def _calibrated(self, rows: list[dict]) -> list[dict]:
        if self.calibration is None:
            return rows
        return [self.calibration.calibrated_row(r) for r in rows]

    # ------------------------------------------------------------------ analysis
    def _analyse(self, items):
        """``(path, rows)`` per file as it completes (calibrated when asked); the file's own
        row last."""
        for path, res in self.analyzer.analyse_many(items):
            rows = [error_row(path, res)] if isinstance(res, Exception) else file_rows(
                path, res, self.segments)
            self.progress(res)
            yield path, self._calibrated(rows)

    def _derived(self, groups: dict, summary: RunSummary) -> list[dict]:
        """Speaker rows pooled from the file rows of ``groups`` (``{key: rows}``)."""
        if self.inputs.speakers is None:
            return []
        results = {path: groups[file_key(path)][-1] for path, _ in self.inputs.items
                   if file_key(path) in groups}
        rows = self._calibrated(speaker_rows(
            self.inputs.speakers, [p for p, _ in self.inputs.items], results, self.labels))
        summary.n_failed += sum(is_failure(r) for r in rows)
        return rows

    def _ordered(self, groups: dict) -> list[dict]:
        """Rows of ``groups`` in input order; groups of files not among the inputs (kept from
        an earlier run with other inputs) after them, in the order they had."""
        order = [file_key(p) for p, _ in self.inputs.items]
        keys = [k for k in order if k in groups] + [k for k in groups if k not in set(order)]
        return [row for k in keys for row in groups[k]]

    # ------------------------------------------------------------------ in memory, stream
    def run_to_rows(self, precise: bool = True) -> RunSummary:
        """Analyse every input and return the rows (``summary.rows``), speakers last."""
        summary = RunSummary(n_inputs=len(self.inputs.items))
        groups: dict = {}
        for path, rows in self._analyse(self.inputs.items):
            groups[file_key(path)] = rows if precise else self._formatted(rows)
            summary.n_analysed += 1
            summary.n_failed += is_failure(rows[-1])
        derived = self._derived(groups, summary)
        summary.rows = self._ordered(groups) + (derived if precise else self._formatted(derived))
        return summary

    def run_to_stream(self, writer: TableWriter) -> RunSummary:
        """Analyse every input, writing each file's rows as it completes; speakers last."""
        summary = RunSummary(n_inputs=len(self.inputs.items))
        groups: dict = {}
        for path, rows in self._analyse(self.inputs.items):
            for row in rows:
                writer.write(row)
            groups[file_key(path)] = self._formatted(rows)
            summary.n_analysed += 1
            summary.n_failed += is_failure(rows[-1])
        for row in self._derived(groups, summary):
            writer.write(row)
        return summary

    def _formatted(self, rows: list[dict]) -> list[dict]:
        """Rows as a table holds them (numbers rounded as written), so that speakers pooled
        from them equal those of a resumed table."""
        return [{**r, **format_record(r, self.labels, self.extra)} for r in rows]

    # ------------------------------------------------------------------ a table file
    def run_to_table(self, output: str | os.PathLike, fmt: str, resume: bool = False
                     ) -> RunSummary:
        """Analyse into the table ``output`` (one process, or this rank of a torchrun launch).

        Every rank must call it (it holds collectives). The caller holds the table's lock.

        Raises
        ------
        TableError
            A table that cannot be resumed (another analysis, unreadable rows), on every rank.
        """
        output = Path(output)
        dist = self.dist
        summary = RunSummary(n_inputs=len(self.inputs.items))
        problem = None
        kept: dict = {}
        if dist.is_main:
            try:
                kept = self._start(output, fmt, resume)
            except (TableError, OSError) as err:
                problem = err
        if dist.any_true(problem is not None, self.device):
            raise problem if problem is not None else TableError(
                f"{output}: cannot be resumed (see rank 0)")
        if not dist.is_main and resume:  # rank 0 has made the table hold what is kept
            kept = file_groups(self._read(output, fmt))
        summary.n_kept = len(kept)
        todo = [(p, t) for p, t in self.inputs.items if file_key(p) not in kept]
        mine = todo[dist.rank :: dist.world]
        if dist.active:
            writer = TableWriter(part_path(output, dist.rank, dist.world), self.labels,
                                 "jsonl", precise=True, extra=self.extra)
        else:
            writer = TableWriter(output, self.labels, fmt, append=True, extra=self.extra)
        with writer:
            for _, rows in self._analyse(mine):
                for row in rows:
                    writer.write(row)
                summary.n_analysed += 1
                summary.n_failed += is_failure(rows[-1])
        dist.barrier()
        problem = None
        if dist.is_main:
            try:
                self._finish(output, fmt, summary)
            except (TableError, OSError) as err:  # part files are kept
                problem = err
        failed = dist.any_true(summary.failed, self.device)
        if dist.any_true(problem is not None, self.device):
            raise problem if problem is not None else TableError(
                f"{output}: the ranks' rows could not be merged (see rank 0)")
        summary.n_failed = max(summary.n_failed, int(failed))
        return summary

    def _read(self, path: Path, fmt: str) -> list[dict]:
        return read_table(path, self.labels, fmt, self.extra)

    def _start(self, output: Path, fmt: str, resume: bool) -> dict:
        """Rank 0, before analysing: the table holds exactly the file groups kept (resumed
        table and leftover part files: finished files, failures dropped), in input order."""
        kept: dict = {}
        if resume and output.exists():
            check_provenance(output, self.record)
            truncate_incomplete(output, self.labels, fmt, self.extra)
            kept = file_groups(self._read(output, fmt))
            for part in sorted(output.parent.glob(f"{output.name}.part*-of-*.jsonl")):
                # a killed rank's last row may be cut short
                truncate_incomplete(part, self.labels, "jsonl", self.extra)
                for key, rows in file_groups(self._read(part, "jsonl")).items():
                    kept.setdefault(key, self._formatted(rows))
            inputs = {file_key(p) for p, _ in self.inputs.items}
            kept = {k: rows for k, rows in kept.items()  # this run's failures are retried
                    if not (k in inputs and is_failure(rows[-1]))}
        write_provenance(output, self.record)
        rewrite_table(output, self.labels, fmt, self._ordered(kept), self.extra)
        for part in output.parent.glob(f"{output.name}.part*-of-*.jsonl"):
            part.unlink()
        return kept

    def _finish(self, output: Path, fmt: str, summary: RunSummary) -> None:
        """Rank 0, after analysing: the ranks' part files merged, every group in input
        order, speaker rows pooled from the file rows; the table replaced in one rename."""
        groups = file_groups(self._read(output, fmt))
        parts = [part_path(output, r, self.dist.world) for r in range(self.dist.world)]
        if self.dist.active:
            for part in parts:
                for key, rows in file_groups(self._read(part, "jsonl")).items():
                    groups[key] = self._formatted(rows)
            missing = [p for p, _ in self.inputs.items if file_key(p) not in groups]
            if missing:
                raise TableError(f"distributed merge: {len(missing)} input(s) missing from "
                                 f"the part files (first: {missing[0]})")
        rewrite_table(output, self.labels, fmt,
                      self._ordered(groups) + self._derived(groups, summary), self.extra)
        if self.dist.active:
            for part in parts:
                part.unlink()

