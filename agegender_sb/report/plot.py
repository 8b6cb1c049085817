"""A corpus report from a table ``agegender predict`` wrote: ``agegender plot``.

Panels (only those there is something for; no placeholders):

1. the predicted age distribution per predicted gender, over the table's voices: one per
   file, or, for a file analysed in speaker turns, one per speaker of the file;
2. per-speaker ages (speaker rows of ``--speakers``, or the speakers of turns) with the
   spread of the rows under them: turns of a turn speaker, files of a ``--speakers``
   speaker when the speaker file is given; without speakers, the windows of windowed files;
3. with a truth table (a ``path`` or ``speaker`` column and ``age`` and/or ``gender``
   columns), the predicted against the true age with the identity line, and
4. the gender confusion matrix, with MAE, accuracy and UAR from
   :class:`agegender_sb.training.metrics.AgeGenderStats` (the training recipe's metric code),
5. and the age MAE per true age band.

Below them: how many files were answered, had no speech, or failed, and the model and
settings from the table's provenance record (``<table>.agegender.json``). With a speakers
file (``--speakers``) and a table made without ``agegender predict --speakers``, the speakers
are pooled here from the file rows, as the command pools them.

matplotlib is optional (``pip install "agegender_sb[plots]"``); the table is read with
:func:`agegender_sb.batch.tables.read_table` (no pandas needed).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from agegender_sb.report.context import outcome_counts, pooled_speaker_rows, provenance_lines
from agegender_sb.report.scoring import (
    PlotError,
    has_age,
    match_truth,
    read_predictions,
    read_truth,
    row_kind,
    score,
    voices,
)

#: Most speakers drawn in the per-speaker panel.
MAX_SPEAKERS = 40


# ---------------------------------------------------------------------------- drawing
@dataclass
class Report:
    """What :func:`plot_report` drew: the image, counts, and the metrics with truth."""

    output: Path
    n_voices: int
    n_speakers: int
    metrics: dict | None = None
    truth_key: str | None = None
    n_matched: int = 0
    notes: list = field(default_factory=list)
    #: :func:`agegender_sb.report.evaluation.evaluate_pairs` of the matched rows (``agegender
    #: evaluate``'s numbers: per group, with bootstrap intervals)
    evaluation: dict | None = None

    counts: dict = field(default_factory=dict)
    panels: list = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        """The lines ``agegender plot`` prints."""
        lines = [f"{self.n_voices} voice(s), {self.n_speakers} speaker(s) drawn"]
        if self.counts:
            lines.append(counts_text(self.counts))
        m = self.metrics
        if m is not None:
            lines.append(f"truth ({self.truth_key}): {self.n_matched} row(s) matched")
            if m["n_age"]:
                bands = ", ".join(f"{k}: {v:.2f} ({m['n_per_band'][k]})"
                                  for k, v in m["mae_per_band"].items() if m["n_per_band"][k])
                lines.append(f"age MAE {m['mae']:.2f} years over {m['n_age']} (per band: "
                             f"{bands})")
            if m["n_gender"]:
                lines.append(f"gender accuracy {m['acc']:.3f}, UAR {m['uar']:.3f} over "
                             f"{m['n_gender']}")
        if self.evaluation is not None and self.evaluation["overall"]:
            from agegender_sb.report.evaluation import summary_lines

            lines += summary_lines(self.evaluation)
        return lines + self.notes


def counts_text(counts: dict) -> str:
    """``files: 40 answered, 2 no speech, 1 error(s)``."""
    return (f"files: {counts['answered']} answered, {counts['no speech']} without speech, "
            f"{counts['errors']} error(s)")


def _check_output(output) -> None:
    """Refuse an image format matplotlib cannot write, before anything is drawn."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(output).suffix.lower().lstrip(".")
    if suffix not in formats:
        what = f"unknown image format '.{suffix}'" if suffix else "no image format suffix"
        raise PlotError(f"{output}: {what}; use one of: "
                        f"{', '.join('.' + f for f in sorted(formats))}")


def _figure_class():
    """matplotlib's ``Figure`` (drawn without pyplot: no backend is chosen or changed)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError('agegender plot needs matplotlib: pip install '
                          '"agegender_sb[plots]"') from err
    return Figure


def _colors(labels):
    base = {"female": "tab:red", "male": "tab:blue", "child": "tab:green"}
    extra = iter(["tab:purple", "tab:orange", "tab:brown", "tab:gray", "tab:olive"])
    return {lab: base.get(lab) or next(extra, "black") for lab in labels}


def _age_distribution(ax, voice_rows, labels, colors) -> None:
    ages = [r["age"] for r in voice_rows]
    if not ages:
        ax.text(0.5, 0.5, "no predicted ages in this table", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    lo = int(math.floor(min(ages) / 5) * 5)
    hi = max(int(math.ceil(max(ages) / 5) * 5), lo + 5)
    if max(ages) >= hi:
        hi += 5
    bins = list(range(lo, hi + 1, 5))  # 5-year bins
    groups = [[r["age"] for r in voice_rows if r["gender"] == lab] for lab in labels]
    ax.hist(groups, bins=bins, stacked=True, color=[colors[lab] for lab in labels],
            label=[f"{lab} ({len(g)})" for lab, g in zip(labels, groups)], edgecolor="white")
    ax.set_xlabel("predicted age (years)")
    ax.set_ylabel("voices (files, or speakers of a file's turns)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"Predicted age per predicted gender ({len(ages)} voices)")
    ax.legend(title="predicted gender")


def _speaker_groups(rows, spk_map) -> list[tuple[str, dict, list[float]]]:
    """``(name, pooled row, [ages of the rows under it])`` per speaker (or windowed file)."""
    groups = []
    speaker_rows = [r for r in rows if row_kind(r) == "speaker" and has_age(r)]
    if speaker_rows:
        files = [r for r in rows if row_kind(r) == "file" and has_age(r)]
        for r in speaker_rows:
            under = [f["age"] for f in files
                     if spk_map is not None and spk_map.speaker(f["path"]) == r["speaker"]]
            groups.append((r["speaker"], r, under))
        return groups
    turn_rows = [r for r in rows if row_kind(r) == "file-speaker" and has_age(r)]
    multi = len({r["path"] for r in turn_rows}) > 1
    for r in turn_rows:
        under = [s["age"] for s in rows if row_kind(s) == "segment" and has_age(s)
                 and s["path"] == r["path"] and s["speaker"] == r["speaker"]]
        name = f"{Path(r['path']).stem}: {r['speaker']}" if multi else r["speaker"]
        groups.append((name, r, under))
    if groups:
        return groups
    for r in rows:  # no speakers: windowed files
        if row_kind(r) == "file" and has_age(r):
            under = [s["age"] for s in rows if row_kind(s) == "segment" and has_age(s)
                     and s["path"] == r["path"] and s["speaker"] is None]
            if under:
                groups.append((Path(r["path"]).name, r, under))
    return groups


def _speakers(ax, groups, colors, spread_of: str) -> None:
    if not groups:
        ax.text(0.5, 0.5, "no speakers or windows in this table\n(agegender predict "
                "--speakers, speaker turns, or --segments)", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    shown = sorted(groups, key=lambda g: g[1]["age"])
    total = len(shown)
    if total > MAX_SPEAKERS:  # evenly spaced over the age order
        step = total / MAX_SPEAKERS
        shown = [shown[int(i * step)] for i in range(MAX_SPEAKERS)]
    for y, (_, row, under) in enumerate(shown):
        if under:
            ax.plot([min(under), max(under)], [y, y], color="0.6", lw=2, zorder=1)
            ax.scatter(under, [y] * len(under), s=10, color="0.4", zorder=2)
        ax.scatter([row["age"]], [y], s=45, color=colors.get(row["gender"], "black"),
                   edgecolor="black", zorder=3)
    from matplotlib.lines import Line2D

    present = [lab for lab in colors if any(g[1]["gender"] == lab for g in shown)]
    handles = [Line2D([], [], marker="o", ls="", color=colors[lab], markeredgecolor="black",
                      label=f"pooled, {lab}") for lab in present]
    handles.append(Line2D([], [], marker=".", color="0.4", label=spread_of))
    ax.legend(handles=handles, loc="best", fontsize=8)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([g[0] for g in shown], fontsize=8 if len(shown) > 20 else 9)
    ax.set_ylim(-0.7, len(shown) - 0.3)
    ax.set_xlabel("predicted age (years)")
    what = f"{total}" if total == len(shown) else f"{len(shown)} of {total}, by age"
    noun = "windowed file" if spread_of == "their windows" else "speaker"
    ax.set_title(f"Age per {noun} ({what}): pooled, and {spread_of}")
    ax.grid(axis="x", alpha=0.3)


def _age_scatter(ax, metrics) -> None:
    pairs = metrics["pairs_age"]
    if not pairs:
        ax.text(0.5, 0.5, "no true ages matched", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    true, pred = zip(*pairs)
    lo, hi = min(min(true), min(pred)), max(max(true), max(pred))
    pad = max(2.0, 0.05 * (hi - lo))
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", ls="--", lw=1,
            label="predicted = true")
    ax.scatter(true, pred, s=14, alpha=0.7, color="tab:blue")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("true age (years)")
    ax.set_ylabel("predicted age (years)")
    ax.set_title(f"Predicted vs true age: MAE {metrics['mae']:.2f} years (n={len(pairs)})")
    ax.legend(loc="upper left")


def _band_mae(ax, metrics) -> None:
    bands = [k for k, n in metrics["n_per_band"].items() if n]
    values = [metrics["mae_per_band"][k] for k in bands]
    bars = ax.bar(range(len(bands)), values, color="tab:blue", alpha=0.8)
    for bar, band in zip(bars, bands):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(),
                f"{metrics['mae_per_band'][band]:.1f}\nn={metrics['n_per_band'][band]}",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(bands)))
    ax.set_xticklabels([f"{b} y" for b in bands])
    ax.set_xlabel("true age band")
    ax.set_ylabel("MAE (years)")
    ax.set_ylim(0, max(values) * 1.25 + 1)
    ax.axhline(metrics["mae"], color="0.4", ls="--", lw=1,
               label=f"all: {metrics['mae']:.2f} years")
    ax.legend(loc="upper left")
    ax.set_title("Age MAE per true age band")


def _confusion(ax, metrics) -> None:
    labels, cm = metrics["labels"], metrics["confusion"]
    if not metrics["n_gender"]:
        ax.text(0.5, 0.5, "no true genders matched", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    rates = [[c / max(sum(row), 1) for c in row] for row in cm]
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i, row in enumerate(cm):
        for j, c in enumerate(row):
            text = f"{c}\n{rates[i][j]:.0%}" if sum(row) else "–"  # no such true label
            ax.text(j, i, text, ha="center", va="center",
                    color="white" if rates[i][j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels)
    ax.set_xlabel("predicted gender")
    ax.set_ylabel("true gender (row: % of its voices)")
    ax.set_title(f"Gender: accuracy {metrics['acc']:.3f}, UAR {metrics['uar']:.3f} "
                 f"(n={metrics['n_gender']})")


def plot_report(table: str | os.PathLike, output: str | os.PathLike, truth=None,
                speakers=None, title: str | None = None, dpi: int = 110) -> Report:
    """Draw the corpus report of ``table`` into ``output`` (format from its suffix).

    Parameters
    ----------
    table : str or PathLike
        A CSV or JSONL table written by ``agegender predict``.
    output : str or PathLike
        Image file: ``.png``, ``.pdf``, ``.svg``, ...
    truth : str or PathLike, optional
        CSV with a ``path`` or ``speaker`` column and ``age`` and/or ``gender`` columns:
        adds the age scatter, the confusion matrix and the metrics.
    speakers : str or PathLike, optional
        The ``--speakers`` file the table was made with: the spread of each speaker's files.
    title : str, optional
        Figure title (default: the table's file name).

    Returns
    -------
    Report
        The output path, counts, and the metrics of :func:`score` with a truth table.

    Raises
    ------
    ImportError
        Without matplotlib.
    PlotError
        For a table or truth file that cannot be used (naming the file).
    """
    Figure = _figure_class()
    _check_output(output)
    from agegender_sb.batch.inputs import InputError, read_speakers

    rows, labels = read_predictions(table)
    spk_map = None
    if speakers is not None:
        try:
            spk_map = read_speakers(speakers)
        except InputError as err:
            raise PlotError(str(err)) from err
    notes = []
    if spk_map is not None and not any(row_kind(r) == "speaker" for r in rows):
        pooled = pooled_speaker_rows(rows, spk_map, labels)
        if not pooled:
            raise PlotError(f"{speakers}: none of the files of {table} is in it")
        rows = rows + pooled
        notes.append(f"note: {len(pooled)} speaker(s) pooled here from the table's file rows "
                     "(by seconds of speech, as agegender predict --speakers does)")
    voice_rows = voices(rows)
    groups = _speaker_groups(rows, spk_map)
    kinds = {row_kind(r) for r in rows}
    spread_of = ("their files" if "speaker" in kinds else
                 "their turns" if "file-speaker" in kinds else "their windows")
    report = Report(Path(output), len(voice_rows), len(groups), notes=notes,
                    counts=outcome_counts(rows))
    if "speaker" in kinds and spk_map is None:
        report.notes.append("note: speaker rows drawn without the spread of their files "
                            "(give the --speakers file to draw it)")
    metrics = None
    if truth is not None:
        key, entries = read_truth(truth, labels)
        pairs = match_truth(rows, key, entries, Path(truth).resolve().parent)
        if not pairs:
            raise PlotError(f"{truth}: no {key} of the truth table matches a row of {table}")
        metrics = score(pairs, labels)
        report.metrics, report.truth_key, report.n_matched = metrics, key, len(pairs)
        from agegender_sb.report.evaluation import evaluate_pairs

        spk = [r.get("speaker") or e.get("speaker") or (spk_map.speaker(r["path"]) if spk_map
               is not None and r.get("path") else None) for r, e in pairs]
        report.evaluation = evaluate_pairs(pairs, labels, spk)

    colors = _colors(labels)
    # Only the panels there is something for, two per row; an odd last one spans the row.
    panels = [("ages", lambda ax: _age_distribution(ax, voice_rows, labels, colors))]
    if groups:
        panels.append(("speakers", lambda ax: _speakers(ax, groups, colors, spread_of)))
    if metrics is not None:
        panels.append(("scatter", lambda ax: _age_scatter(ax, metrics)))
        panels.append(("confusion", lambda ax: _confusion(ax, metrics)))
        if metrics["n_age"]:
            panels.append(("bands", lambda ax: _band_mae(ax, metrics)))
    names = [name for name, _ in panels]
    report.panels = names
    layout = [names[i:i + 2] if i + 1 < len(names) else [names[i]] * 2
              for i in range(0, len(names), 2)]
    height = max(4.8, 0.22 * min(len(groups), MAX_SPEAKERS) + 1.5) if groups else 4.8
    heights = [height if "speakers" in row else 5.2 if i else 4.8
               for i, row in enumerate(layout)]
    context = [counts_text(report.counts), *provenance_lines(table)]
    fig = Figure(figsize=(13, sum(heights) + 0.25 * len(context) + 0.6),
                 layout="constrained")
    axes = fig.subplot_mosaic(layout, gridspec_kw={"height_ratios": heights})
    for name, draw in panels:
        draw(axes[name])
    fig.suptitle(title or f"agegender report: {Path(table).name}", fontsize=14)
    fig.supxlabel("\n".join(context), fontsize=8, ha="left", x=0.01, color="0.25")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=dpi)
    return report
