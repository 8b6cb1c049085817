"""Long recordings: windows read in blocks, and the aggregation of per-window results.

The model attends over the whole input, so its memory and time grow with the square of the
length (about 2 GB at 30 s for the 24-layer model on CPU, more than 3 GB at 120 s). Files up to
:data:`MAX_WHOLE_SECONDS` are analysed whole, exactly as the reference does. Longer files are
cut into windows of :data:`DEFAULT_WINDOW` seconds every :data:`DEFAULT_HOP` seconds
(audEERING trained on 2-6 s segments and report degradation below 3 s); a final window shorter
than :data:`MIN_TAIL` seconds is merged into the previous one. Each window is read from the
file on its own (``soundfile`` seek + read), with a margin of context at the native rate when
the file must be resampled, so a 60-minute file needs the memory of one window, and the
windows equal slices of the whole-file 16 kHz signal (up to float rounding).

Per-window results are combined by :func:`aggregate`: the duration-weighted mean of the age
output and of the gender logits; probabilities are the softmax of the mean logits.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import soundfile as sf
import torch

from .audio import (
    MIN_SAMPLES,
    SAMPLE_RATE,
    AudioError,
    check_signal,
    load_audio,
    soundfile_call,
    to_mono_16k,
)

__all__ = [
    "MAX_WHOLE_SECONDS",
    "DEFAULT_WINDOW",
    "DEFAULT_HOP",
    "MIN_TAIL",
    "Window",
    "FileAnalysis",
    "probe",
    "resampled_length",
    "plan_windows",
    "iter_windows",
    "aggregate",
    "take",
    "predict_signals",
    "analyse_file",
    "analyse_files",
]

#: Files up to this many seconds are analysed in one pass, as the reference does.
MAX_WHOLE_SECONDS = 30.0
#: Window length in seconds for longer files (audEERING: trained on 2-6 s segments).
DEFAULT_WINDOW = 4.0
#: Hop between window starts in seconds (``hop=None`` means the window: no overlap).
DEFAULT_HOP = DEFAULT_WINDOW
#: A final window shorter than this (seconds) is merged into the previous window.
MIN_TAIL = 3.0

# torchaudio.functional.resample's defaults, used to size the context margin.
_LOWPASS_FILTER_WIDTH = 6
_ROLLOFF = 0.99


@dataclass
class Window:
    """One analysed stretch of a file: 16 kHz sample range ``[start, end)`` and its signal."""

    start: int
    end: int
    wav: torch.Tensor

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE


@dataclass
class FileAnalysis:
    """The result of analysing one file.

    Attributes
    ----------
    path : str
    duration : float
        Seconds of audio (frames / sample rate of the file).
    prediction : AgeGenderPrediction
        One row: the file's result (aggregated over windows for long files).
    segments : list of (float, float)
        ``(start, end)`` in seconds of each analysed window; ``[(0, duration)]`` for a file
        analysed whole.
    segment_predictions : AgeGenderPrediction
        One row per segment.
    windowed : bool
        Whether the file was cut into windows.
    """

    path: str
    duration: float
    prediction: object
    segments: list
    segment_predictions: object
    windowed: bool


def probe(path: str | os.PathLike) -> tuple[int, int]:
    """``(frames, sample_rate)`` of a file from its header, without reading the samples.

    Raises
    ------
    FileNotFoundError, AudioError
        As :func:`agegender_sb.audio.read_audio` does.
    """
    info = soundfile_call(path, sf.info)
    if info.frames <= 0:
        raise AudioError(f"{path}: the file contains no audio samples")
    if info.samplerate <= 0:
        raise AudioError(f"{path}: invalid sample rate {info.samplerate}")
    return int(info.frames), int(info.samplerate)


def _ratio(sample_rate: int) -> tuple[int, int]:
    g = math.gcd(int(sample_rate), SAMPLE_RATE)
    return int(sample_rate) // g, SAMPLE_RATE // g


def resampled_length(frames: int, sample_rate: int) -> int:
    """Samples at 16 kHz that torchaudio's resampling of ``frames`` samples yields.

    Example
    -------
    >>> resampled_length(44100, 44100), resampled_length(8000, 8000), resampled_length(5, 16000)
    (16000, 16000, 5)
    """
    orig, new = _ratio(sample_rate)
    return -(-frames * new // orig)


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
    if window <= 0 or hop <= 0:
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


def _margin_units(orig: int, new: int) -> int:
    """Blocks of ``orig`` native samples to read beyond a window on each side."""
    width = math.ceil(_LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * _ROLLOFF))
    return math.ceil(2 * width / orig) + 1


def iter_windows(
    path: str | os.PathLike,
    window: float = DEFAULT_WINDOW,
    hop: float | None = None,
    min_tail: float = MIN_TAIL,
) -> Iterator[Window]:
    """16 kHz mono windows of a file, each read on its own (bounded memory).

    Each window is read with ``soundfile`` (seek + read) at the file's rate, mixed to mono
    and, when the file is not 16 kHz, resampled with a margin of context on both sides that
    is then trimmed; the block's start is aligned to the resampler's period, so the window
    equals the matching slice of :func:`agegender_sb.audio.load_audio`'s whole-file signal
    up to float rounding.

    Parameters
    ----------
    path : str or PathLike
    window, hop, min_tail : float
        Seconds, as in :func:`plan_windows`.

    Yields
    ------
    Window
        ``start``/``end`` are 16 kHz sample indices.

    Raises
    ------
    FileNotFoundError, AudioError
        For unreadable files, and for windows that are too short or hold NaN/Inf samples.
    """
    frames, sample_rate = probe(path)
    n16 = resampled_length(frames, sample_rate)
    bounds = plan_windows(n16, window, hop, min_tail)
    orig, new = _ratio(sample_rate)
    margin = 0 if sample_rate == SAMPLE_RATE else _margin_units(orig, new)
    with soundfile_call(path, sf.SoundFile) as fh:
        for start, end in bounds:
            name = f"{path} [{start / SAMPLE_RATE:.2f}-{end / SAMPLE_RATE:.2f} s]"
            unit0 = max(0, start // new - margin)  # block start, in resampler periods
            first = unit0 * orig
            last = min(frames, -(-end * orig // new) + margin * orig)
            try:
                fh.seek(first)
                block = fh.read(last - first, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as err:
                raise AudioError(f"{name}: cannot read this part of the file ({err})") from err
            if block.shape[0] != last - first:
                raise AudioError(f"{name}: could read only {block.shape[0]} of "
                                 f"{last - first} samples")
            wav = to_mono_16k(block, sample_rate, name=name)
            offset = unit0 * new
            wav = wav[start - offset : end - offset].clone()
            check_signal(wav, name)
            yield Window(start, end, wav)


def take(pred, index: Sequence[int] | slice):
    """Rows ``index`` of an :class:`~agegender_sb.interface.AgeGenderPrediction`."""
    if isinstance(index, slice):
        rows = list(range(len(pred)))[index]
    else:
        rows = list(index)
    idx = torch.tensor(rows, dtype=torch.long)
    return type(pred)(
        age=pred.age[idx], age_raw=pred.age_raw[idx], gender_logits=pred.gender_logits[idx],
        gender_probs=pred.gender_probs[idx], gender=[pred.gender[i] for i in rows],
        labels=pred.labels, embedding=pred.embedding[idx],
    )


def _concat(preds: list):
    first = preds[0]
    return type(first)(
        age=torch.cat([p.age for p in preds]), age_raw=torch.cat([p.age_raw for p in preds]),
        gender_logits=torch.cat([p.gender_logits for p in preds]),
        gender_probs=torch.cat([p.gender_probs for p in preds]),
        gender=[g for p in preds for g in p.gender], labels=first.labels,
        embedding=torch.cat([p.embedding for p in preds]),
    )


def aggregate(pred, weights):
    """Combine rows of a prediction into one: weighted means, softmax of the mean logits.

    ``age``, ``age_raw``, ``gender_logits`` and ``embedding`` are averaged with ``weights``
    (window durations); ``gender_probs`` is the softmax of the averaged logits, ``gender``
    its most probable label.

    Parameters
    ----------
    pred : AgeGenderPrediction
        ``K`` rows (one per window).
    weights : sequence of float or torch.Tensor
        ``K`` non-negative weights, not all zero.

    Returns
    -------
    AgeGenderPrediction
        One row.

    Example
    -------
    >>> from agegender_sb.interface import AgeGenderPrediction
    >>> logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    >>> p = AgeGenderPrediction(torch.tensor([20.0, 50.0]), torch.tensor([0.2, 0.5]), logits,
    ...     torch.softmax(logits, -1), ["female", "male"], ("female", "male", "child"),
    ...     torch.zeros(2, 4))
    >>> a = aggregate(p, [3.0, 1.0])
    >>> round(float(a.age[0]), 2), a.gender_logits[0].tolist(), a.gender
    (27.5, [1.5, 0.5, 0.0], ['female'])
    """
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.shape[0] != len(pred) or (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError(f"need {len(pred)} non-negative weights with a positive sum, got {w}")
    w = w / w.sum()

    def mean(x):
        x = x.double()
        shape = (-1,) + (1,) * (x.dim() - 1)
        return (x * w.view(shape)).sum(dim=0, keepdim=True).float()

    logits = mean(pred.gender_logits)
    probs = torch.softmax(logits, dim=-1)
    return type(pred)(
        age=mean(pred.age), age_raw=mean(pred.age_raw), gender_logits=logits,
        gender_probs=probs, gender=[pred.labels[int(probs[0].argmax())]], labels=pred.labels,
        embedding=mean(pred.embedding),
    )


def predict_signals(clf, signals: Sequence[torch.Tensor], batch_size: int = 1):
    """Predict 16 kHz signals of any lengths, ``batch_size`` at a time, in the given order.

    Signals are grouped in batches by length (longest first) to limit padding; each batch is
    zero-padded with relative lengths, which gives the same results as one at a time.
    """
    order = sorted(range(len(signals)), key=lambda i: -signals[i].shape[-1])
    preds = [None] * len(signals)
    for k in range(0, len(order), max(1, batch_size)):
        idx = order[k : k + max(1, batch_size)]
        longest = max(signals[i].shape[-1] for i in idx)
        wavs = torch.zeros(len(idx), longest)
        for row, i in enumerate(idx):
            wavs[row, : signals[i].shape[-1]] = signals[i].to(wavs.device)
        lens = torch.tensor([signals[i].shape[-1] / longest for i in idx], dtype=torch.float64)
        batch = clf.predict_batch(wavs, lens)
        for row, i in enumerate(idx):
            preds[i] = take(batch, [row])
    return _concat(preds)


def _check_params(window, hop, max_whole):
    window = DEFAULT_WINDOW if window is None else float(window)
    hop = window if hop is None else float(hop)
    max_whole = MAX_WHOLE_SECONDS if max_whole is None else float(max_whole)
    plan_windows(1, window, hop)  # validates
    return window, hop, max_whole


def _windowed(clf, path, frames, sample_rate, window, hop, min_tail, batch_size):
    preds, segments, weights, buf = [], [], [], []

    def flush():
        preds.append(predict_signals(clf, [w.wav for w in buf], batch_size))
        buf.clear()

    for win in iter_windows(path, window, hop, min_tail):
        segments.append((win.start_s, win.end_s))
        weights.append(win.end - win.start)
        buf.append(win)
        if len(buf) >= max(1, batch_size):
            flush()
    if buf:
        flush()
    seg_preds = _concat(preds)
    return FileAnalysis(str(path), frames / sample_rate, aggregate(seg_preds, weights), segments,
                        seg_preds, True)


def analyse_file(
    clf,
    path: str | os.PathLike,
    window: float | None = None,
    hop: float | None = None,
    max_whole: float | None = None,
    min_tail: float = MIN_TAIL,
    batch_size: int = 1,
) -> FileAnalysis:
    """Analyse one file: whole if at most ``max_whole`` seconds long, else in windows.

    Parameters
    ----------
    clf : AgeGenderClassifier
    path : str or PathLike
    window, hop : float, optional
        Seconds (defaults :data:`DEFAULT_WINDOW`, :data:`DEFAULT_HOP`; ``hop`` defaults to
        ``window`` when only ``window`` is given).
    max_whole : float, optional
        Longest file analysed in one pass (default :data:`MAX_WHOLE_SECONDS`; 0 → always
        windows).
    min_tail : float
        See :func:`plan_windows`.
    batch_size : int
        Windows per forward pass (results do not depend on it).

    Raises
    ------
    FileNotFoundError, AudioError
        Naming the file and the problem.

    Example
    -------
    >>> from agegender_sb import AgeGenderClassifier
    >>> clf = AgeGenderClassifier.from_hparams(source=getfixture("tiny_checkpoint"))
    >>> path = getfixture("tmp_path") / "x.wav"
    >>> sf.write(path, 0.1 * torch.randn(16000 * 9).numpy(), 16000)
    >>> res = analyse_file(clf, path, max_whole=5)
    >>> res.windowed, res.segments
    (True, [(0.0, 4.0), (4.0, 9.0)])
    """
    window, hop, max_whole = _check_params(window, hop, max_whole)
    frames, sample_rate = probe(path)
    duration = frames / sample_rate
    if duration > max_whole:
        return _windowed(clf, path, frames, sample_rate, window, hop, min_tail, batch_size)
    pred = predict_signals(clf, [load_audio(path)])
    return FileAnalysis(str(path), duration, pred, [(0.0, duration)], pred, False)


def analyse_files(
    clf,
    paths: Sequence[str],
    window: float | None = None,
    hop: float | None = None,
    max_whole: float | None = None,
    min_tail: float = MIN_TAIL,
    batch_size: int = 1,
) -> Iterator[tuple[str, FileAnalysis | Exception]]:
    """Analyse files in order, yielding ``(path, FileAnalysis or the error)`` for each.

    With ``batch_size > 1``, files analysed whole are read ``4 * batch_size`` at a time and
    predicted in length-sorted batches; results are still yielded in input order and do not
    depend on the batch size. ``FileNotFoundError`` and ``AudioError`` (and other ``OSError``),
    and a ``RuntimeError`` naming the file where the model itself fails on it (e.g. out of
    memory), are yielded, not raised, so one bad file does not stop the others.
    """
    window, hop, max_whole = _check_params(window, hop, max_whole)
    paths = list(paths)
    group_size = 1 if batch_size <= 1 else 4 * batch_size
    for g in range(0, len(paths), group_size):
        group = paths[g : g + group_size]
        results: dict[int, FileAnalysis | Exception] = {}
        whole = []  # (index in group, duration, signal)
        for j, path in enumerate(group):
            try:
                frames, sample_rate = probe(path)
                duration = frames / sample_rate
                if duration > max_whole:
                    results[j] = _windowed(clf, path, frames, sample_rate, window, hop,
                                           min_tail, batch_size)
                else:
                    whole.append((j, duration, load_audio(path)))
            except (OSError, AudioError) as err:
                results[j] = err
            except RuntimeError as err:  # the model failed on it (e.g. out of memory)
                results[j] = RuntimeError(f"{path}: the model failed on this file ({err})")
        try:
            preds = predict_signals(clf, [w for _, _, w in whole], batch_size) if whole else None
            for row, (j, duration, _) in enumerate(whole):
                pred = take(preds, [row])
                results[j] = FileAnalysis(str(group[j]), duration, pred, [(0.0, duration)],
                                          pred, False)
        except RuntimeError:
            # One of the batch failed: analyse them one by one to find which.
            for j, duration, wav in whole:
                try:
                    pred = predict_signals(clf, [wav])
                    results[j] = FileAnalysis(str(group[j]), duration, pred,
                                              [(0.0, duration)], pred, False)
                except RuntimeError as err:
                    results[j] = RuntimeError(
                        f"{group[j]}: the model failed on this file ({err})")
        for j, path in enumerate(group):
            yield path, results[j]
