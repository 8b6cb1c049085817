"""Audio in: reading files, mixing to mono, resampling and validation.

Everything that turns a file or a user's tensor into what the encoder expects lives here:
16 kHz mono float32, at least :data:`MIN_SAMPLES` long and finite (the per-utterance
normalisation is the model's first step: :mod:`agegender_sb.model.normalizer`).

Resampling is bounded in time and memory for any rate: rates whose ratio to 16 kHz reduces
to small integers (8, 11.025, 22.05, 44.1, 48, 96 kHz, ...) use torchaudio's windowed sinc,
the reference path; others (16001 Hz, 22051 Hz, ...), where that filter bank would grow
with the ratio's terms, use soxr. :class:`AudioFile` reads its header once and any 16 kHz
stretch of it in blocks, equal to the matching slice of the whole resampled file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from agegender_sb.defaults import MIN_SAMPLES, SAMPLE_RATE
from agegender_sb.errors import AudioError, NoSpeechError

__all__ = [
    "SAMPLE_RATE",
    "MIN_SAMPLES",
    "AudioError",
    "NoSpeechError",
    "soundfile_call",
    "resampled_length",
    "resample_to_16k",
    "AudioFile",
    "load_audio",
    "to_mono_16k",
    "check_signal",
    "validate_batch",
    "relative_to_samples",
]





def soundfile_call(path: str | os.PathLike, action):
    """``action(str(path))`` with soundfile's failures turned into errors naming the file.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    AudioError
        If it is a directory or soundfile cannot read it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    try:  # the name as bytes: any name the OS allows, UTF-8 or not
        return action(os.fsencode(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: not a readable audio file ({err})") from err


def to_mono_16k(
    data: np.ndarray | torch.Tensor, sample_rate: int, name: str = "audio"
) -> torch.Tensor:
    """Average channels and resample to 16 kHz (torchaudio's windowed sinc).

    Parameters
    ----------
    data : numpy.ndarray or torch.Tensor
        ``[time]`` or ``[time, channels]`` samples.
    sample_rate : int
        Sample rate of ``data``.
    name : str
        Name used in error messages (a file path, or an argument name).

    Returns
    -------
    torch.Tensor
        ``[time]`` float32 mono signal at :data:`SAMPLE_RATE`.

    Example
    -------
    >>> x = torch.zeros(8000, 2)
    >>> to_mono_16k(x, 8000).shape
    torch.Size([16000])
    """
    wav = torch.as_tensor(data, dtype=torch.float32)
    if wav.dim() == 2:
        wav = wav.mean(dim=1)
    elif wav.dim() != 1:
        raise AudioError(
            f"{name}: expected [time] or [time, channels], got shape {tuple(wav.shape)}"
        )
    if sample_rate <= 0:
        raise AudioError(f"{name}: invalid sample rate {sample_rate}")
    return resample_to_16k(wav, sample_rate)


#: Largest reduced ratio term resampled with torchaudio (its filter bank grows with it).
MAX_SINC_TERMS = 1000


def _ratio(sample_rate: int) -> tuple[int, int]:
    g = math.gcd(int(sample_rate), SAMPLE_RATE)
    return int(sample_rate) // g, SAMPLE_RATE // g


def resampled_length(frames: int, sample_rate: int) -> int:
    """Samples at 16 kHz that :func:`resample_to_16k` yields for ``frames`` samples.

    Example
    -------
    >>> resampled_length(44100, 44100), resampled_length(8000, 8000), resampled_length(5, 16000)
    (16000, 16000, 5)
    """
    orig, new = _ratio(sample_rate)
    return -(-frames * new // orig)


def resample_to_16k(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """``[time]`` float32 at ``sample_rate`` → 16 kHz, in time and memory linear in its length.

    torchaudio's windowed sinc (the reference path) where the reduced ratio's terms are at
    most :data:`MAX_SINC_TERMS`, soxr (very high quality) otherwise; the length is always
    :func:`resampled_length`.

    Example
    -------
    >>> resample_to_16k(torch.zeros(16001), 16001).shape  # soxr
    torch.Size([16000])
    >>> resample_to_16k(torch.zeros(441), 44100).shape  # torchaudio
    torch.Size([160])
    """
    if sample_rate == SAMPLE_RATE:
        return wav
    orig, new = _ratio(sample_rate)
    if max(orig, new) <= MAX_SINC_TERMS:
        return torchaudio.functional.resample(wav, sample_rate, SAMPLE_RATE)
    import soxr

    out = torch.from_numpy(soxr.resample(wav.numpy(), sample_rate, SAMPLE_RATE, quality="VHQ"))
    n = resampled_length(wav.shape[-1], sample_rate)
    if out.shape[-1] < n:
        out = torch.nn.functional.pad(out, (0, n - out.shape[-1]))
    return out[:n].contiguous()


# torchaudio.functional.resample's defaults, used to size the context margin.
_LOWPASS_FILTER_WIDTH = 6
_ROLLOFF = 0.99


class AudioFile:
    """An audio file opened once: header read once, any 16 kHz stretch read on demand.

    Stretches are read with ``soundfile`` (seek + read) at the file's rate, mixed to mono
    and, when the file is not 16 kHz, resampled with a margin of context on both sides that
    is then trimmed; the block's start is aligned to the resampler's period, so a stretch
    equals the matching slice of :func:`load_audio`'s whole-file signal up to float rounding
    and memory does not grow with the file's length.

    Parameters
    ----------
    path : str or PathLike

    Attributes
    ----------
    frames, sample_rate : int
        From the header.
    duration : float
        Seconds.
    n16 : int
        Length of the whole file at 16 kHz.

    Raises
    ------
    FileNotFoundError, AudioError
        For a missing file, a non-regular file (FIFO, device), unreadable or empty audio.

    Example
    -------
    >>> path = getfixture("tmp_path") / "x.wav"
    >>> sf.write(path, np.zeros(8000), 8000)
    >>> with AudioFile(path) as f:
    ...     f.duration, f.n16, f.read(0, 4000).shape
    (1.0, 16000, torch.Size([4000]))
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file" + (" (dangling symbolic link)"
                                                            if p.is_symlink() else ""))
        if not p.is_file() and not p.is_dir():
            raise AudioError(f"{p}: not a regular file (a FIFO, socket or device)")
        self._fh = soundfile_call(path, sf.SoundFile)
        self.frames, self.sample_rate = int(self._fh.frames), int(self._fh.samplerate)
        if self.frames <= 0:
            self.close()
            raise AudioError(f"{path}: the file contains no audio samples")
        self.duration = self.frames / self.sample_rate
        self.n16 = resampled_length(self.frames, self.sample_rate)
        orig, new = self._orig, self._new = _ratio(self.sample_rate)
        if self.sample_rate == SAMPLE_RATE:
            self._margin = 0
        elif max(orig, new) <= MAX_SINC_TERMS:
            width = math.ceil(_LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * _ROLLOFF))
            self._margin = math.ceil(2 * width / orig) + 1
        else:  # soxr: about 0.1 s of context is ample; in resampler periods (<= 1 s each)
            self._margin = max(1, math.ceil(0.1 * self.sample_rate / orig))

    def read(self, start: int, end: int, name: str | None = None,
             check: bool = True) -> torch.Tensor:
        """The validated 16 kHz mono signal of samples ``[start, end)`` (16 kHz indices).

        ``check=False`` skips :func:`check_signal` (for pieces joined and checked later).

        Raises
        ------
        AudioError
            Naming the file and the stretch: unreadable, NaN/Inf, shorter than 400 samples.
        """
        name = name or (self.path if (start, end) == (0, self.n16) else
                        f"{self.path} [{start / SAMPLE_RATE:.2f}-{end / SAMPLE_RATE:.2f} s]")
        orig, new = self._orig, self._new
        unit0 = max(0, start // new - self._margin)  # block start, in resampler periods
        first = unit0 * orig
        last = min(self.frames, -(-end * orig // new) + self._margin * orig)
        if (first, last) == (0, self.frames):
            last = self.frames
        try:
            self._fh.seek(first)
            block = self._fh.read(last - first, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioError(f"{name}: cannot read this part of the file ({err})") from err
        if block.shape[0] != last - first:
            raise AudioError(f"{name}: could read only {block.shape[0]} of {last - first} "
                             "samples")
        wav = to_mono_16k(block, self.sample_rate, name=name)
        offset = unit0 * new
        wav = wav[start - offset : end - offset].clone()
        if check:
            check_signal(wav, name)
        return wav

    def blocks(self, start: int, end: int, seconds: float = 60.0):
        """Consecutive 16 kHz stretches covering ``[start, end)``, ``seconds`` long each
        (the last may be shorter, but never under 400 samples unless the whole is)."""
        step = max(MIN_SAMPLES, int(seconds * SAMPLE_RATE))
        pos = start
        while pos < end:
            stop = min(end, pos + step)
            if end - stop < MIN_SAMPLES:
                stop = end
            yield self.read(pos, stop)
            pos = stop

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_signal(wav: torch.Tensor, name: str) -> None:
    """Raise :class:`AudioError` naming ``name`` for an empty, non-finite or too-short signal."""
    if wav.numel() == 0:
        raise AudioError(f"{name}: the audio contains no samples")
    if not torch.isfinite(wav).all():
        bad = int((~torch.isfinite(wav)).sum())
        raise AudioError(f"{name}: the audio contains {bad} NaN or infinite samples")
    if wav.shape[-1] < MIN_SAMPLES:
        raise AudioError(
            f"{name}: too short: {wav.shape[-1]} samples ({1000 * wav.shape[-1] / SAMPLE_RATE:.1f}"
            f" ms) at 16 kHz; the encoder needs at least {MIN_SAMPLES} samples (25 ms)"
        )


def load_audio(path: str | os.PathLike) -> torch.Tensor:
    """Read a file and return the validated 16 kHz mono signal ``[time]``.

    Parameters
    ----------
    path : str or PathLike
        Audio file.

    Returns
    -------
    torch.Tensor
        float32 ``[time]`` at 16 kHz, finite and at least 400 samples long.

    Raises
    ------
    FileNotFoundError, AudioError
        With the file's path and the problem in the message.
    """
    with AudioFile(path) as audio:
        return audio.read(0, audio.n16, name=str(path))


def relative_to_samples(wav_lens: torch.Tensor, max_len: int) -> torch.Tensor:
    """SpeechBrain relative lengths → absolute sample counts (rounded, as SpeechBrain does).

    Example
    -------
    >>> relative_to_samples(torch.tensor([1.0, 0.5]), 1000)
    tensor([1000,  500])
    """
    return torch.round(wav_lens.double() * max_len).long().clamp(max=max_len)


def validate_batch(
    wavs: torch.Tensor, wav_lens: torch.Tensor | None = None, name: str = "wavs"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a user's batch and return it as ``([batch, time] float32, [batch] relative lengths)``.

    Parameters
    ----------
    wavs : torch.Tensor
        ``[time]`` or ``[batch, time]`` 16 kHz mono signals, zero-padded at the end.
    wav_lens : torch.Tensor, optional
        Relative lengths in (0, 1] (SpeechBrain convention); all ones when omitted.
    name : str
        Argument name for error messages.

    Raises
    ------
    AudioError
        On a wrong shape, non-float data, bad lengths, NaN/Inf in the valid part, or an
        utterance shorter than :data:`MIN_SAMPLES`.

    Example
    -------
    >>> w, l = validate_batch(torch.zeros(2, 800), torch.tensor([1.0, 0.5]))
    >>> l.tolist()
    [1.0, 0.5]
    """
    if not isinstance(wavs, torch.Tensor):
        raise AudioError(f"{name}: expected a torch.Tensor, got {type(wavs).__name__}")
    if wavs.dim() == 1:
        wavs = wavs.unsqueeze(0)
    if wavs.dim() != 2:
        hint = " (mix channels to mono first)" if wavs.dim() == 3 else ""
        raise AudioError(f"{name}: expected shape [time] or [batch, time], got "
                         f"{tuple(wavs.shape)}{hint}")
    if wavs.is_complex() or not (wavs.is_floating_point()):
        raise AudioError(f"{name}: expected floating-point samples, got {wavs.dtype}")
    if wavs.shape[0] == 0:
        raise AudioError(f"{name}: the batch is empty")
    if wav_lens is None:
        wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
    # float64: float32 cannot hold the relative length of every sample count past 2**24
    wav_lens = torch.as_tensor(wav_lens, dtype=torch.float64, device=wavs.device)
    if wav_lens.shape != (wavs.shape[0],):
        raise AudioError(f"wav_lens: expected shape [{wavs.shape[0]}] to match {name}, got "
                         f"{tuple(wav_lens.shape)}")
    if not torch.isfinite(wav_lens).all() or (wav_lens <= 0).any() or (wav_lens > 1 + 1e-6).any():
        raise AudioError(f"wav_lens: relative lengths must lie in (0, 1], got {wav_lens.tolist()}")
    lengths = relative_to_samples(wav_lens, wavs.shape[1])
    for i, n in enumerate(lengths.tolist()):
        check_signal(wavs[i, :n], f"{name}[{i}]")
    wavs32 = wavs.float()
    if wavs.dtype != torch.float32:  # float64 beyond float32's range becomes inf
        for i, n in enumerate(lengths.tolist()):
            if not torch.isfinite(wavs32[i, :n]).all():
                peak = float(wavs[i, :n].abs().max())
                raise AudioError(f"{name}[{i}]: samples up to {peak:.3g} overflow float32 "
                                 f"(largest {torch.finfo(torch.float32).max:.3g}); audio "
                                 "samples are expected within [-1, 1]")
    return wavs32, wav_lens
