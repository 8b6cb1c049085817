"""File analysis: file → spans → (speech) → windows → batches → the model → pooled results.

:class:`AnalysisSettings` holds the settings that decide the numbers, checked once when it is
made; :class:`Analyzer` is built with its classifier and those settings. For each file it
reads the header once (:class:`~agegender_sb.audio.AudioFile`), takes the spans to analyse
(the whole file, or the speaker turns given), and for each span:

- a span up to ``max_whole`` seconds is analysed **whole**, exactly as the reference analyses
  that signal; a speech detector, when set, only decides whether there is speech at all (no
  speech: no age and no gender) and, with ``trim=True``, cuts the span to its speech;
- a longer span is cut into ``window``-second windows every ``hop`` seconds, each read from
  the file on its own (bounded memory); with a detector, windows cover detected speech only.

One method, :meth:`Analyzer.predict_signals`, calls the model. Results are values
(:class:`~agegender_sb.inference.results.FileResult`), pooled with
:meth:`~agegender_sb.inference.results.AgeGenderPrediction.pool` (seconds-weighted mean of
the age output and the gender logits): windows into a span, spans into a file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from agegender_sb.audio import AudioFile, check_signal
from agegender_sb.defaults import (
    DEFAULT_CONTEXT,
    DEFAULT_WINDOW,
    MAX_WHOLE_SECONDS,
    MIN_SAMPLES,
    MIN_TAIL,
    SAMPLE_RATE,
)
from agegender_sb.errors import AudioError, SettingsError
from agegender_sb.inference.results import (
    AgeGenderPrediction,
    FileResult,
    SpanResult,
    Status,
    pool_spans,
)

__all__ = ["MIN_HOP", "plan_windows", "AnalysisSettings", "Analyzer"]

#: Shortest hop between windows (seconds): at most 20 windows per second of audio; a
#: smaller hop multiplies the work without telling more about a voice.
MIN_HOP = 0.05


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
    AnalysisSettings(window=window, hop=hop, min_tail=min_tail)  # the settings' one check
    hop = window if hop is None else hop
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


def _seconds_setting(name: str, value, minimum: float = 0.0, strict: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise SettingsError(f"{name} must be a number of seconds {'>' if strict else '>='} "
                            f"{minimum:g}, got {value!r}")
    return value


@dataclass(frozen=True)
class AnalysisSettings:
    """The settings that decide which samples the model sees, checked once here.

    Parameters
    ----------
    window, hop : float
        Window length and hop in seconds for spans longer than ``max_whole`` (``hop``
        defaults to ``window``; at least :data:`MIN_HOP`, at most ``window``).
    max_whole : float
        Longest span analysed in one pass (0: always windows).
    min_tail : float
        See :func:`plan_windows`.
    batch_size : int
        Signals per model call (results do not depend on it).
    detector : object, optional
        A speech detector (``detect(blocks) -> [(start, end)]`` in 16 kHz samples, see
        :mod:`agegender_sb.speech.detectors`); None analyses every sample, as the reference.
    trim : bool
        With a detector, cut spans analysed whole to their speech too.
    context : float
        Seconds of audio kept on both sides of detected speech where it is cut out (windows
        of long spans, ``trim``): utterances carry a little silence at their edges, so with
        it the speech of a long recording is analysed like the same utterances recorded one
        by one (docs/real-recordings.md). Regions closer than twice this are joined.

    Example
    -------
    >>> AnalysisSettings(window=2.0).hop
    2.0
    >>> AnalysisSettings(hop=0.0001)
    Traceback (most recent call last):
    ...
    agegender_sb.errors.SettingsError: hop 0.0001 s would plan more than 20 windows per \
second of audio: use a hop of at least 0.05 s
    """

    window: float = DEFAULT_WINDOW
    hop: float | None = None
    max_whole: float = MAX_WHOLE_SECONDS
    min_tail: float = MIN_TAIL
    batch_size: int = 1
    detector: object = None
    trim: bool = False
    context: float = DEFAULT_CONTEXT

    def __post_init__(self):
        put = object.__setattr__
        window = _seconds_setting("window", self.window, 0.0, strict=True)
        hop = window if self.hop is None else _seconds_setting("hop", self.hop, 0.0, True)
        if window * SAMPLE_RATE < MIN_SAMPLES:
            raise SettingsError(f"window ({window:g} s) shorter than the encoder's "
                                f"{MIN_SAMPLES} samples ({1000 * MIN_SAMPLES / SAMPLE_RATE:.0f} "
                                "ms)")
        if hop < MIN_HOP:
            raise SettingsError(f"hop {hop:g} s would plan more than {1 / MIN_HOP:g} windows per "
                                f"second of audio: use a hop of at least {MIN_HOP:g} s")
        if hop > window:
            raise SettingsError(f"hop ({hop:g} s) longer than the window ({window:g} s) "
                                "would skip audio")
        put(self, "window", window)
        put(self, "hop", hop)
        put(self, "max_whole", _seconds_setting("max_whole", self.max_whole))
        put(self, "min_tail", _seconds_setting("min_tail", self.min_tail))
        put(self, "context", _seconds_setting("context", self.context))
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or (
                self.batch_size < 1):
            raise SettingsError(f"batch_size must be a whole number >= 1, got "
                                f"{self.batch_size!r}")
        if self.trim and self.detector is None:
            raise SettingsError("trim needs a speech detector")
        put(self, "trim", bool(self.trim))

    def record(self) -> dict:
        """Every setting that decides the numbers (recorded with result tables, compared on
        ``--resume``); ``batch_size`` does not change them and is left out."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "batch_size"}
        out["detector"] = None if self.detector is None else repr(self.detector)
        return out


@dataclass
class _Pending:
    """A file read and planned: finished spans, and whole spans waiting for a model call."""

    path: str
    duration: float
    turns: bool
    spans: list = field(default_factory=list)  # SpanResult, or None while waiting
    waiting: list = field(default_factory=list)  # (span index, signal, SpanResult without pred)


class Analyzer:
    """Analyse files with a classifier: one place calling the model.

    Parameters
    ----------
    clf : AgeGenderClassifier
        Anything with ``run_model(wavs, wav_lens) -> AgeGenderPrediction`` and ``device``.
    settings : AnalysisSettings, optional
        The settings (default: the defaults); or give them as keywords.

    Example
    -------
    >>> import soundfile as sf
    >>> from agegender_sb import AgeGenderClassifier
    >>> clf = AgeGenderClassifier.from_hparams(source=getfixture("tiny_checkpoint"))
    >>> path = getfixture("tmp_path") / "x.wav"
    >>> sf.write(path, 0.1 * torch.randn(16000 * 9).numpy(), 16000)
    >>> res = Analyzer(clf, max_whole=5).analyse(path)
    >>> res.spans[0].windows, res.speech
    (((0.0, 4.0), (4.0, 9.0)), 9.0)
    """

    def __init__(self, clf, settings: AnalysisSettings | None = None, **kwargs):
        if clf is None or not hasattr(clf, "run_model"):
            raise TypeError("Analyzer needs the classifier that runs the model")
        if settings is not None and kwargs:
            raise TypeError("give settings or keywords, not both")
        self.clf = clf
        self.settings = settings if settings is not None else AnalysisSettings(**kwargs)
        # short files wait for a batch: one model call per batch_size signals (4 batches
        # of length-sorted signals when batching)
        self._pool = 1 if self.settings.batch_size == 1 else 4 * self.settings.batch_size

    # ------------------------------------------------------------------ the model call
    def predict_signals(self, signals: Sequence[torch.Tensor]) -> AgeGenderPrediction:
        """Predict checked 16 kHz signals of any lengths, ``batch_size`` at a time, in order.

        Batches are grouped by length (longest first) and zero-padded with relative lengths,
        which gives the same results as one at a time.
        """
        size = self.settings.batch_size
        order = sorted(range(len(signals)), key=lambda i: -signals[i].shape[-1])
        preds: list = [None] * len(signals)
        for k in range(0, len(order), size):
            idx = order[k : k + size]
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
        """Analyse one file (all of it, or the speaker ``turns`` given; an empty list of
        turns gives a result with status ``NO_TURNS``).

        Raises
        ------
        FileNotFoundError, AudioError, ValueError
            Naming the file and the problem (turns: see :mod:`agegender_sb.speech.turns`).
        """
        for _, result in self.analyse_many([(path, turns)], raise_errors=True):
            return result
        raise AssertionError("unreachable")

    def analyse_many(
        self, items: Iterable, raise_errors: bool = False
    ) -> Iterator[tuple[str, FileResult | Exception]]:
        """Analyse ``(path, turns or None)`` items (or plain paths) in order.

        Yields ``(path, FileResult or the error)`` in input order, each file as soon as its
        result is known: a file analysed in windows, or one that failed, comes out at once
        (with the files before it); with ``batch_size > 1`` a file analysed whole waits for
        the model call it shares with the next files. An unreadable file, bad turns or a
        failure of the model on one file (e.g. out of memory) is yielded, not raised, so one
        bad file does not stop the others.
        """
        group: list = []
        n_signals = 0
        for item in items:
            path, turns = (item, None) if isinstance(item, (str, os.PathLike)) else item
            waits = False
            try:
                pending = self._read(path, turns)
            except (OSError, ValueError, RuntimeError) as err:
                if raise_errors:
                    raise
                group.append((str(path), _error(path, err)))
            else:
                group.append((str(path), pending))
                n_signals += len(pending.waiting)
                waits = bool(pending.waiting)
            if n_signals >= self._pool or not waits:  # a finished file never waits
                yield from self._flush(group, raise_errors)
                group, n_signals = [], 0
        yield from self._flush(group, raise_errors)

    def _flush(self, group, raise_errors):
        waiting = [p for _, p in group if isinstance(p, _Pending) and p.waiting]
        signals = [sig for p in waiting for _, sig, _ in p.waiting]
        failed: dict = {}
        if signals:
            try:
                preds = self.predict_signals(signals)
                row = 0
                for p in waiting:
                    for i, _, span in p.waiting:
                        p.spans[i] = dataclasses.replace(span, prediction=preds.take([row]))
                        row += 1
            except RuntimeError as err:  # one of them failed: one by one to find which
                if raise_errors and len(waiting) == 1:
                    raise RuntimeError(f"{waiting[0].path}: the model failed on this file "
                                       f"({err})") from err
                for p in waiting:
                    try:
                        for i, sig, span in p.waiting:
                            p.spans[i] = dataclasses.replace(
                                span, prediction=self.predict_signals([sig]))
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
        s = self.settings
        with AudioFile(path) as audio:
            if turns is not None and not turns:  # --rttm had no entry for this file
                return _Pending(str(path), audio.duration, True)
            if turns is None:
                spans = [(0, audio.n16, None)]
            else:
                from agegender_sb.speech.turns import check_turns

                spans = [(_samples(t.start), min(audio.n16, _samples(t.end)), t.speaker)
                         for t in check_turns(turns, audio.duration, str(path))]
            pending = _Pending(str(path), audio.duration, turns is not None)
            for start, end, speaker in spans:
                span = SpanResult(start / SAMPLE_RATE, end / SAMPLE_RATE, speaker)
                if (end - start) / SAMPLE_RATE > s.max_whole:
                    pending.spans.append(self._windowed(audio, start, end, span))
                    continue
                try:
                    wav = audio.read(start, end)
                except AudioError as err:
                    if turns is None:
                        raise
                    # this turn only (e.g. shorter than 25 ms)
                    pending.spans.append(dataclasses.replace(span, status=Status.FAILED,
                                                             error=str(err)))
                    continue
                speech = (end - start) / SAMPLE_RATE
                found = None
                if s.detector is not None:
                    found = s.detector.detect([wav])
                    speech = sum(e - b for b, e in found) / SAMPLE_RATE
                span = dataclasses.replace(
                    span, speech=speech, windows=((span.start, span.end),),
                    speech_spans=None if found is None else tuple(_seconds(found, start)))
                if found is not None and not found:
                    pending.spans.append(dataclasses.replace(span, status=Status.NO_SPEECH))
                    continue
                if found is not None and s.trim:
                    wav = torch.cat([wav[a:b] for a, b in self._with_context(found, 0,
                                                                              end - start)])
                    if wav.shape[0] < MIN_SAMPLES:
                        wav = torch.nn.functional.pad(wav, (0, MIN_SAMPLES - wav.shape[0]))
                pending.spans.append(None)
                pending.waiting.append((len(pending.spans) - 1, wav, span))
        return pending

    def _with_context(self, spans, lo: int, hi: int) -> list:
        """Speech spans widened by the context on both sides (within ``[lo, hi)``), joined
        where they meet."""
        pad = _samples(self.settings.context)
        return _join([(max(lo, s - pad), min(hi, e + pad)) for s, e in spans])

    def _windowed(self, audio: AudioFile, start: int, end: int, span: SpanResult) -> SpanResult:
        """Windows over the span, predicted in batches as they are read.

        With a detector, the windows cut the span's speech joined end to end (the pauses
        left out, the context kept around it), so that they have the planned length
        however short the speech regions are; speech that joined is no longer than
        ``max_whole`` is analysed in one pass, like a recording of that speech alone. A
        window's ``(start, end)`` are the file times of its first and last sample.
        """
        s = self.settings
        found = None
        if s.detector is None:
            regions = [(start, end)]
            speech = (end - start) / SAMPLE_RATE
        else:
            found = s.detector.detect(audio.blocks(start, end))
            speech = sum(e - b for b, e in found) / SAMPLE_RATE
            span = dataclasses.replace(span, speech=speech,
                                       speech_spans=tuple(_seconds(found, start)))
            if not found:
                return dataclasses.replace(span, status=Status.NO_SPEECH)
            regions = [(start + a, start + b)
                       for a, b in self._with_context(found, 0, end - start)]
        total = sum(e - b for b, e in regions)
        if total < MIN_SAMPLES:  # too little speech for the encoder: one wider region
            s0 = max(0, min(regions[0][0], audio.n16 - MIN_SAMPLES))
            regions, total = [(s0, s0 + MIN_SAMPLES)], MIN_SAMPLES
        offsets = [0]
        for a, b in regions:
            offsets.append(offsets[-1] + b - a)
        preds, buf, windows, weights = [], [], [], []
        if total <= s.max_whole * SAMPLE_RATE:  # the speech is short: one whole pass
            plan = [(0, total)]
        else:
            plan = plan_windows(total, s.window, s.hop, s.min_tail)
        for a, b in plan:
            pieces, first, last = [], None, None
            for k, (r0, _) in enumerate(regions):  # the regions under [a, b) of the stream
                lo, hi = max(a, offsets[k]), min(b, offsets[k + 1])
                if lo < hi:
                    f0, f1 = r0 + lo - offsets[k], r0 + hi - offsets[k]
                    pieces.append((f0, f1))
                    first = f0 if first is None else first
                    last = f1
            name = f"{audio.path} [{first / SAMPLE_RATE:.2f}-{last / SAMPLE_RATE:.2f} s]"
            wav = torch.cat([audio.read(f0, f1, name, check=False) for f0, f1 in pieces])
            check_signal(wav, name)
            buf.append(wav)
            windows.append((first, last))
            weights.append(b - a)
            if len(buf) == s.batch_size:
                preds.append(self.predict_signals(buf))
                buf = []
        if buf:
            preds.append(self.predict_signals(buf))
        window_predictions = AgeGenderPrediction.cat(preds)
        return dataclasses.replace(
            span, speech=speech, windows=tuple(_seconds(windows, 0)),
            window_predictions=window_predictions,
            window_speech=tuple(w / SAMPLE_RATE for w in weights),
            prediction=window_predictions.pool(weights))


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
    spans = tuple(p.spans)
    if not spans:
        return FileResult(p.path, p.duration, spans, None, 0.0, Status.NO_TURNS, True)
    pooled = spans[0] if len(spans) == 1 and not p.turns else pool_spans(spans)
    return FileResult(p.path, p.duration, spans, pooled.prediction, pooled.speech,
                      pooled.status, p.turns, pooled.error)
