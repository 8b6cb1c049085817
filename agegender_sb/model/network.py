"""The one forward path: normalise → encoder → masked mean pooling → age and gender heads.

Every entry point (the classifier interface, the CLI, the training recipe, the ONNX export)
calls :class:`AgeGenderModel`, so fidelity to the reference is proven once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["ModelOutput", "AgeGenderModel"]


class ModelOutput(NamedTuple):
    """Raw model outputs for a batch."""

    #: ``[batch]`` age head output (≈ years / 100).
    age: torch.Tensor
    #: ``[batch, n_labels]`` gender logits (before softmax).
    gender_logits: torch.Tensor
    #: ``[batch, hidden]`` pooled last-layer hidden states.
    embedding: torch.Tensor


class AgeGenderModel(torch.nn.Module):
    """Compose the modules declared in the hyperparameter file.

    Parameters
    ----------
    normalizer : torch.nn.Module
        ``(wavs, wav_lens) → wavs``, per-utterance normalisation.
    encoder : torch.nn.Module
        ``(wavs, wav_lens) → (frames, frame_mask)``.
    pooling : torch.nn.Module
        ``(frames, frame_mask) → embedding``.
    age_head, gender_head : torch.nn.Module
        ``embedding → [batch, 1]`` and ``embedding → [batch, n_labels]``.

    Example
    -------
    >>> from agegender_sb.model.normalizer import UtteranceNormalizer
    >>> from agegender_sb.model.encoder import Wav2Vec2Encoder
    >>> from agegender_sb.model.heads import MaskedMeanPooling, MLPHead
    >>> enc = Wav2Vec2Encoder(dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...     intermediate_size=37, conv_dim=[16] * 7, num_conv_pos_embeddings=16,
    ...     num_conv_pos_embedding_groups=2))
    >>> model = AgeGenderModel(UtteranceNormalizer(), enc, MaskedMeanPooling(),
    ...                        MLPHead(32, 1), MLPHead(32, 3)).eval()
    >>> out = model(torch.randn(2, 8000), torch.tensor([1.0, 0.6]))
    >>> out.age.shape, out.gender_logits.shape, out.embedding.shape
    (torch.Size([2]), torch.Size([2, 3]), torch.Size([2, 32]))
    """

    def __init__(self, normalizer, encoder, pooling, age_head, gender_head):
        super().__init__()
        self.normalizer = normalizer
        self.encoder = encoder
        self.pooling = pooling
        self.age_head = age_head
        self.gender_head = gender_head

    def embed(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> torch.Tensor:
        """``[batch, time]`` raw 16 kHz signals → ``[batch, hidden]`` pooled embedding."""
        wavs = self.normalizer(wavs, wav_lens)
        frames, frame_mask = self.encoder(wavs, wav_lens)
        return self.pooling(frames, frame_mask)

    def heads(self, embedding: torch.Tensor) -> ModelOutput:
        """Apply both heads to pooled embeddings."""
        return ModelOutput(
            age=self.age_head(embedding).squeeze(-1),
            gender_logits=self.gender_head(embedding),
            embedding=embedding,
        )

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> ModelOutput:
        """``[batch, time]`` raw 16 kHz signals (+ relative lengths) → :class:`ModelOutput`."""
        return self.heads(self.embed(wavs, wav_lens))
