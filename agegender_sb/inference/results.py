"""The result type: age and gender for rows of utterances, and its one pooling rule.

Rows are selected (:meth:`AgeGenderPrediction.take`), stacked (:meth:`AgeGenderPrediction.cat`)
and pooled (:meth:`AgeGenderPrediction.pool`): windows into a span, spans into a file, turns
into a speaker, all with the same rule, the weighted (by seconds) mean of the age output and
of the gender logits, probabilities being the softmax of the mean logits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["AgeGenderPrediction"]

_ROW_FIELDS = ("age", "age_raw", "gender_logits", "gender_probs", "embedding")


@dataclass
class AgeGenderPrediction:
    """Age and gender for a batch of utterances (all tensors on the CPU).

    Attributes
    ----------
    age : torch.Tensor
        ``[batch]`` age in years (``age_raw * age_scale``; not clipped).
    age_raw : torch.Tensor
        ``[batch]`` the age head's output (≈ 0..1).
    gender_logits : torch.Tensor
        ``[batch, n_labels]`` gender logits.
    gender_probs : torch.Tensor
        ``[batch, n_labels]`` softmax of the logits.
    gender : list of str
        Most probable label per utterance.
    labels : tuple of str
        Label names in output order (``female, male, child`` for audEERING's models).
    embedding : torch.Tensor
        ``[batch, hidden]`` pooled last-layer hidden states.

    Example
    -------
    >>> p = AgeGenderPrediction.from_outputs(torch.tensor([0.2, 0.5]),
    ...     torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), torch.zeros(2, 4),
    ...     ("female", "male", "child"))
    >>> p.gender, [round(a, 1) for a in p.age.tolist()]
    (['female', 'male'], [20.0, 50.0])
    >>> pooled = p.pool([3.0, 1.0])
    >>> round(float(pooled.age[0]), 2), pooled.gender_logits[0].tolist(), pooled.gender
    (27.5, [1.5, 0.5, 0.0], ['female'])
    """

    age: torch.Tensor
    age_raw: torch.Tensor
    gender_logits: torch.Tensor
    gender_probs: torch.Tensor
    gender: list
    labels: tuple
    embedding: torch.Tensor

    @classmethod
    def from_outputs(cls, age_raw, gender_logits, embedding, labels, age_scale=100.0):
        """Build from raw model outputs (``[B]``, ``[B, n]``, ``[B, H]``)."""
        age_raw = age_raw.detach().float().cpu().reshape(-1)
        logits = gender_logits.detach().float().cpu()
        probs = torch.softmax(logits, dim=-1)
        return cls(
            age=age_raw * float(age_scale), age_raw=age_raw, gender_logits=logits,
            gender_probs=probs, gender=[labels[i] for i in probs.argmax(dim=-1).tolist()],
            labels=tuple(labels), embedding=embedding.detach().float().cpu(),
        )

    def __len__(self) -> int:
        return int(self.age.shape[0])

    def take(self, rows: Sequence[int]) -> AgeGenderPrediction:
        """The rows ``rows``, in that order."""
        rows = list(rows)
        idx = torch.tensor(rows, dtype=torch.long)
        return dataclasses.replace(
            self, **{f: getattr(self, f)[idx] for f in _ROW_FIELDS},
            gender=[self.gender[i] for i in rows])

    @classmethod
    def cat(cls, preds: Sequence[AgeGenderPrediction]) -> AgeGenderPrediction:
        """Stack the rows of several predictions (same labels)."""
        first = preds[0]
        return dataclasses.replace(
            first, **{f: torch.cat([getattr(p, f) for p in preds]) for f in _ROW_FIELDS},
            gender=[g for p in preds for g in p.gender])

    def pool(self, weights) -> AgeGenderPrediction:
        """One row: weighted means of age, age output, logits and embedding.

        ``gender_probs`` is the softmax of the pooled logits and ``gender`` its most probable
        label. ``weights`` (seconds, usually) must be non-negative with a positive sum.
        """
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if w.shape[0] != len(self) or (w < 0).any() or not float(w.sum()) > 0:
            raise ValueError(f"need {len(self)} non-negative weights with a positive sum, "
                             f"got {w.tolist()}")
        w = w / w.sum()

        def mean(x):
            x = x.double()
            return (x * w.view((-1,) + (1,) * (x.dim() - 1))).sum(0, keepdim=True).float()

        logits = mean(self.gender_logits)
        probs = torch.softmax(logits, dim=-1)
        return dataclasses.replace(
            self, age=mean(self.age), age_raw=mean(self.age_raw), gender_logits=logits,
            gender_probs=probs, gender=[self.labels[int(probs[0].argmax())]],
            embedding=mean(self.embedding))

    def to_records(self) -> list[dict]:
        """One plain dict per utterance: ``age``, ``gender`` and one probability per label.

        Example
        -------
        >>> p = AgeGenderPrediction.from_outputs(torch.tensor([0.31]),
        ...     torch.tensor([[2.0, 0.0, 0.0]]), torch.zeros(1, 4), ("female", "male", "child"))
        >>> p.to_records()[0]["gender"], round(p.to_records()[0]["female"], 2)
        ('female', 0.79)
        """
        records = []
        for i in range(len(self)):
            rec = {"age": float(self.age[i]), "gender": self.gender[i]}
            rec.update({lab: float(self.gender_probs[i, j]) for j, lab in enumerate(self.labels)})
            records.append(rec)
        return records
