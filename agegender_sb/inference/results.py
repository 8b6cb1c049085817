"""The result types: age and gender for rows of utterances with its one pooling rule, and the
results of analysed spans and files (values: made once, never changed).

Rows are selected (:meth:`AgeGenderPrediction.take`), stacked (:meth:`AgeGenderPrediction.cat`)
and pooled (:meth:`AgeGenderPrediction.pool`): windows into a span, spans into a file, turns
into a speaker, all with the same rule, the weighted (by seconds) mean of the age output and
of the gender logits, probabilities being the softmax of the mean logits.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["AgeGenderPrediction", "Status", "NO_SPEECH", "SpanResult", "FileResult", "pool_spans"]

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


class Status(str, enum.Enum):
    """What became of a span or a file: a result, or why there is none.

    ``NO_SPEECH`` and ``NO_TURNS`` are results (the file was analysed; there is nothing to
    tell age and gender from); ``FAILED`` is a failure (the message says why). A table's
    ``error`` column holds the value of the first two and the message of a failure.
    """

    OK = "ok"
    NO_SPEECH = "no speech detected"
    NO_TURNS = "no speaker turns given for this file"
    FAILED = "failed"

    @property
    def is_failure(self) -> bool:
        return self is Status.FAILED


#: What a result without speech says (``Status.NO_SPEECH.value``).
NO_SPEECH = Status.NO_SPEECH.value


@dataclass(frozen=True)
class SpanResult:
    """The result of one analysed span (a whole file, or one speaker turn): a value.

    Attributes
    ----------
    start, end : float
        Seconds in the file.
    speaker : str or None
        The turn's speaker (None for a whole file, or a turn without one).
    prediction : AgeGenderPrediction or None
        One row; None when there is no result (see ``status``).
    speech : float
        Seconds of speech the result rests on: detected speech with a detector, the whole
        span without one.
    windows : tuple of (float, float)
        Analysed windows (seconds) of a windowed span, ``((start, end),)`` for a whole one.
    window_predictions : AgeGenderPrediction or None
        One row per window of a windowed span.
    window_speech : tuple of float
        Seconds of audio (of speech, with a detector) each window holds.
    speech_spans : tuple of (float, float) or None
        What the detector found in the span (None without a detector).
    status : Status
    error : str or None
        The message of a failed span (e.g. a turn that could not be read).
    """

    start: float
    end: float
    speaker: str | None = None
    prediction: AgeGenderPrediction | None = None
    speech: float = 0.0
    windows: tuple = ()
    window_predictions: AgeGenderPrediction | None = None
    window_speech: tuple = ()
    speech_spans: tuple | None = None
    status: Status = Status.OK
    error: str | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def windowed(self) -> bool:
        return self.window_predictions is not None

    @property
    def message(self) -> str | None:
        """What the table's ``error`` column says: None with a result, else the status or
        the failure's message."""
        if self.status is Status.OK:
            return None
        return self.error if self.status is Status.FAILED else self.status.value


@dataclass(frozen=True)
class FileResult:
    """The result of analysing one file: a value.

    Attributes
    ----------
    path : str
    duration : float
        Seconds of audio (frames / sample rate of the file).
    spans : tuple of SpanResult
        One for the whole file, or one per speaker turn (in time order).
    prediction : AgeGenderPrediction or None
        The file's row: its spans pooled by speech seconds; None without a result.
    speech : float
        Seconds of speech under ``prediction``.
    status : Status
    turns : bool
        Whether the file was analysed in speaker turns given from outside.
    """

    path: str
    duration: float
    spans: tuple
    prediction: AgeGenderPrediction | None
    speech: float
    status: Status = Status.OK
    turns: bool = False
    error: str | None = None

    @property
    def message(self) -> str | None:
        """As :attr:`SpanResult.message`."""
        if self.status is Status.OK:
            return None
        return self.error if self.status is Status.FAILED else self.status.value

    @property
    def speech_spans(self) -> list | None:
        """Detected speech ``(start, end)`` seconds over all spans (None without detector)."""
        if all(s.speech_spans is None for s in self.spans):
            return None
        return [x for s in self.spans for x in (s.speech_spans or ())]

    def speakers(self) -> dict:
        """``{speaker: SpanResult}``: each named speaker's turns pooled by speech seconds."""
        out: dict = {}
        for span in self.spans:
            if span.speaker is not None:
                out.setdefault(span.speaker, []).append(span)
        return {spk: pool_spans(spans, spk) for spk, spans in out.items()}


def pool_spans(spans: Sequence[SpanResult], speaker=None) -> SpanResult:
    """Spans pooled by their seconds of speech into one (no speech anywhere: no result; all
    failed: failed, with their messages)."""
    with_speech = [s for s in spans if s.prediction is not None and s.speech > 0]
    start, end = min(s.start for s in spans), max(s.end for s in spans)
    if not with_speech:
        failed = [s for s in spans if s.status is Status.FAILED]
        if failed:
            messages = "; ".join(sorted({s.error or "failed" for s in failed}))
            return SpanResult(start, end, speaker, status=Status.FAILED, error=messages)
        return SpanResult(start, end, speaker, status=Status.NO_SPEECH)
    pred = AgeGenderPrediction.cat([s.prediction for s in with_speech])
    speech = [s.speech for s in with_speech]
    return SpanResult(start, end, speaker, pred.pool(speech), float(sum(speech)))
