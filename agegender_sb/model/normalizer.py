"""Per-utterance normalisation, the model's first step: zero mean and unit variance over each
utterance's valid samples, exactly as transformers' ``Wav2Vec2FeatureExtractor`` does
(``do_normalize=True``).
"""

from __future__ import annotations

import torch

from agegender_sb.audio import relative_to_samples
from agegender_sb.defaults import NORM_EPS

__all__ = ["NORM_EPS", "normalize", "UtteranceNormalizer"]


def normalize(
    wavs: torch.Tensor, wav_lens: torch.Tensor | None = None, eps: float = NORM_EPS
) -> torch.Tensor:
    """Zero mean, unit variance per utterance over its valid samples; padding set to 0.

    Matches ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm``:
    ``(x - mean) / sqrt(var + eps)`` with the population variance. Statistics are
    accumulated in float64 for accuracy, the result is float32.

    Parameters
    ----------
    wavs : torch.Tensor
        ``[batch, time]``.
    wav_lens : torch.Tensor, optional
        ``[batch]`` relative lengths.
    eps : float
        Added to the variance.

    Example
    -------
    >>> y = normalize(torch.tensor([[1.0, 2.0, 3.0, 0.0]]), torch.tensor([0.75]))
    >>> [round(v, 4) for v in y[0].tolist()]
    [-1.2247, 0.0, 1.2247, 0.0]
    """
    if wav_lens is None:
        x = wavs.double()
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, unbiased=False, keepdim=True)
        return ((x - mean) / torch.sqrt(var + eps)).to(wavs.dtype)
    lengths = relative_to_samples(wav_lens, wavs.shape[1]).to(wavs.device)
    mask = torch.arange(wavs.shape[1], device=wavs.device)[None, :] < lengths[:, None]
    zero = torch.zeros((), dtype=torch.float64, device=wavs.device)
    x = torch.where(mask, wavs.double(), zero)  # whatever the padding holds, even NaN
    count = lengths.clamp(min=1).double()[:, None]
    mean = x.sum(dim=1, keepdim=True) / count
    var = torch.where(mask, (x - mean) ** 2, zero).sum(dim=1, keepdim=True) / count
    return torch.where(mask, (x - mean) / torch.sqrt(var + eps), zero).to(wavs.dtype)


class UtteranceNormalizer(torch.nn.Module):
    """:func:`normalize` as a module, so the YAML can declare it like any other step.

    Example
    -------
    >>> norm = UtteranceNormalizer()
    >>> y = norm(torch.randn(2, 1600) * 5 + 3, torch.tensor([1.0, 0.5]))
    >>> round(float(y[0].std(unbiased=False)), 3)
    1.0
    """

    def __init__(self, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> torch.Tensor:
        return normalize(wavs, wav_lens, self.eps)

