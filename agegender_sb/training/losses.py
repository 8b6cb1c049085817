"""The multi-task training loss: age regression + gender cross-entropy, missing labels masked.

Referenced from ``hparams/train.yaml`` as ``compute_cost`` (``!name:`` binds the age loss
and the weights), so the recipe's Brain only passes predictions and targets.
"""

from __future__ import annotations

import torch

__all__ = ["multitask_loss"]


def multitask_loss(age_pred, gender_logits, age_target, gender_target, age_loss_fn,
                   age_weight=1.0, gender_weight=1.0):
    """Masked multi-task loss: ``age_weight * age_loss + gender_weight * gender_loss``.

    An utterance without an age (NaN) adds nothing to the age term, one without a gender
    (-1) nothing to the gender term. Each term is the mean over the utterances that have
    that label; a batch without any label of a kind gives 0 for that term (not NaN), still
    connected to the graph.

    Parameters
    ----------
    age_pred : torch.Tensor
        ``[B]`` predicted years/100.
    gender_logits : torch.Tensor
        ``[B, n_labels]``.
    age_target : torch.Tensor
        ``[B]`` years/100, NaN where unknown.
    gender_target : torch.Tensor
        ``[B]`` label indices, -1 where unknown.
    age_loss_fn : callable
        ``(pred, target, reduction="none") -> [B]`` (L1, MSE, smooth L1, ...).
    age_weight, gender_weight : float

    Returns
    -------
    loss : torch.Tensor
        Scalar, the weighted sum.
    age_loss, gender_loss : torch.Tensor
        The two terms (unweighted).

    Example
    -------
    >>> import torch.nn.functional as F
    >>> loss, a, g = multitask_loss(torch.tensor([0.3, 0.5]), torch.zeros(2, 3),
    ...     torch.tensor([0.2, float("nan")]), torch.tensor([-1, 2]), F.l1_loss)
    >>> loss.shape, round(float(a), 4), round(float(g), 4)  # g = log(3)
    (torch.Size([]), 0.1, 1.0986)
    """
    age_pred = age_pred.float()
    gender_logits = gender_logits.float()
    age_mask = torch.isfinite(age_target)
    safe_age = torch.where(age_mask, age_target, age_pred.detach())
    per_age = age_loss_fn(age_pred, safe_age, reduction="none") * age_mask
    age_loss = per_age.sum() / age_mask.sum().clamp(min=1)
    g_mask = gender_target >= 0
    per_g = torch.nn.functional.cross_entropy(
        gender_logits, gender_target.clamp(min=0), reduction="none"
    ) * g_mask
    gender_loss = per_g.sum() / g_mask.sum().clamp(min=1)
    return age_weight * age_loss + gender_weight * gender_loss, age_loss, gender_loss
