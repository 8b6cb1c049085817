"""Age and gender metrics from summed counts: MAE (overall, per age band), accuracy, UAR,
per-class recall and the confusion matrix, exact across DDP ranks.

The training recipe builds one :class:`AgeGenderStats` per evaluation stage
(``error_stats`` in ``hparams/train.yaml``); anything holding predictions and reference
labels (a table of predictions, a plot command) can fill one the same way.
"""

from __future__ import annotations

import math

import torch
from speechbrain.utils.distributed import ddp_all_reduce

__all__ = ["AgeGenderStats"]


class AgeGenderStats:
    """Summed counts for age MAE (overall, per band) and gender accuracy/UAR/confusion.

    Counts are plain sums, so :meth:`all_reduce` makes them exact across DDP ranks.

    Parameters
    ----------
    labels : sequence of str
        Gender labels in output order.
    band_edges : sequence of float
        Upper edges (years) of the age bands; the last band is open.
    age_weight, gender_weight : float
        Weights of the two loss terms in the summarised ``loss`` (as in
        :func:`agegender_sb.training.losses.multitask_loss`).

    Example
    -------
    >>> s = AgeGenderStats(["female", "male"], [15, 30])
    >>> s.append(torch.tensor([10.0, 40.0]), torch.tensor([12.0, float("nan")]),
    ...          torch.tensor([0, 1]), torch.tensor([0, 0]))
    >>> r = s.summarize()
    >>> r["mae"], r["acc"], r["uar"], r["confusion"]
    (2.0, 0.5, 0.5, [[1, 1], [0, 0]])
    """

    def __init__(self, labels, band_edges, age_weight=1.0, gender_weight=1.0):
        self.labels = list(labels)
        self.edges = [float(e) for e in band_edges]
        self.weights = (float(age_weight), float(gender_weight))
        n = len(self.labels)
        nb = len(self.edges) + 1
        # [abs err sum, count] overall, per band; [age loss sum, count, gender loss sum,
        # count] (per utterance, so the epoch loss does not depend on batching); confusion
        self.age = torch.zeros(2, dtype=torch.float64)
        self.bands = torch.zeros(nb, 2, dtype=torch.float64)
        self.loss = torch.zeros(4, dtype=torch.float64)
        self.confusion = torch.zeros(n, n, dtype=torch.float64)

    def band_names(self) -> list[str]:
        """Band names for the edges.

        Example
        -------
        >>> AgeGenderStats(["f"], [15, 30]).band_names()
        ['<15', '15-29', '30+']
        """
        names, lo = [], None
        for e in self.edges:
            names.append(f"<{e:g}" if lo is None else f"{lo:g}-{e - 1:g}")
            lo = e
        names.append(f"{lo:g}+" if lo is not None else "all")
        return names

    def append(self, age_pred_years, age_true_years, gender_pred, gender_true, losses=None):
        """Add a batch (CPU or device tensors; NaN age / -1 gender = unknown).

        ``losses``: the batch's ``(age_loss, gender_loss)`` terms of :func:`multitask_loss`
        (means over the utterances having each label), accumulated per utterance.
        """
        age_pred_years = age_pred_years.detach().double().cpu()
        age_true_years = age_true_years.detach().double().cpu()
        known = torch.isfinite(age_true_years)
        err = (age_pred_years - age_true_years).abs()[known]
        self.age += torch.tensor([err.sum().item(), float(known.sum())], dtype=torch.float64)
        band = torch.bucketize(age_true_years[known], torch.tensor(self.edges,
                                                                   dtype=torch.float64),
                               right=True)
        for b, e in zip(band.tolist(), err.tolist()):
            self.bands[b, 0] += e
            self.bands[b, 1] += 1
        gt = gender_true.detach().cpu().long()
        gp = gender_pred.detach().cpu().long()
        for t, p in zip(gt[gt >= 0].tolist(), gp[gt >= 0].tolist()):
            self.confusion[t, p] += 1
        if losses is not None:
            n_age, n_gender = float(known.sum()), float((gt >= 0).sum())
            self.loss += torch.tensor([float(losses[0]) * n_age, n_age,
                                       float(losses[1]) * n_gender, n_gender],
                                      dtype=torch.float64)

    def all_reduce(self) -> None:
        """Sum the counts over DDP ranks (no-op outside DDP)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        flat = torch.cat([self.age, self.bands.flatten(), self.loss, self.confusion.flatten()])
        backend = torch.distributed.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else None
        flat = flat.to(device) if device is not None else flat
        ddp_all_reduce(flat, torch.distributed.ReduceOp.SUM)
        flat = flat.cpu()
        nb, n = self.bands.shape[0], len(self.labels)
        self.age = flat[:2]
        self.bands = flat[2:2 + 2 * nb].reshape(nb, 2)
        self.loss = flat[2 + 2 * nb:6 + 2 * nb]
        self.confusion = flat[6 + 2 * nb:].reshape(n, n)

    def summarize(self) -> dict:
        """``loss, mae, mae_per_band, n_age, acc, uar, recall, n_gender, confusion`` (NaN
        where there is nothing to average)."""
        def ratio(a, b):
            return float(a / b) if b > 0 else math.nan

        support = self.confusion.sum(dim=1)
        correct = self.confusion.diag()
        present = support > 0
        recall = {lab: ratio(correct[i], support[i]) for i, lab in enumerate(self.labels)}
        return {
            "loss": self.weights[0] * (ratio(self.loss[0], self.loss[1]) if self.loss[1] else 0)
            + self.weights[1] * (ratio(self.loss[2], self.loss[3]) if self.loss[3] else 0)
            if self.loss[1] + self.loss[3] > 0 else math.nan,
            "mae": ratio(self.age[0], self.age[1]),
            "n_age": int(self.age[1]),
            "mae_per_band": {name: ratio(s, c) for name, (s, c) in
                             zip(self.band_names(), self.bands.tolist())},
            "n_per_band": {name: int(c) for name, (_, c) in
                           zip(self.band_names(), self.bands.tolist())},
            "acc": ratio(correct.sum(), support.sum()),
            "uar": float((correct[present] / support[present]).mean()) if present.any()
            else math.nan,
            "recall": recall,
            "n_gender": int(support.sum()),
            "confusion": self.confusion.long().tolist(),
        }
