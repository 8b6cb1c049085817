"""What the recipe keeps: completion markers on checkpoints, and the test outputs
(predictions, summary, plots).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from pathlib import Path

import speechbrain as sb
from speechbrain.utils.distributed import ddp_barrier, if_main_process

__all__ = ["COMPLETE_MARKER", "CompletionMarker", "remove_incomplete_checkpoints",
           "write_test_outputs", "write_plots"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- checkpoints
#: Name of the :class:`CompletionMarker` recoverable (its file: ``complete.ckpt``).
COMPLETE_MARKER = "complete"


@sb.utils.checkpoints.register_checkpoint_hooks
class CompletionMarker:
    """A recoverable saved last: its file in a checkpoint proves every other file is whole.

    SpeechBrain's ``Checkpointer`` writes ``CKPT.yaml`` first and the tensors after it, so a
    process killed while saving leaves a checkpoint that looks valid but cannot be loaded.
    Register the marker after all other recoverables and call
    :func:`remove_incomplete_checkpoints` before recovering.
    """

    @sb.utils.checkpoints.mark_as_saver
    def _save(self, path):
        if if_main_process():
            Path(path).write_text("ok\n", encoding="utf-8")

    @sb.utils.checkpoints.mark_as_loader
    def _load(self, path, end_of_epoch=False):
        del path, end_of_epoch


def remove_incomplete_checkpoints(checkpointer) -> list[Path]:
    """Delete checkpoint folders without the completion marker (main process; all wait).

    Example
    -------
    >>> from speechbrain.utils.checkpoints import Checkpointer
    >>> ckpts = Checkpointer(getfixture("tmp_path"), {"marker": CompletionMarker()})
    >>> _ = (getfixture("tmp_path") / "CKPT+half").mkdir()
    >>> [p.name for p in remove_incomplete_checkpoints(ckpts)]
    ['CKPT+half']
    """
    removed = []
    if if_main_process():
        marker = COMPLETE_MARKER + sb.utils.checkpoints.PARAMFILE_EXT
        for folder in sorted(Path(checkpointer.checkpoints_dir).glob("CKPT+*")):
            if folder.is_dir() and not (folder / marker).is_file():
                logger.warning("%s: incomplete checkpoint (interrupted while saving), removed",
                               folder)
                shutil.rmtree(folder)
                removed.append(folder)
    ddp_barrier()
    return removed


# ---------------------------------------------------------------------------- outputs
def write_test_outputs(folder, summary: dict, rows: list, labels, make_plots=True,
                       extra: dict | None = None) -> None:
    """``results.json``, ``test_predictions.csv`` and, with matplotlib, two PNG plots.

    Parameters
    ----------
    folder : str or Path
    summary : dict
        :meth:`agegender_sb.training.metrics.AgeGenderStats.summarize` of the test set.
    rows : list of dict
        One per utterance: ``ID, age, age_raw, <one probability per label>, gender,
        true_age`` (NaN if unknown), ``true_gender``.
    labels : sequence of str
    make_plots : bool
    extra : dict, optional
        More entries for ``results.json`` (e.g. ``dropped``).

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> row = {"ID": "u1", "age": 30.0, "age_raw": 0.3, "f": 0.9, "m": 0.1, "gender": "f",
    ...        "true_age": float("nan"), "true_gender": "f"}
    >>> write_test_outputs(folder, {"mae": float("nan")}, [row], ["f", "m"], False)
    >>> json.loads((folder / "results.json").read_text())["mae"]
    >>> (folder / "test_predictions.csv").read_text().splitlines()[1]
    'u1,30.0,0.3,0.9,0.1,f,,f'
    """
    folder = Path(folder)
    rows = sorted(rows, key=lambda r: r["ID"])
    results = {**summary, "labels": list(labels), "n_utterances": len(rows),
               "age_bands_note": "MAE in years per band of the true age", **(extra or {})}
    from agegender_sb.report.evaluation import json_safe

    (folder / "results.json").write_text(json.dumps(json_safe(results), indent=2) + "\n",
                                         encoding="utf-8")
    columns = ["ID", "age", "age_raw", *labels, "gender", "true_age", "true_gender"]
    with open(folder / "test_predictions.csv", "w", newline="", encoding="utf-8") as fout:
        writer = csv.DictWriter(fout, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            out = {k: repr(v) if isinstance(v, float) else v for k, v in row.items()}
            if not math.isfinite(row["true_age"]):
                out["true_age"] = ""
            writer.writerow(out)
    if make_plots:
        write_plots(folder, summary, rows, labels)


def write_plots(folder, summary: dict, rows: list, labels) -> None:
    """``confusion_matrix.png`` and ``age_scatter.png``; a logged warning without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (extra 'plots'): no PNG plots written")
        return
    folder = Path(folder)
    conf = summary["confusion"]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(conf, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(conf):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center")
    ax.set_title(f"gender: acc {summary['acc']:.3f}, UAR {summary['uar']:.3f}")
    fig.tight_layout()
    fig.savefig(folder / "confusion_matrix.png", dpi=100)
    plt.close(fig)
    pts = [(r["true_age"], r["age"]) for r in rows if math.isfinite(r["true_age"])]
    fig, ax = plt.subplots(figsize=(4, 4))
    if pts:
        t, p = zip(*pts)
        ax.scatter(t, p, s=8, alpha=0.6)
        lo, hi = min(min(t), min(p)), max(max(t), max(p))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("true age (years)")
    ax.set_ylabel("predicted age (years)")
    ax.set_title(f"age: MAE {summary['mae']:.2f} years")
    fig.tight_layout()
    fig.savefig(folder / "age_scatter.png", dpi=100)
    plt.close(fig)
