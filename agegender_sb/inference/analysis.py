"""File analysis: file → spans → (speech) → windows → batches → the model → pooled results.

:class:`Analyzer` holds the classifier and the settings, checked once in its constructor
(window, hop, max-whole, batch size, the speech detector, trimming). For each file it reads
the header once (:class:`~agegender_sb.audio.AudioFile`), takes the spans to analyse (the
whole file, or the speaker turns given), and for each span:

- a span up to ``max_whole`` seconds is analysed **whole**, exactly as the reference analyses
  that signal; a speech detector, when set, only decides whether there is speech at all (no
  speech: no age and no gender) and, with ``trim=True``, cuts the span to its speech;
- a longer span is cut into ``window``-second windows every ``hop`` seconds, each read from
  the file on its own (bounded memory); with a detector, windows cover detected speech only.

One method, :meth:`Analyzer.predict_signals`, calls the model. Results are pooled with
:meth:`~agegender_sb.inference.results.AgeGenderPrediction.pool` (seconds-weighted mean of the age
output and the gender logits): windows into a span, spans into a file, turns into a speaker.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from agegender_sb.audio import AudioError, AudioFile, check_signal
from agegender_sb.defaults import (
    DEFAULT_CONTEXT,
    DEFAULT_WINDOW,
    MAX_WHOLE_SECONDS,
    MIN_SAMPLES,
    MIN_TAIL,
    SAMPLE_RATE,
)
from agegender_sb.inference.results import AgeGenderPrediction

__all__ = [
    "MAX_WHOLE_SECONDS",
    "DEFAULT_WINDOW",
    "DEFAULT_HOP",
    "MIN_TAIL",
    "NO_SPEECH",
    "plan_windows",
    "SpanResult",
    "FileResult",
    "pool_spans",
    "Analyzer",
]

#: Hop between window starts in seconds (``hop=None`` means the window: no overlap).
DEFAULT_HOP = DEFAULT_WINDOW
#: What a result without speech says.
NO_SPEECH = "no speech detected"


def plan_windows(
    n_samples: int,
    window: float = DEFAULT_WINDOW,
    hop: float | None = None,
    min_tail: float = MIN_TAIL,
    sample_rate: int = SAMPLE_RATE,
) -> list[tuple[int, int]]:
    """Window boundaries ``[(start, end), ...]`` in samples covering ``n_samples``.

    Windows start every ``hop`` seconds and last ``window`` seconds; the last window ends at
    the end of the signal. If that last window would be shorter than ``min_tail`` seconds,
    it is merged into the previous window (which then ends at the end of the signal, so no
    window is longer than ``hop + min_tail``). A signal shorter than one window is one window.

    Example
    -------
    >>> plan_windows(10, window=4, hop=4, min_tail=3, sample_rate=1)
    [(0, 4), (4, 10)]
    >>> plan_windows(11, window=4, hop=4, min_tail=3, sample_rate=1)
    [(0, 4), (4, 8), (8, 11)]
    >>> plan_windows(9, window=4, hop=2, min_tail=3, sample_rate=1)
    [(0, 4), (2, 6), (4, 8), (6, 9)]
    """
    hop = window if hop is None else hop
    if not (window > 0 and hop > 0 and math.isfinite(window) and math.isfinite(hop)):
        raise ValueError(f"window and hop must be positive, got {window} and {hop}")
    if hop > window:
        raise ValueError(f"hop ({hop} s) longer than the window ({window} s) would skip audio")
    if window * sample_rate < MIN_SAMPLES * sample_rate / SAMPLE_RATE:
        raise ValueError(f"window ({window} s) shorter than the encoder's {MIN_SAMPLES} samples "
                         f"({1000 * MIN_SAMPLES / SAMPLE_RATE:.0f} ms)")
    win = max(1, round(window * sample_rate))
    step = max(1, round(hop * sample_rate))
    tail = round(min_tail * sample_rate)
    bounds = []
    start = 0
    while start + win < n_samples:
        bounds.append((start, start + win))
        start += step
    if bounds and n_samples - start < tail:
        bounds[-1] = (bounds[-1][0], n_samples)
    else:
        bounds.append((start, n_samples))
    return bounds


@dataclass
class SpanResult:
    """The result of one analysed span (a whole file, or one speaker turn).

    Attributes
    ----------
    start, end : float
        Seconds in the file.
    speaker : str or None
        The turn's speaker (None for a whole file).
    prediction : AgeGenderPrediction or None
        One row; None when no speech was detected (or the turn failed: see ``error``).
    speech : float
        Seconds of speech the result rests on: detected speech with a detector, the whole
        span without one.
    windows : list of (float, float)
        Analysed windows (seconds) of a windowed span, ``[(start, end)]`` for a whole one.
    window_predictions : AgeGenderPrediction or None
        One row per window.
    window_speech : list of float
        Seconds of audio (of speech, with a detector) each window holds.
    speech_spans : list of (float, float) or None
        What the detector found in the span (None without a detector).
    error : str or None
        Why this span has no result (``NO_SPEECH``, or a turn that could not be read).
    """

    start: float
    end: float
    speaker: str | None = None
    prediction: AgeGenderPrediction | None = None
    speech: float = 0.0
    windows: list = field(default_factory=list)
    window_predictions: AgeGenderPrediction | None = None
    window_speech: list = field(default_factory=list)
    speech_spans: list | None = None
    error: str | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def windowed(self) -> bool:
        return self.windows != [(self.start, self.end)]


@dataclass
class FileResult:
    """The result of analysing one file.

    Attributes
    ----------
    path : str
    duration : float
        Seconds of audio (frames / sample rate of the file).
    spans : list of SpanResult
        One for the whole file, or one per speaker turn (in time order).
    prediction : AgeGenderPrediction or None
        The file's row: its spans pooled by speech seconds; None without speech.
    speech : float
        Seconds of speech under ``prediction``.
    error : str or None
        ``NO_SPEECH`` when no span has speech.
    """

    path: str
    duration: float
    spans: list
    prediction: AgeGenderPrediction | None
    speech: float
    error: str | None = None

    @property
    def speech_spans(self) -> list | None:
        """Detected speech ``(start, end)`` seconds over all spans (None without detector)."""
        if all(s.speech_spans is None for s in self.spans):
            return None
        return [x for s in self.spans for x in (s.speech_spans or [])]

    def speakers(self) -> dict:
        """``{speaker: SpanResult}``: each speaker's turns pooled by speech seconds."""
        out: dict = {}
        for span in self.spans:
            if span.speaker is not None:
                out.setdefault(span.speaker, []).append(span)
        return {spk: pool_spans(spans, spk) for spk, spans in out.items()}


def pool_spans(spans: Sequence[SpanResult], speaker=None) -> SpanResult:
    """Spans pooled by their seconds of speech into one (no speech anywhere: no result)."""
    with_speech = [s for s in spans if s.prediction is not None and s.speech > 0]
    start, end = min(s.start for s in spans), max(s.end for s in spans)
    if not with_speech:
        errors = {s.error for s in spans if s.error}
        return SpanResult(start, end, speaker, error="; ".join(sorted(errors)) or NO_SPEECH)
    pred = AgeGenderPrediction.cat([s.prediction for s in with_speech])
    speech = [s.speech for s in with_speech]
    return SpanResult(start, end, speaker, pred.pool(speech), float(sum(speech)))


@dataclass
class _Pending:
    """A file whose whole spans wait for a batched model call."""

    path: str
    duration: float
    spans: list
    signals: list = field(default_factory=list)  # (span index, signal)


class Analyzer:
    """Analyse files with a classifier: settings checked once, one place calling the model.

    Parameters
    ----------
    clf : AgeGenderClassifier
        Anything with ``run_model(wavs, wav_lens) -> AgeGenderPrediction`` and ``device``.
    window, hop : float, optional
        Seconds (defaults :data:`DEFAULT_WINDOW`; ``hop`` defaults to ``window``).
    max_whole : float, optional
        Longest span analysed in one pass (default :data:`MAX_WHOLE_SECONDS`; 0 → always
        windows).
    min_tail : float
        See :func:`plan_windows`.
    batch_size : int
        Signals per model call (results do not depend on it).
    detector : object, optional
        A speech detector (``detect(blocks) -> [(start, end)]`` in 16 kHz samples, see
        :mod:`agegender_sb.speech.detectors`); None analyses every sample, as the reference does.
    trim : bool
        With a detector, cut spans analysed whole to their speech too (the speech parts
        joined), instead of analysing them exactly as the reference does.
    context : float
        Seconds of audio kept on both sides of detected speech where it is cut out (windows
        of long spans, ``trim``), as utterances carry a little silence at their edges: with
        it, the speech of a long recording is analysed like the same utterances recorded
        one by one (how the default was chosen: README, "Real recordings"). Regions closer
        than twice this are joined.

    Example
    -------
    >>> import soundfile as sf
    >>> from agegender_sb import AgeGenderClassifier
    >>> clf = AgeGenderClassifier.from_hparams(source=getfixture("tiny_checkpoint"))
    >>> path = getfixture("tmp_path") / "x.wav"
    >>> sf.write(path, 0.1 * torch.randn(16000 * 9).numpy(), 16000)
    >>> res = Analyzer(clf, max_whole=5).analyse(path)
    >>> res.spans[0].windows, res.speech
    ([(0.0, 4.0), (4.0, 9.0)], 9.0)
    """

    def __init__(self, clf, window=None, hop=None, max_whole=None, min_tail=MIN_TAIL,
                 batch_size=1, detector=None, trim=False, context=DEFAULT_CONTEXT):
        self.clf = clf
        self.window = DEFAULT_WINDOW if window is None else float(window)
        self.hop = self.window if hop is None else float(hop)
        self.max_whole = MAX_WHOLE_SECONDS if max_whole is None else float(max_whole)
        self.min_tail = float(min_tail)
        plan_windows(1, self.window, self.hop, self.min_tail)  # validates window and hop
        if not (self.max_whole >= 0 and math.isfinite(self.max_whole)):
            raise ValueError(f"max_whole must be a number of seconds >= 0, got {max_whole}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        if trim and detector is None:
            raise ValueError("trim needs a speech detector")
        self.detector = detector
        self.trim = bool(trim)
        self.context = float(context)
        if not (self.context >= 0 and math.isfinite(self.context)):
            raise ValueError(f"context must be a number of seconds >= 0, got {context}")

    def settings(self) -> dict:
        """The settings that decide the numbers (recorded with result tables)."""
        return {"window": self.window, "hop": self.hop, "max_whole": self.max_whole,
                "min_tail": self.min_tail, "trim": self.trim, "context": self.context,
                "detector": None if self.detector is None else repr(self.detector)}

    # ------------------------------------------------------------------ the model call
    def predict_signals(self, signals: Sequence[torch.Tensor]) -> AgeGenderPrediction:
        """Predict checked 16 kHz signals of any lengths, ``batch_size`` at a time, in order.

        Batches are grouped by length (longest first) and zero-padded with relative lengths,
        which gives the same results as one at a time.
        """
        order = sorted(range(len(signals)), key=lambda i: -signals[i].shape[-1])
        preds: list = [None] * len(signals)
        for k in range(0, len(order), self.batch_size):
            idx = order[k : k + self.batch_size]
            longest = max(signals[i].shape[-1] for i in idx)
            wavs = torch.zeros(len(idx), longest)
            for row, i in enumerate(idx):
                wavs[row, : signals[i].shape[-1]] = signals[i]
            lens = torch.tensor([signals[i].shape[-1] / longest for i in idx],
                                dtype=torch.float64)
            batch = self.clf.run_model(wavs.to(self.clf.device), lens.to(self.clf.device))
            for row, i in enumerate(idx):
                preds[i] = batch.take([row])
        return AgeGenderPrediction.cat(preds)

    # ------------------------------------------------------------------ files
    def analyse(self, path: str | os.PathLike, turns=None) -> FileResult:
        """Analyse one file (all of it, or the speaker ``turns`` given).

        Raises
        ------
        FileNotFoundError, AudioError, ValueError
            Naming the file and the problem (turns: see :mod:`agegender_sb.speech.detectors`).
        """
        for _, result in self.analyse_many([(path, turns)], raise_errors=True):
            return result
        raise AssertionError("unreachable")

    def analyse_many(
        self, items: Iterable, raise_errors: bool = False
    ) -> Iterator[tuple[str, FileResult | Exception]]:
        """Analyse ``(path, turns or None)`` items (or plain paths) in order.

        Yields ``(path, FileResult or the error)``; an unreadable file, bad turns or a
        failure of the model on one file (e.g. out of memory) is yielded, not raised, so one
        bad file does not stop the others. Spans analysed whole are predicted in
        length-sorted batches across files (``4 * batch_size`` signals at a time).
        """
        group: list = []
        n_signals = 0
        for item in items:
            path, turns = (item, None) if isinstance(item, (str, os.PathLike)) else item
            try:
                pending = self._read(path, turns)
            except (OSError, ValueError, RuntimeError) as err:
                if raise_errors:
                    raise
                group.append((str(path), _error(path, err)))
                continue
            group.append((str(path), pending))
            n_signals += len(pending.signals)
            if n_signals >= 4 * self.batch_size:
                yield from self._flush(group, raise_errors)
                group, n_signals = [], 0
        yield from self._flush(group, raise_errors)

    def _flush(self, group, raise_errors):
        waiting = [p for _, p in group if isinstance(p, _Pending) and p.signals]
        signals = [sig for p in waiting for _, sig in p.signals]
        failed: dict = {}
        if signals:
            try:
                preds = self.predict_signals(signals)
                row = 0
                for p in waiting:
                    for i, _ in p.signals:
                        p.spans[i].prediction = preds.take([row])
                        row += 1
            except RuntimeError as err:  # one of them failed: one by one to find which
                if raise_errors and len(waiting) == 1:
                    raise RuntimeError(f"{waiting[0].path}: the model failed on this file "
                                       f"({err})") from err
                for p in waiting:
                    try:
                        for i, sig in p.signals:
                            p.spans[i].prediction = self.predict_signals([sig])
                    except RuntimeError as one:
                        failed[id(p)] = RuntimeError(f"{p.path}: the model failed on this "
                                                     f"file ({one})")
        for path, p in group:
            if isinstance(p, Exception):
                yield path, p
            elif id(p) in failed:
                yield path, failed[id(p)]
            else:
                yield path, _finish(p)

    def _read(self, path, turns) -> _Pending:
        """Plan and read one file; windowed spans are predicted here, streaming."""
        with AudioFile(path) as audio:
            if turns is None:
                spans = [(0, audio.n16, None)]
            else:
                from agegender_sb.speech.turns import check_turns

                spans = [(_samples(t.start), min(audio.n16, _samples(t.end)), t.speaker)
                         for t in check_turns(turns, audio.duration, str(path))]
            pending = _Pending(str(path), audio.duration, [])
            for start, end, speaker in spans:
                result = SpanResult(start / SAMPLE_RATE, end / SAMPLE_RATE, speaker)
                pending.spans.append(result)
                if (end - start) / SAMPLE_RATE > self.max_whole:
                    self._windowed(audio, start, end, result)
                    continue
                try:
                    wav = audio.read(start, end)
                except AudioError as err:
                    if turns is None:
                        raise
                    result.error = str(err)  # this turn only (e.g. shorter than 25 ms)
                    continue
                if self.detector is not None:
                    found = self.detector.detect([wav])
                    result.speech_spans = _seconds(found, start)
                    result.speech = sum(e - s for s, e in found) / SAMPLE_RATE
                    if not found:
                        result.error = NO_SPEECH
                        continue
                    if self.trim:
                        wav = torch.cat([wav[s:e] for s, e in
                                         self._with_context(found, 0, end - start)])
                        if wav.shape[0] < MIN_SAMPLES:
                            wav = torch.nn.functional.pad(wav, (0, MIN_SAMPLES - wav.shape[0]))
                else:
                    result.speech = (end - start) / SAMPLE_RATE
                result.windows = [(result.start, result.end)]
                pending.signals.append((len(pending.spans) - 1, wav))
        return pending

    def _with_context(self, spans, lo: int, hi: int) -> list:
        """Speech spans widened by :attr:`context` on both sides (within ``[lo, hi)``), joined
        where they meet."""
        pad = _samples(self.context)
        return _join([(max(lo, s - pad), min(hi, e + pad)) for s, e in spans])

    def _windowed(self, audio: AudioFile, start: int, end: int, result: SpanResult) -> None:
        """Windows over the span, predicted in batches as they are read.

        With a detector, the windows cut the span's speech joined end to end (the pauses
        left out, :attr:`context` kept around it), so that they have the planned length
        however short the speech regions are; speech that joined is no longer than
        ``max_whole`` is analysed in one pass, like a recording of that speech alone. A
        window's ``(start, end)`` are the file times of its first and last sample.
        """
        if self.detector is None:
            regions = [(start, end)]
            result.speech = (end - start) / SAMPLE_RATE
        else:
            found = self.detector.detect(audio.blocks(start, end))
            result.speech_spans = _seconds(found, start)
            result.speech = sum(e - s for s, e in found) / SAMPLE_RATE
            if not found:
                result.error = NO_SPEECH
                return
            regions = [(start + s, start + e) for s, e in self._with_context(found, 0,
                                                                              end - start)]
        total = sum(e - s for s, e in regions)
        if total < MIN_SAMPLES:  # too little speech for the encoder: one wider region
            s0 = max(0, min(regions[0][0], audio.n16 - MIN_SAMPLES))
            regions, total = [(s0, s0 + MIN_SAMPLES)], MIN_SAMPLES
        offsets = [0]
        for s, e in regions:
            offsets.append(offsets[-1] + e - s)
        preds, buf, windows, weights = [], [], [], []
        if total <= self.max_whole * SAMPLE_RATE:  # the speech is short: one whole pass
            plan = [(0, total)]
        else:
            plan = plan_windows(total, self.window, self.hop, self.min_tail)
        for a, b in plan:
            pieces, first, last = [], None, None
            for k, (s, _) in enumerate(regions):  # the regions under [a, b) of the stream
                lo, hi = max(a, offsets[k]), min(b, offsets[k + 1])
                if lo < hi:
                    f0, f1 = s + lo - offsets[k], s + hi - offsets[k]
                    pieces.append((f0, f1))
                    first = f0 if first is None else first
                    last = f1
            name = f"{audio.path} [{first / SAMPLE_RATE:.2f}-{last / SAMPLE_RATE:.2f} s]"
            wav = torch.cat([audio.read(f0, f1, name, check=False) for f0, f1 in pieces])
            check_signal(wav, name)
            buf.append(wav)
            windows.append((first, last))
            weights.append(b - a)
            if len(buf) == self.batch_size:
                preds.append(self.predict_signals(buf))
                buf = []
        if buf:
            preds.append(self.predict_signals(buf))
        result.window_predictions = AgeGenderPrediction.cat(preds)
        result.windows = _seconds(windows, 0)
        result.window_speech = [w / SAMPLE_RATE for w in weights]
        result.prediction = result.window_predictions.pool(weights)


def _join(spans: list) -> list:
    out: list = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _samples(seconds: float) -> int:
    return int(round(seconds * SAMPLE_RATE))


def _seconds(spans, offset: int) -> list:
    return [((offset + s) / SAMPLE_RATE, (offset + e) / SAMPLE_RATE) for s, e in spans]


def _error(path, err: Exception) -> Exception:
    if isinstance(err, RuntimeError) and not isinstance(err, (OSError, ValueError)):
        return RuntimeError(f"{path}: the model failed on this file ({err})")
    return err


def _finish(p: _Pending) -> FileResult:
    if all(s.speaker is None for s in p.spans):
        pooled = p.spans[0] if len(p.spans) == 1 else pool_spans(p.spans)
    else:
        pooled = pool_spans(p.spans)
    if pooled.prediction is None:
        return FileResult(p.path, p.duration, p.spans, None, pooled.speech,
                          pooled.error or NO_SPEECH)
    return FileResult(p.path, p.duration, p.spans, pooled.prediction, pooled.speech)


