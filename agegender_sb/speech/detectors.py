"""Where the speech is: voice activity detection.

Real recordings (interviews, meetings, podcasts) hold silence, noise and several speakers.
audEERING advise running a voice activity detector first and pooling per speaker; this module
holds the detectors, independent of the model (speaker turns: :mod:`.turns`):

- **Speech detectors** turn a 16 kHz mono signal into sorted, non-overlapping speech spans
  ``(start, end)`` in samples. They take the signal as an iterable of consecutive blocks, so an
  hour-long file can be streamed in bounded memory, and the spans do not depend on how the
  signal is cut into blocks.

  - :class:`SileroDetector` (the default, :data:`DEFAULT_DETECTOR`): Silero VAD from the
    ``silero-vad`` package (MIT; the model ships inside its wheel).
  - :class:`EnergyDetector`: a model-free fallback; frame standard deviation in dBFS against
    an absolute threshold.

  Both score 512-sample (32 ms) frames and turn the scores into spans with one
  implementation, silero's own ``get_speech_timestamps_from_probs`` (hysteresis between
  ``threshold`` and ``neg_threshold``, minimum speech and silence durations, padding).
Examples
--------
>>> import torch
>>> detector = make_detector("energy")
>>> wav = torch.zeros(3 * SAMPLE_RATE)
>>> noise = 0.1 * torch.randn(SAMPLE_RATE, generator=torch.Generator().manual_seed(0))
>>> wav[SAMPLE_RATE : 2 * SAMPLE_RATE] = noise  # 1 s of sound (-20 dBFS) from 1.0 to 2.0 s
>>> spans = detector(wav)                        # [(start, end)] in 16 kHz samples
>>> [(round(s / SAMPLE_RATE, 3), round(e / SAMPLE_RATE, 3)) for s, e in spans]
[(0.962, 2.046)]
>>> speech_seconds(spans)                        # whole 32 ms frames, padded by 30 ms
1.084
>>> detector.detect(wav.split(7000)) == spans     # streamed in blocks: the same spans
True
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import torch

from agegender_sb.defaults import SAMPLE_RATE
from agegender_sb.speech.frames import (
    FRAME_SAMPLES,
    SpeechDetector,
    import_silero,
    speech_seconds,
)

__all__ = [
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "EnergyDetector",
    "SileroDetector",
    "SpeechDetector",
    "make_detector",
    "speech_seconds",
]

DEFAULT_DETECTOR = "silero"
"""Name of the detector :func:`make_detector` builds by default."""

DETECTORS = ("silero", "energy", "none")
"""Names :func:`make_detector` accepts (``None`` is the same as ``"none"``)."""


# --------------------------------------------------------------------------------------------
# Speech detectors
# --------------------------------------------------------------------------------------------


def _load_silero(**kwargs):
    """``silero_vad.load_silero_vad(**kwargs)``, silero imported by
    :func:`~agegender_sb.speech.frames.import_silero`."""
    silero_vad = import_silero()
    with warnings.catch_warnings():
        # Noise from silero's loader, not the caller's business: its fallback to
        # importlib.resources.path and torch.jit.load's deprecation notice.
        warnings.filterwarnings(
            "ignore", message=r"path is deprecated", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")
        return silero_vad.load_silero_vad(**kwargs)


class SileroDetector(SpeechDetector):
    """Silero VAD (``silero-vad`` package, MIT; the model ships inside its wheel).

    The model scores each 512-sample chunk with a speech probability, keeping its recurrent
    state and 64-sample context from chunk to chunk (and so across blocks); the last partial
    chunk is zero-padded, as ``silero_vad.get_speech_timestamps`` does, and the probabilities
    go through the same post-processing, so the spans equal ``get_speech_timestamps`` with
    the same options (no ``max_speech_duration_s`` split).

    The model is loaded on first use, once per detector. One detector runs one signal at a
    time (``detect`` holds a lock); use one detector per thread for parallel work.

    Parameters
    ----------
    threshold : float
        Speech probability at or above which a chunk is speech (silero's default 0.5).
    neg_threshold : float, optional
        Probability below which a chunk inside a span is silence; default
        ``max(threshold - 0.15, 0.01)`` as in silero (but never above ``threshold``).
    min_speech_s, min_silence_s, speech_pad_s : float
        Seconds: spans not longer than ``min_speech_s`` (0.25) are dropped; a span ends after
        ``min_silence_s`` (0.1) of silence; spans are padded by ``speech_pad_s`` (0.03).
    backend : {"jit", "onnx"}
        ``"jit"`` (default): silero's TorchScript model, one chunk per call (see
        ``num_threads``). ``"onnx"``: silero's sequence ONNX export (same weights, up to 512
        chunks per call, about 3-4x faster), in its own one-thread ONNX Runtime session; needs
        ``onnxruntime`` (``pip install "agegender_sb[onnx]"``). Probabilities agree with
        the TorchScript model to float rounding, not bit for bit.
    num_threads : int or None
        Torch intra-op threads while the TorchScript model runs: ``detect`` sets
        ``torch.set_num_threads(num_threads)`` on entry and puts the caller's value back on
        exit (also on error), so nothing changes for the rest of the process; default 1.
        The model's per-chunk operations are too small to gain from threads, and on a busy
        machine several threads cost much more: a 10 s signal took 0.07-0.14 s with 1 thread
        and 0.6-6 s with 2 on a loaded 2-core machine. While ``detect`` runs, torch work in
        other threads of the process sees this setting too. ``None`` leaves the setting
        alone. Not used by the ``"onnx"`` backend (its session has one thread of its own).
    fallback : bool
        Where Silero finds no speech in a whole signal, take a second look (default True):
        sound at least 20 dB above the signal's own background and not white-noise-like
        (:class:`~agegender_sb.speech.relative.RelativeLevel`) counts as speech. Silero
        misses some real speech (a child's breathy utterances, docs/reliability.md);
        silence, DC, steady noise of any level, white-noise bursts and clicks stay refused.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        neg_threshold: float | None = None,
        min_speech_s: float = 0.25,
        min_silence_s: float = 0.1,
        speech_pad_s: float = 0.03,
        backend: str = "jit",
        num_threads: int | None = 1,
        fallback: bool = True,
    ):
        if neg_threshold is None:  # silero's rule, kept at or below the threshold
            if not 0.0 < float(threshold) <= 1.0:  # NaN too
                raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
            neg_threshold = min(max(threshold - 0.15, 0.01), threshold)
        super().__init__(threshold, neg_threshold, min_speech_s, min_silence_s, speech_pad_s)
        if not isinstance(fallback, bool):
            raise ValueError(f"fallback must be True or False, got {fallback!r}")
        if backend not in ("jit", "onnx"):
            raise ValueError(f"backend must be 'jit' or 'onnx', got {backend!r}")
        if num_threads is not None and not (isinstance(num_threads, int) and num_threads > 0):
            raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
        self.backend = backend
        self.num_threads = num_threads
        self.fallback = fallback
        self._model = None
        self._state = None

    def _load(self):
        if self._model is None:
            if self.backend == "onnx":
                try:
                    import onnxruntime  # noqa: F401
                except ImportError as error:
                    raise ImportError(
                        "SileroDetector(backend='onnx') needs onnxruntime: "
                        'pip install "agegender_sb[onnx]"'
                    ) from error
                self._model = _load_silero(sequence=True)
            else:
                self._model = _load_silero()
        return self._model

    @contextlib.contextmanager
    def _running(self):
        if self.backend != "jit" or self.num_threads is None:
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def _second_opinion(self):
        if not self.fallback:
            return None
        from agegender_sb.speech.relative import RelativeLevel

        return RelativeLevel()

    def _reset(self) -> None:
        model = self._load()
        if self.backend == "onnx":
            zeros = np.zeros((1, 1, 128), dtype=np.float32)
            self._state = {
                "h": zeros,
                "c": zeros.copy(),
                "context": np.zeros(64, np.float32),
                "pending": np.zeros((0, FRAME_SAMPLES), np.float32),
            }
        else:
            model.reset_states()

    def _score(self, frames: torch.Tensor) -> np.ndarray:
        if self.backend == "onnx":
            # Whole groups of _ONNX_GROUP frames only, counted from the signal's start, so
            # every call sees the same frames whatever the block sizes.
            pending = np.concatenate([self._state["pending"], frames.numpy()])
            whole = len(pending) // _ONNX_GROUP * _ONNX_GROUP
            self._state["pending"] = pending[whole:]
            return self._run_onnx(pending[:whole])
        model = self._model
        return np.array(
            [model(frame[None], SAMPLE_RATE).item() for frame in frames], dtype=np.float32
        )

    def _flush(self) -> np.ndarray:
        if self.backend == "onnx":
            pending, self._state["pending"] = self._state["pending"], None
            return self._run_onnx(pending)
        return super()._flush()

    def _run_onnx(self, frames: np.ndarray) -> np.ndarray:
        out = [np.zeros(0, dtype=np.float32)]
        state = self._state
        for first in range(0, len(frames), _ONNX_GROUP):
            group = frames[first : first + _ONNX_GROUP]
            # Each frame goes in with the last 64 samples before it, as the streaming model.
            context = np.concatenate([state["context"][None], group[:-1, -64:]])
            probs, state["h"], state["c"] = self._model.session.run(
                ["speech_probs", "hn", "cn"],
                {
                    "input": np.concatenate([context, group], axis=1),
                    "h": state["h"],
                    "c": state["c"],
                },
            )
            state["context"] = group[-1, -64:].copy()
            out.append(np.asarray(probs, dtype=np.float32).reshape(-1))
        return np.concatenate(out)


_ONNX_GROUP = 512  # frames per ONNX Runtime call (16.4 s); silero's default max_frames


class EnergyDetector(SpeechDetector):
    """Model-free fallback: frame level in dBFS against an absolute threshold.

    Each 512-sample (32 ms) frame's level is ``20 * log10(std)`` of its samples in dBFS
    (0 dB = a full-scale square wave, a full-scale sine is -3 dB). The standard deviation,
    not the RMS, so a DC offset is not energy. A frame at or above ``threshold_db`` is speech;
    inside a span a frame below ``threshold_db - hysteresis_db`` is silence; then the same
    post-processing as :class:`SileroDetector` (minimum speech and silence, padding).

    It cannot tell speech from other sound: music, traffic or loud noise are "speech" to it,
    and speech recorded quieter than the threshold is not. Use it where Silero is not
    available or not wanted, and lower ``threshold_db`` for quiet recordings.

    Parameters
    ----------
    threshold_db : float
        Level (dBFS) at or above which a frame is speech. Default -50: read speech in
        speechocean762 has utterance levels of -41 to -19 dBFS and every Silero speech span
        has a frame at -33 dBFS or louder, while its background sits near -59 dBFS; faint
        hiss at -60 dBFS stays 10 dB below.
    hysteresis_db : float
        Inside a span, frames must fall below ``threshold_db - hysteresis_db`` (default
        -56 dBFS) to count as silence, so quiet syllables do not split a span.
    min_speech_s, min_silence_s, speech_pad_s : float
        As for :class:`SileroDetector` (0.25, 0.1 and 0.03 s).
    """

    def __init__(
        self,
        threshold_db: float = -50.0,
        hysteresis_db: float = 6.0,
        min_speech_s: float = 0.25,
        min_silence_s: float = 0.1,
        speech_pad_s: float = 0.03,
    ):
        threshold_db, hysteresis_db = float(threshold_db), float(hysteresis_db)
        if not math.isfinite(threshold_db):
            raise ValueError(f"threshold_db must be finite, got {threshold_db!r}")
        if not (math.isfinite(hysteresis_db) and hysteresis_db >= 0):
            raise ValueError(f"hysteresis_db must be finite and >= 0, got {hysteresis_db!r}")
        # Levels map to scores in [0, 1]: threshold_db -> 0.5, threshold_db - hysteresis_db
        # -> 0.35 (silero's gap between its two thresholds), linear between and clipped.
        super().__init__(
            0.5, 0.35 if hysteresis_db else 0.5, min_speech_s, min_silence_s, speech_pad_s
        )
        self.threshold_db = threshold_db
        self.hysteresis_db = hysteresis_db

    @staticmethod
    def levels_db(frames: torch.Tensor) -> np.ndarray:
        """Level in dBFS (``20 log10 std``; -inf when constant) of frames ``[n, t]`` -> ``[n]``.

        >>> EnergyDetector.levels_db(torch.tensor([[1.0, -1.0], [0.3, 0.3]])).tolist()
        [0.0, -inf]
        """
        std = frames.to(torch.float64).std(dim=1, correction=0).numpy()
        with np.errstate(divide="ignore"):
            return 20.0 * np.log10(std)

    def _scores(self, levels: np.ndarray) -> np.ndarray:
        if self.hysteresis_db:
            scores = 0.5 + 0.15 * (levels - self.threshold_db) / self.hysteresis_db
            return np.clip(np.nan_to_num(scores, neginf=0.0), 0.0, 1.0).astype(np.float32)
        return (levels >= self.threshold_db).astype(np.float32)

    def _reset(self) -> None:
        pass

    def _score(self, frames: torch.Tensor) -> np.ndarray:
        return self._scores(self.levels_db(frames))

    def _score_tail(self, tail: torch.Tensor) -> np.ndarray:
        # The level of the samples there are, not diluted by zero padding.
        return self._scores(self.levels_db(tail[None]))


def make_detector(name: str | None = DEFAULT_DETECTOR, **options) -> SpeechDetector | None:
    """A speech detector by name.

    Parameters
    ----------
    name : {"silero", "energy", "none"} or None
        ``"silero"`` (:data:`DEFAULT_DETECTOR`) -> :class:`SileroDetector`, ``"energy"`` ->
        :class:`EnergyDetector`, ``None`` or ``"none"`` -> ``None`` (no detection: the whole
        signal is analysed). Case-insensitive.
    **options
        Keyword arguments of the detector's class (none allowed for ``"none"``).

    Raises
    ------
    ValueError
        An unknown name (the message lists the choices), or options for ``"none"``.

    >>> make_detector("energy", threshold_db=-40).threshold_db
    -40.0
    >>> make_detector(None) is None
    True
    >>> make_detector("webrtc")
    Traceback (most recent call last):
    ...
    ValueError: unknown speech detector 'webrtc'; choose one of: 'silero', 'energy', 'none'
    """
    key = "none" if name is None else str(name).lower()
    if key == "silero":
        return SileroDetector(**options)
    if key == "energy":
        return EnergyDetector(**options)
    if key == "none":
        if options:
            raise ValueError(f"speech detector 'none' takes no options, got {sorted(options)}")
        return None
    choices = ", ".join(repr(c) for c in DETECTORS)
    raise ValueError(f"unknown speech detector {name!r}; choose one of: {choices}")


