"""A second opinion for signals where Silero finds no speech: level relative to the signal's own.

Silero VAD misses some real speech: two utterances of speechocean762 by a 12-year-old boy
(``SPEAKER6902/069020059``, ``069020075``: short, breathy, 20-40 dB above the room) get a
highest speech probability of 0.024 and 0.060, below what faint hiss gets (0.074), so no
lower Silero threshold separates them from noise (docs/reliability.md). What does separate
them: sound well above the recording's own background that is not white noise.

:class:`RelativeLevel` scores 512-sample frames once the whole signal has been seen:

- a frame is *loud* when its level (``20 log10 std``, dBFS, as
  :class:`~agegender_sb.speech.detectors.EnergyDetector`) is at least ``above_floor_db``
  above the signal's floor (the ``floor_quantile`` quantile of its frame levels) and at least
  ``min_level_db`` (-60 dBFS);
- a loud frame is *shaped* when its spectral flatness (geometric over arithmetic mean of its
  Hann-windowed power spectrum) is below ``max_flatness``: speech, whispered too, is well
  below 0.3, white noise near 0.56, clicks near 1.

Scores: 1.0 for loud shaped frames (may start a span), 0.4 for loud flat ones (may continue
one), 0.0 otherwise; the detector turns them into spans with its own post-processing.
Steady sound of any level (hiss, hum, fans, DC) has no frame above its own floor; white-noise
bursts and clicks are flat. Tone bursts and other shaped sounds that start and stop are
"speech" to it, as to any energy detector: it is asked only where Silero found nothing.

>>> import torch
>>> rel = RelativeLevel()
>>> quiet = 1e-3 * torch.randn(16 * 512, generator=torch.Generator().manual_seed(0))
>>> rel.observe(quiet.reshape(-1, 512))
>>> rel.scores().max()  # steady hiss: nothing above its own floor
np.float32(0.0)
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["RelativeLevel"]


class RelativeLevel:
    """Frame scores from level above the signal's own floor and spectral shape (see module).

    Parameters
    ----------
    above_floor_db : float
        A loud frame is at least this many dB above the floor (default 20).
    min_level_db : float
        ... and at least this level in dBFS (default -60: the two quiet child utterances of
        speechocean762 that Silero misses are still answered 20 dB quieter, docs/reliability.md).
    max_flatness : float
        Loud frames flatter than this are noise-like: they continue a span, never start one
        (default 0.4).
    floor_quantile : float
        Quantile of the frame levels taken as the floor (default 0.2).
    """

    def __init__(self, above_floor_db: float = 20.0, min_level_db: float = -60.0,
                 max_flatness: float = 0.4, floor_quantile: float = 0.2):
        for name, value in (("above_floor_db", above_floor_db), ("min_level_db", min_level_db),
                            ("max_flatness", max_flatness), ("floor_quantile", floor_quantile)):
            if not math.isfinite(float(value)):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if not 0.0 <= floor_quantile <= 1.0:
            raise ValueError(f"floor_quantile must be in [0, 1], got {floor_quantile!r}")
        self.above_floor_db = float(above_floor_db)
        self.min_level_db = float(min_level_db)
        self.max_flatness = float(max_flatness)
        self.floor_quantile = float(floor_quantile)
        self._levels: list[np.ndarray] = []
        self._flatness: list[np.ndarray] = []

    def observe(self, frames: torch.Tensor) -> None:
        """Take the next frames ``[n, 512]`` (float32) of the signal."""
        x = frames.to(torch.float64)
        std = x.std(dim=1, correction=0).numpy()
        with np.errstate(divide="ignore"):
            self._levels.append(20.0 * np.log10(std))
        window = torch.hann_window(x.shape[1], periodic=False, dtype=torch.float64)
        power = torch.fft.rfft((x - x.mean(dim=1, keepdim=True)) * window).abs().square()
        power = power[:, 1:] + 1e-20  # without the DC bin
        flatness = torch.exp(power.log().mean(dim=1)) / power.mean(dim=1)
        self._flatness.append(flatness.numpy())

    def scores(self) -> np.ndarray:
        """Scores in [0, 1] of every frame observed so far (see the module)."""
        if not self._levels:
            return np.zeros(0, dtype=np.float32)
        levels = np.concatenate(self._levels)
        flatness = np.concatenate(self._flatness)
        finite = levels[np.isfinite(levels)]
        if not finite.size:
            return np.zeros(len(levels), dtype=np.float32)
        floor = float(np.quantile(finite, self.floor_quantile))
        loud = levels >= max(floor + self.above_floor_db, self.min_level_db)
        shaped = flatness < self.max_flatness
        return np.where(loud, np.where(shaped, 1.0, 0.4), 0.0).astype(np.float32)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"
