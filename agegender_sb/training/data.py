"""Mechanisms of the training recipe: reading manifest segments, sharding evaluation over
DDP ranks, whole-checkpoint markers, and the test-set outputs.

``recipes/train.py`` is the recipe (what is trained, in which order); the pieces here are
the how, each testable on its own.
"""

from __future__ import annotations

import logging

import torch

from agegender_sb.audio import AudioFile
from agegender_sb.defaults import MIN_SAMPLES, SAMPLE_RATE

__all__ = ["read_segment", "ShardSampler"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- data
def read_segment(path, start=None, stop=None, crop_seconds=None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Read ``[start, stop)`` seconds of a file as 16 kHz mono, optionally a random crop.

    The samples are those of :class:`~agegender_sb.audio.AudioFile` (equal to the matching
    slice of the whole file read by :func:`~agegender_sb.audio.load_audio`). A segment
    shorter than 400 samples (25 ms, one encoder frame) is widened within the file.

    Parameters
    ----------
    path : str
        Audio file.
    start, stop : float, optional
        Segment bounds in seconds (whole file when None; ``stop`` is clipped to the file).
    crop_seconds : float, optional
        If the segment is longer, a random window of this length is read instead.
    generator : torch.Generator, optional
        Source of the crop offset (default: torch's global generator, which DataLoader seeds
        differently in each worker and each epoch).

    Raises
    ------
    FileNotFoundError, AudioError
        Naming the file (and stretch): unreadable, NaN/Inf, a file under 25 ms.

    Example
    -------
    >>> import numpy as np, soundfile as sf
    >>> path = getfixture("tmp_path") / "x.wav"
    >>> sf.write(path, np.zeros(8000, dtype="float32"), 8000)
    >>> read_segment(path).shape, read_segment(path, 0.25, 0.5).shape
    (torch.Size([16000]), torch.Size([4000]))
    >>> read_segment(path, crop_seconds=0.1).shape
    torch.Size([1600])
    """
    with AudioFile(path) as audio:
        first = 0 if start is None else max(0, int(round(start * SAMPLE_RATE)))
        last = audio.n16 if stop is None else min(int(round(stop * SAMPLE_RATE)), audio.n16)
        if crop_seconds is not None and crop_seconds > 0:
            crop = max(MIN_SAMPLES, int(round(crop_seconds * SAMPLE_RATE)))
            if last - first > crop:
                first = int(torch.randint(first, last - crop + 1, (1,), generator=generator))
                last = first + crop
        if last - first < MIN_SAMPLES:  # a very short segment: one encoder frame
            last = min(audio.n16, first + MIN_SAMPLES)
            first = max(0, last - MIN_SAMPLES)
        return audio.read(first, last)


class ShardSampler(torch.utils.data.Sampler):
    """Every ``world``-th index from ``rank``: disjoint, complete, unpadded shards for eval.

    Example
    -------
    >>> list(ShardSampler(range(5), rank=1, world=2)), len(ShardSampler(range(5), 0, 2))
    ([1, 3], 3)
    """

    def __init__(self, data_source, rank: int = 0, world: int = 1):
        self.n, self.rank, self.world = len(data_source), rank, world

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self):
        return len(range(self.rank, self.n, self.world))


