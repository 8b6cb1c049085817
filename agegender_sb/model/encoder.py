"""The wav2vec2 encoder, built from architecture hyperparameters (no download).

A thin wrapper over :class:`~agegender_sb.model.wav2vec2.Wav2Vec2Model` (transformers'
computation and parameter names, in plain torch) that speaks SpeechBrain's batch convention —
``(wavs, wav_lens)`` with relative lengths — builds the attention mask itself and returns the
frame-level mask that pooling needs.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Mapping

import torch

from agegender_sb.audio import relative_to_samples
from agegender_sb.backends.cpu_speed import use_fast_cpu_modules
from agegender_sb.backends.fast_linear import use_onednn_linear
from agegender_sb.errors import SettingsError
from agegender_sb.model.wav2vec2 import (
    Wav2Vec2Config,
    Wav2Vec2Model,
    allocate,
    attention_modules,
)

__all__ = ["Wav2Vec2Encoder", "weights_loaded_next"]

#: inside :func:`weights_loaded_next` (per thread and task): the encoders built there
_LOADED_NEXT = contextvars.ContextVar("agegender_sb_weights_loaded_next", default=None)


@contextlib.contextmanager
def weights_loaded_next():
    """Inside this block, a :class:`Wav2Vec2Encoder` being built skips the random
    initialisation of its wav2vec2 weights: they are allocated, not filled, for a caller that
    loads every one of them next (strictly, as the model loader does). Drawing 315 million
    random numbers took 1.4 s of a 4.5 s load of the 24-layer model on one core. Only this
    thread's (and task's) encoders are affected. Yields the list of the encoders built
    inside, for the caller to check that it loaded each.

    >>> cfg = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
    ...        "intermediate_size": 37, "conv_dim": [16] * 7, "num_conv_pos_embeddings": 16,
    ...        "num_conv_pos_embedding_groups": 2}
    >>> with weights_loaded_next() as built:
    ...     enc = Wav2Vec2Encoder(cfg)
    >>> built == [enc], enc.model.encoder.layers[0].attention.q_proj.weight.shape
    (True, torch.Size([32, 32]))
    """
    built: list = []
    token = _LOADED_NEXT.set(built)
    try:
        yield built
    finally:
        _LOADED_NEXT.reset(token)


def _plain(value):
    """YAML containers (hyperpyyaml's ordered maps, lists) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Wav2Vec2Encoder(torch.nn.Module):
    """wav2vec2 mapping normalised waveforms to last-layer frames.

    Parameters
    ----------
    config : mapping
        Fields of transformers' ``Wav2Vec2Config`` (the ``wav2vec2`` mapping of
        ``hparams/inference.yaml``, where the large-robust architecture is declared); fields
        left out take transformers' defaults, fields the base model does not use are
        ignored (:class:`~agegender_sb.model.wav2vec2.Wav2Vec2Config`). With
        ``feat_extract_norm="group"`` (e.g. wav2vec2-base) the first convolution normalises
        over time, padding included, so padded batches do not give the one-at-a-time
        results; the audEERING models use ``"layer"``.
    attn_implementation : str
        Attention kernel: ``"sdpa"`` (default, torch's fused kernel, as transformers) or
        ``"eager"`` (products and softmax); the same numbers within float rounding, and on the
        CPU the same speed (measured).
    onednn_linear : bool
        Run the Linear layers through oneDNN in CPU inference
        (:mod:`agegender_sb.backends.fast_linear`) and the convolutional feature encoder and
        positional convolution channels-last, with the weight norm cached
        (:mod:`agegender_sb.backends.cpu_speed`); same numbers within float rounding. Training and
        GPUs are unaffected.

    Example
    -------
    >>> enc = Wav2Vec2Encoder({"hidden_size": 32, "num_hidden_layers": 2,
    ...     "num_attention_heads": 2, "intermediate_size": 37, "conv_dim": [16] * 7,
    ...     "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
    ...     "feat_extract_norm": "layer", "do_stable_layer_norm": True})
    >>> frames, mask = enc(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> frames.shape, mask.sum(dim=1).tolist()
    (torch.Size([2, 49, 32]), [49, 24])
    """

    def __init__(
        self,
        config: Mapping,
        attn_implementation: str = "sdpa",
        onednn_linear: bool = True,
    ):
        super().__init__()
        self.config = Wav2Vec2Config.from_mapping(_plain(config))
        built = _LOADED_NEXT.get()
        if built is not None:  # built without values, then given memory: loaded next
            with torch.device("meta"):
                model = Wav2Vec2Model(self.config)
            self.model = allocate(model)
            built.append(self)
        else:
            self.model = Wav2Vec2Model(self.config)
        if onednn_linear:
            use_onednn_linear(self.model)
            use_fast_cpu_modules(self.model)
        self.set_attention(attn_implementation)

    @property
    def attention(self) -> str:
        """The attention kernel in use (``"sdpa"`` or ``"eager"``)."""
        return attention_modules(self.model)[0].implementation

    def set_attention(self, implementation: str) -> None:
        """Switch the attention kernel (``"sdpa"`` or ``"eager"``) in place."""
        if implementation not in ("sdpa", "eager"):
            raise SettingsError(f"attn_implementation must be 'sdpa' or 'eager', "
                                f"got {implementation!r}")
        for attention in attention_modules(self.model):
            attention.implementation = implementation

    @property
    def output_size(self) -> int:
        """Width of the returned frames (``hidden_size``)."""
        return self.config.hidden_size

    def frame_lengths(self, n_samples: torch.Tensor) -> torch.Tensor:
        """Number of encoder frames for inputs of ``n_samples`` samples."""
        return self.model.frame_lengths(n_samples).long()

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
        frames = self.model(wavs, attention_mask=attention_mask)
        if attention_mask is None:
            return frames, None
        n_frames = self.frame_lengths(lengths)
        steps = torch.arange(frames.shape[1], device=frames.device)
        return frames, steps[None, :] < n_frames[:, None]
