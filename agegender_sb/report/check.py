"""audEERING's published numbers for the 6-layer model, and the comparison with a loaded one.

audEERING publish, for their ONNX export of ``audeering/wav2vec2-large-robust-6-ft-age-gender``
and the signal ``np.random.seed(0); np.random.normal(size=16000).astype(np.float32)`` (one
second of noise at 16 kHz, raw: the model normalises it), the outputs below: the age output
(``logits_age``, years / 100), the gender logits in the checkpoint's label order (female, male,
child), and the first and last three values of ``hidden_states`` (the last layer's hidden states
averaged over time: :attr:`AgeGenderPrediction.embedding`). ``agegender check`` loads the model
through the real loading path (strict: every tensor lands) and compares.

No numbers are published for the 24-layer model, so for other sources only strict loading is
checked.

Example
-------
>>> signal = published_signal()
>>> signal.shape, signal.dtype, round(float(signal[0]), 6)
((16000,), dtype('float32'), 1.764052)
>>> outputs = {"age": 0.3961, "gender_logits": [0.3281, -0.5653, 0.0318],
...            "hidden_states": [0.0278, 0.0140, 0.0384, 0.0079, -0.0933, 0.0916]}
>>> [c.ok for c in compare_published(outputs)]
[True, True, True, True]
>>> compare_published({**outputs, "age": 0.40})[0].ok
False
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

__all__ = [
    "PUBLISHED_SOURCE",
    "PUBLISHED",
    "TOLERANCE",
    "Check",
    "published_signal",
    "has_published_numbers",
    "model_outputs",
    "compare_published",
    "check_published",
]

#: The model audEERING published reference outputs for.
PUBLISHED_SOURCE = "audeering/wav2vec2-large-robust-6-ft-age-gender"
#: Their outputs on :func:`published_signal` (6-layer ONNX export, fp32).
PUBLISHED = {
    "labels": ("female", "male", "child"),
    "age": 0.3961048,
    "gender_logits": (0.32810774, -0.56528044, 0.0317882),
    "hidden_states_head": (0.02783544, 0.01402022, 0.03839185),
    "hidden_states_tail": (0.00786646, -0.09332313, 0.0915948),
}
#: Largest absolute difference accepted.
TOLERANCE = 1e-3


class Check(NamedTuple):
    """One compared quantity: ``(what, expected, got, ok)``."""

    what: str
    expected: tuple
    got: tuple
    ok: bool

    @property
    def difference(self) -> float:
        """Largest absolute difference (inf if the shapes differ or a value is not finite)."""
        try:
            diff = np.abs(np.asarray(self.expected, float) - np.asarray(self.got, float))
        except ValueError:  # different lengths, or labels instead of numbers
            return float("inf")
        return float(diff.max()) if np.isfinite(diff).all() else float("inf")


def published_signal() -> np.ndarray:
    """The published test input: ``np.random.seed(0); np.random.normal(size=16000)`` as
    float32 (drawn from its own generator, so the global NumPy state is left alone)."""
    return np.random.RandomState(0).normal(size=16000).astype(np.float32)


def has_published_numbers(source: str | os.PathLike) -> bool:
    """Whether ``source`` names the published 6-layer model: its hub id, a hub cache folder
    of it, or a folder named after it (a local clone).

    Example
    -------
    >>> has_published_numbers("audeering/wav2vec2-large-robust-6-ft-age-gender")
    True
    >>> has_published_numbers("audeering/wav2vec2-large-robust-24-ft-age-gender")
    False
    """
    name = PUBLISHED_SOURCE.split("/")[1]
    return name in os.fspath(source).lower().replace("\\", "/")


def model_outputs(clf, signal: np.ndarray | None = None) -> dict:
    """The loaded model's outputs on ``signal`` (default :func:`published_signal`), as
    :func:`compare_published` takes them: ``labels``, ``age`` (the age output, years / 100),
    ``gender_logits`` (label order of the model), ``hidden_states`` (pooled, all values)."""
    import torch

    signal = published_signal() if signal is None else signal
    pred = clf.predict_batch(torch.from_numpy(np.asarray(signal, dtype=np.float32))[None])
    return {"labels": tuple(clf.labels), "age": float(pred.age_raw[0]),
            "gender_logits": [float(x) for x in pred.gender_logits[0]],
            "hidden_states": [float(x) for x in pred.embedding[0]]}


def compare_published(outputs: dict, tolerance: float = TOLERANCE) -> list[Check]:
    """Compare ``outputs`` (as :func:`model_outputs` gives them) with :data:`PUBLISHED`.

    Gender logits are matched by label name when ``outputs`` has ``labels`` (audEERING's
    order otherwise); a model without those labels fails the ``gender labels`` check.

    Returns
    -------
    list of Check
        ``age``, ``gender logits``, ``hidden_states[:3]``, ``hidden_states[-3:]`` (and
        ``gender labels`` first when they differ), each ``ok`` when every value is within
        ``tolerance``.
    """
    checks = []
    names = tuple(outputs.get("labels") or PUBLISHED["labels"])
    logits = list(outputs["gender_logits"])
    if set(names) != set(PUBLISHED["labels"]) or len(names) != len(logits):
        checks.append(Check("gender labels", PUBLISHED["labels"], names, False))
        got_logits = tuple(logits)
    else:
        got_logits = tuple(logits[names.index(lab)] for lab in PUBLISHED["labels"])
    hidden = list(outputs["hidden_states"])
    pairs = [
        ("age output", (PUBLISHED["age"],), (float(outputs["age"]),)),
        (f"gender logits ({', '.join(PUBLISHED['labels'])})", PUBLISHED["gender_logits"],
         got_logits),
        ("hidden_states[:3]", PUBLISHED["hidden_states_head"], tuple(hidden[:3])),
        ("hidden_states[-3:]", PUBLISHED["hidden_states_tail"], tuple(hidden[-3:])),
    ]
    for what, expected, got in pairs:
        check = Check(what, tuple(expected), tuple(float(x) for x in got), False)
        checks.append(check._replace(ok=check.difference <= tolerance))
    return checks


def check_published(clf, tolerance: float = TOLERANCE) -> list[Check]:
    """Run ``clf`` on the published signal and compare with audEERING's numbers:
    ``[(what, expected, got, ok)]`` (see :func:`compare_published`)."""
    return compare_published(model_outputs(clf), tolerance)
