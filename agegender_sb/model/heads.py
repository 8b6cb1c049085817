"""Utterance-level pooling and the prediction heads.

The head layout mirrors audEERING's ``ModelHead`` (``dense``, ``dropout``, ``out_proj``), so
their checkpoint's tensors map onto it one to one.
"""

from __future__ import annotations

import torch

__all__ = ["MaskedMeanPooling", "MLPHead"]


class MaskedMeanPooling(torch.nn.Module):
    """Mean of frames over time, counting valid frames only.

    Without padding this is ``frames.mean(dim=1)``, the pooling of the published model.

    Example
    -------
    >>> pool = MaskedMeanPooling()
    >>> x = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> pool(x, torch.tensor([[True, True, False]])).tolist()
    [[2.0]]
    """

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[batch, frames, hidden]`` (+ ``[batch, frames]`` bool mask) → ``[batch, hidden]``."""
        if frame_mask is None:
            return frames.mean(dim=1)
        weights = frame_mask.to(frames.dtype).unsqueeze(-1)
        return (frames * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class MLPHead(torch.nn.Module):
    """dropout → Linear(H, H) → tanh → dropout → Linear(H, n_outputs).

    Parameters
    ----------
    input_size : int
        Width of the pooled embedding (H).
    n_outputs : int
        1 for age, the number of gender labels for gender.
    dropout : float
        Dropout probability (audEERING's ``final_dropout``), active in training only.

    Example
    -------
    >>> head = MLPHead(8, 3)
    >>> head(torch.randn(2, 8)).shape
    torch.Size([2, 3])
    """

    def __init__(self, input_size: int, n_outputs: int, dropout: float = 0.1):
        super().__init__()
        self.dense = torch.nn.Linear(input_size, input_size)
        self.dropout = torch.nn.Dropout(dropout)
        self.out_proj = torch.nn.Linear(input_size, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        x = torch.tanh(self.dense(x))
        x = self.dropout(x)
        return self.out_proj(x)
