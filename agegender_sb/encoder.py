"""The wav2vec2 encoder, built from architecture hyperparameters (no download).

A thin wrapper over transformers' ``Wav2Vec2Model`` that speaks SpeechBrain's batch
convention — ``(wavs, wav_lens)`` with relative lengths — builds the attention mask itself
and returns the frame-level mask that pooling needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from speechbrain.utils.checkpoints import mark_as_transfer, register_checkpoint_hooks
from transformers import Wav2Vec2Config, Wav2Vec2Model

from .audio import relative_to_samples
from .checkpoint import load_state_dict_file, load_strict
from .fast_linear import use_onednn_linear

__all__ = ["Wav2Vec2Encoder"]


@register_checkpoint_hooks
class Wav2Vec2Encoder(torch.nn.Module):
    """wav2vec2 (large-robust layout by default) mapping normalised waveforms to frames.

    Defaults are those of ``facebook/wav2vec2-large-robust`` as used by audEERING's
    age/gender models; any other ``Wav2Vec2Config`` field can be passed through
    ``extra_config``.

    Parameters
    ----------
    hidden_size, num_hidden_layers, num_attention_heads, intermediate_size : int
        Transformer sizes.
    conv_dim, conv_kernel, conv_stride : sequence of int
        Convolutional feature encoder.
    conv_bias : bool
    feat_extract_norm : str
        ``"layer"`` (large-robust) or ``"group"``. With ``"group"`` (e.g. wav2vec2-base) the
        first convolution normalises over time, padding included, so padded batches do not
        give the one-at-a-time results; the audEERING models use ``"layer"``.
    do_stable_layer_norm : bool
        Pre-layer-norm transformer (large-robust).
    num_conv_pos_embeddings, num_conv_pos_embedding_groups : int
        Convolutional positional embedding.
    hidden_act, feat_extract_activation : str
    layer_norm_eps : float
    hidden_dropout, attention_dropout, activation_dropout, feat_proj_dropout, layerdrop : float
        Only active in training mode.
    mask_time_prob, mask_time_length, mask_feature_prob, mask_feature_length : float, int
        SpecAugment-style masking, only in training mode (``apply_spec_augment``).
    apply_spec_augment : bool
    attn_implementation : str
        transformers attention kernel: ``"sdpa"`` (default, as transformers) or ``"eager"``;
        the same numbers within float rounding, and on the CPU the same speed (measured).
    onednn_linear : bool
        Run the Linear layers through oneDNN in CPU inference
        (:mod:`agegender_sb.fast_linear`; same numbers within float rounding, about twice as
        fast where PyTorch's BLAS is slow). Training and GPUs are unaffected.
    extra_config : dict, optional
        Further ``Wav2Vec2Config`` keyword arguments.

    Example
    -------
    >>> enc = Wav2Vec2Encoder(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                       intermediate_size=37, conv_dim=[16] * 7,
    ...                       num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    >>> frames, mask = enc(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> frames.shape, mask.sum(dim=1).tolist()
    (torch.Size([2, 49, 32]), [49, 24])
    """

    def __init__(
        self,
        hidden_size: int = 1024,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        intermediate_size: int = 4096,
        conv_dim: Sequence[int] = (512, 512, 512, 512, 512, 512, 512),
        conv_kernel: Sequence[int] = (10, 3, 3, 3, 3, 2, 2),
        conv_stride: Sequence[int] = (5, 2, 2, 2, 2, 2, 2),
        conv_bias: bool = True,
        feat_extract_norm: str = "layer",
        do_stable_layer_norm: bool = True,
        num_conv_pos_embeddings: int = 128,
        num_conv_pos_embedding_groups: int = 16,
        hidden_act: str = "gelu",
        feat_extract_activation: str = "gelu",
        layer_norm_eps: float = 1e-5,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.1,
        feat_proj_dropout: float = 0.1,
        layerdrop: float = 0.1,
        apply_spec_augment: bool = True,
        mask_time_prob: float = 0.05,
        mask_time_length: int = 10,
        mask_feature_prob: float = 0.0,
        mask_feature_length: int = 10,
        attn_implementation: str = "sdpa",
        onednn_linear: bool = True,
        extra_config: dict | None = None,
    ):
        super().__init__()
        config = Wav2Vec2Config(
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size,
            conv_dim=list(conv_dim),
            conv_kernel=list(conv_kernel),
            conv_stride=list(conv_stride),
            conv_bias=conv_bias,
            feat_extract_norm=feat_extract_norm,
            do_stable_layer_norm=do_stable_layer_norm,
            num_conv_pos_embeddings=num_conv_pos_embeddings,
            num_conv_pos_embedding_groups=num_conv_pos_embedding_groups,
            hidden_act=hidden_act,
            feat_extract_activation=feat_extract_activation,
            layer_norm_eps=layer_norm_eps,
            hidden_dropout=hidden_dropout,
            attention_dropout=attention_dropout,
            activation_dropout=activation_dropout,
            feat_proj_dropout=feat_proj_dropout,
            layerdrop=layerdrop,
            apply_spec_augment=apply_spec_augment,
            mask_time_prob=mask_time_prob,
            mask_time_length=mask_time_length,
            mask_feature_prob=mask_feature_prob,
            mask_feature_length=mask_feature_length,
            **(extra_config or {}),
        )
        # Before building too: transformers 4.x picks the attention class at construction.
        config._attn_implementation = attn_implementation
        self.config = config
        self.model = Wav2Vec2Model(config)
        if onednn_linear:
            use_onednn_linear(self.model)
        self.set_attention(attn_implementation)

    def set_attention(self, implementation: str) -> None:
        """Switch transformers' attention kernel (``"eager"``, ``"sdpa"``, ...) in place."""
        if self.model.config._attn_implementation != implementation:
            self.model.config._attn_implementation = implementation

    @mark_as_transfer
    def _load_pretrained(self, path) -> None:
        """SpeechBrain ``Pretrainer`` hook: strict load, weight-norm spellings folded."""
        load_strict(self, load_state_dict_file(path), str(path))

    @property
    def output_size(self) -> int:
        """Width of the returned frames (``hidden_size``)."""
        return self.config.hidden_size

    def frame_lengths(self, n_samples: torch.Tensor) -> torch.Tensor:
        """Number of encoder frames for inputs of ``n_samples`` samples."""
        return self.model._get_feat_extract_output_lengths(n_samples).long()

    def freeze_feature_extractor(self) -> None:
        """Stop gradients through the convolutional feature encoder (for fine-tuning)."""
        self.model.freeze_feature_encoder()

    def forward(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode a batch of normalised waveforms.

        Parameters
        ----------
        wavs : torch.Tensor
            ``[batch, time]`` normalised 16 kHz signals, zero-padded.
        wav_lens : torch.Tensor, optional
            ``[batch]`` relative lengths; without it every row is taken as unpadded.

        Returns
        -------
        frames : torch.Tensor
            ``[batch, frames, hidden]`` last-layer hidden states.
        frame_mask : torch.Tensor or None
            ``[batch, frames]`` bool, True on frames computed from valid samples only; None
            when no row is padded (every frame valid).
        """
        attention_mask = None
        if wav_lens is not None:
            lengths = relative_to_samples(wav_lens, wavs.shape[1]).to(wavs.device)
            if bool((lengths < wavs.shape[1]).any()):
                steps = torch.arange(wavs.shape[1], device=wavs.device)
                attention_mask = (steps[None, :] < lengths[:, None]).long()
        frames = self.model(wavs, attention_mask=attention_mask).last_hidden_state
        if attention_mask is None:
            return frames, None
        n_frames = self.frame_lengths(lengths)
        steps = torch.arange(frames.shape[1], device=frames.device)
        return frames, steps[None, :] < n_frames[:, None]
