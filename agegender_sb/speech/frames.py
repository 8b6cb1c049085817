"""Frames, spans and the detector base class shared by the speech detectors.

A detector scores consecutive 512-sample frames (:data:`FRAME_SAMPLES`, 32 ms at 16 kHz) with
values in [0, 1]; :class:`SpeechDetector` streams blocks into frames and turns the scores into
spans with silero's own post-processing. The detectors themselves (Silero, energy) and
:func:`~agegender_sb.speech.detectors.make_detector` are in :mod:`.detectors`.
"""

from __future__ import annotations

import abc
import contextlib
import math
import threading
from collections.abc import Iterable

import numpy as np
import torch

from agegender_sb.defaults import SAMPLE_RATE

__all__ = ["FRAME_SAMPLES", "SpeechDetector", "import_silero", "speech_seconds"]

FRAME_SAMPLES = 512
"""Samples per scored frame (32 ms at 16 kHz): Silero VAD's chunk size, used by both detectors."""

def speech_seconds(spans: Iterable[tuple[int, int]]) -> float:
    """Total length in seconds of ``(start, end)`` spans in 16 kHz samples.

    >>> speech_seconds([(0, 16000), (32000, 40000)])
    1.5
    >>> speech_seconds([])
    0.0
    """
    return sum(end - start for start, end in spans) / SAMPLE_RATE


def _check_seconds(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return value


def _spans_from_scores(
    scores: np.ndarray,
    num_samples: int,
    threshold: float,
    neg_threshold: float,
    min_speech_s: float,
    min_silence_s: float,
    speech_pad_s: float,
) -> list[tuple[int, int]]:
    """Speech spans (16 kHz samples) from per-frame speech scores in [0, 1].

    The single post-processing step of both detectors: silero's own
    ``get_speech_timestamps_from_probs`` (the code behind ``get_speech_timestamps``), so the
    semantics are silero's. A span starts at a frame scoring ``>= threshold`` and ends at the
    first frame scoring ``< neg_threshold`` that is followed by at least ``min_silence_s`` of
    frames not back at ``>= threshold``; spans not longer than ``min_speech_s`` are dropped;
    each span is padded by ``speech_pad_s`` on both sides (at most half the gap to the next
    span) and clipped to ``[0, num_samples]``.

    >>> scores = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], dtype=np.float32)
    >>> _spans_from_scores(scores, 15 * 512, 0.5, 0.35, 0.25, 0.1, 0.0)
    [(1024, 5120)]
    """
    speeches = import_silero().get_speech_timestamps_from_probs(
        np.asarray(scores, dtype=np.float32).tolist(),
        sampling_rate=SAMPLE_RATE,
        threshold=threshold,
        neg_threshold=neg_threshold,
        min_speech_duration_ms=min_speech_s * 1000.0,
        min_silence_duration_ms=min_silence_s * 1000.0,
        speech_pad_ms=speech_pad_s * 1000.0,
        audio_length_samples=num_samples,
    )
    return [(int(s["start"]), int(s["end"])) for s in speeches]


class SpeechDetector(abc.ABC):
    """A speech detector: 16 kHz mono signal in, sorted non-overlapping speech spans out.

    Subclasses score consecutive 512-sample frames (:data:`FRAME_SAMPLES`, 32 ms) with values in
    [0, 1]; this class streams the blocks into frames (carrying the remainder from block to
    block), and turns the scores into spans with silero's post-processing (see
    :func:`_spans_from_scores`). Each frame is scored from the same samples whatever the block
    boundaries, so the spans do not depend on them. Memory: one block plus 4 bytes of score
    per frame (450 kB per audio hour; about 4 MB per hour for a moment at the end, when the
    scores go to silero's post-processing as a Python list).

    Parameters
    ----------
    threshold : float
        A frame scoring ``>= threshold`` is speech (starts a span).
    neg_threshold : float
        Inside a span, a frame scoring ``< neg_threshold`` is silence (may end it); between
        the two thresholds a span goes on (hysteresis).
    min_speech_s, min_silence_s, speech_pad_s : float
        Minimum span length kept, minimum silence that ends a span, and padding added on both
        sides of each span, in seconds.
    """

    def __init__(
        self,
        threshold: float,
        neg_threshold: float,
        min_speech_s: float = 0.25,
        min_silence_s: float = 0.1,
        speech_pad_s: float = 0.03,
    ):
        if not 0.0 < neg_threshold <= threshold <= 1.0:
            raise ValueError(
                "need 0 < neg_threshold <= threshold <= 1, got "
                f"threshold={threshold!r}, neg_threshold={neg_threshold!r}"
            )
        self.threshold = float(threshold)
        self.neg_threshold = float(neg_threshold)
        self.min_speech_s = _check_seconds("min_speech_s", min_speech_s)
        self.min_silence_s = _check_seconds("min_silence_s", min_silence_s)
        self.speech_pad_s = _check_seconds("speech_pad_s", speech_pad_s)
        self._lock = threading.Lock()

    @abc.abstractmethod
    def _reset(self) -> None:
        """Forget any state from a previous signal."""

    def _running(self) -> contextlib.AbstractContextManager:
        """Context in which :meth:`detect` scores frames (none by default)."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def _score(self, frames: torch.Tensor) -> np.ndarray:
        """Scores in [0, 1] of consecutive frames ``[n, FRAME_SAMPLES]`` float32 -> ``[k]``.

        ``k <= n``: a detector may hold frames back and score them in a later call or in
        :meth:`_flush`; scores come out in frame order.
        """

    def _flush(self) -> np.ndarray:
        """Scores of frames :meth:`_score` held back (a detector that scores in groups)."""
        return np.zeros(0, dtype=np.float32)

    def _second_opinion(self):
        """An object that observes the same frames and, where this detector finds no span,
        scores them for a second look (:class:`~agegender_sb.speech.relative.RelativeLevel`);
        None by default."""
        return None

    def _score_tail(self, tail: torch.Tensor) -> np.ndarray:
        """Score of the last, partial frame ``[m]`` (``0 < m < FRAME_SAMPLES``) -> ``[1]``.

        By default it is zero-padded to a whole frame, as ``get_speech_timestamps`` does.
        """
        frame = torch.nn.functional.pad(tail, (0, FRAME_SAMPLES - tail.numel()))
        return self._score(frame[None])

    def detect(self, blocks: Iterable[torch.Tensor]) -> list[tuple[int, int]]:
        """Speech spans of one signal given as consecutive blocks.

        Parameters
        ----------
        blocks : iterable of torch.Tensor
            Consecutive 1-D float blocks ``[time_i]`` of one 16 kHz mono signal, any lengths
            (empty blocks are allowed); they are read one at a time.

        Returns
        -------
        list of (int, int)
            Sorted, non-overlapping ``(start, end)`` spans in 16 kHz samples over the
            concatenated signal (``end`` exclusive); empty when there is no speech.

        Raises
        ------
        TypeError, ValueError
            A block that is not a 1-D floating-point tensor, or has NaN/Inf samples.
        """
        with self._lock, self._running(), torch.no_grad():
            self._reset()
            second = self._second_opinion()
            scores: list[np.ndarray] = []
            rest = torch.zeros(0)
            total = 0
            for index, block in enumerate(blocks):
                block = _check_block(block, index)
                total += block.numel()
                buffer = torch.cat([rest, block]) if rest.numel() else block
                whole = buffer.numel() // FRAME_SAMPLES * FRAME_SAMPLES
                if whole:
                    frames = buffer[:whole].reshape(-1, FRAME_SAMPLES)
                    scores.append(self._score(frames))
                    if second is not None:
                        second.observe(frames)
                rest = buffer[whole:].clone()
            if rest.numel():
                scores.append(self._score_tail(rest))
                if second is not None:
                    pad = (0, FRAME_SAMPLES - rest.numel())
                    second.observe(torch.nn.functional.pad(rest, pad)[None])
            scores.append(self._flush())
            if not total:
                return []
            durations = (self.min_speech_s, self.min_silence_s, self.speech_pad_s)
            spans = _spans_from_scores(
                np.concatenate(scores), total, self.threshold, self.neg_threshold, *durations
            )
            if not spans and second is not None:  # asked only where the detector found none
                spans = _spans_from_scores(second.scores(), total, 0.5, 0.35, *durations)
            return spans

    def __call__(self, wav: torch.Tensor) -> list[tuple[int, int]]:
        """Speech spans of a whole signal ``[time]``: ``detect([wav])``."""
        return self.detect([wav])

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"


def _check_block(block, index: int) -> torch.Tensor:
    if not isinstance(block, torch.Tensor):
        raise TypeError(f"block {index}: expected a torch.Tensor, got {type(block).__name__}")
    if block.dim() != 1:
        raise ValueError(
            f"block {index}: expected a 1-D 16 kHz mono signal [time], got shape "
            f"{tuple(block.shape)}"
        )
    if not block.is_floating_point():
        raise TypeError(f"block {index}: expected floating-point samples, got {block.dtype}")
    block = block.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(block).all()):
        raise ValueError(f"block {index}: has NaN or Inf samples")
    return block


def import_silero():
    """``import silero_vad``, undoing its import-time thread change.

    ``silero_vad.model`` calls ``torch.set_num_threads(1)`` when it is imported; the
    process's setting is put back so importing it (for either detector) changes nothing
    global.
    """
    threads = torch.get_num_threads()
    try:
        import silero_vad
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return silero_vad
