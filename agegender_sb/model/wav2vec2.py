"""wav2vec2 in plain torch: the computation of transformers' ``Wav2Vec2Model``, same modules.

Why not transformers' own class: importing it pulls in torch's compiler and distributed-tensor
stacks (about 3.7 s on a 2-core EPYC, measured by ``benchmarks/startup.py``), more than a tiny
model's whole command. This module computes what transformers 5's ``modeling_wav2vec2`` does
for the base model (feature encoder, feature projection, positional convolution, post- or
pre-layer-norm transformer, SpecAugment masking and LayerDrop in training), with the same
module tree, parameter names and ``state_dict`` keys, so checkpoints load unchanged. It is
tested against transformers at 1e-6 (``tests/model/test_wav2vec2.py``), and the whole model
against the model card's code (``tests/model/test_fidelity.py``).

Not here: adapters (``add_adapter``, ``adapter_attn_dim``), the pre-training quantiser and the
task heads of transformers; a configuration asking for an adapter is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from agegender_sb.errors import SettingsError

__all__ = ["Wav2Vec2Config", "Wav2Vec2Model", "Wav2Vec2FeatureEncoder", "allocate",
           "Wav2Vec2ConvLayer", "Wav2Vec2PositionalConvEmbedding", "Wav2Vec2Attention",
           "Wav2Vec2FeedForward", "Wav2Vec2Encoder", "Wav2Vec2EncoderStableLayerNorm",
           "time_mask", "attention_modules", "ACTIVATIONS"]

#: ``hidden_act`` / ``feat_extract_activation`` names (transformers' spelling) → modules
ACTIVATIONS = {
    "gelu": lambda: nn.GELU(), "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU,
    "silu": nn.SiLU, "swish": nn.SiLU, "tanh": nn.Tanh,
}

#: fields of transformers' ``Wav2Vec2Config`` that the base model does not use (task heads,
#: pre-training, tokens, initialisation): accepted and ignored
_IGNORED = frozenset({
    "vocab_size", "feat_quantizer_dropout", "final_dropout", "initializer_range",
    "num_codevectors_per_group", "num_codevector_groups", "contrastive_logits_temperature",
    "num_negatives", "codevector_dim", "proj_codevector_dim", "diversity_loss_weight",
    "ctc_loss_reduction", "ctc_zero_infinity", "use_weighted_layer_sum", "classifier_proj_size",
    "tdnn_dim", "tdnn_kernel", "tdnn_dilation", "xvector_output_dim", "pad_token_id",
    "bos_token_id", "eos_token_id", "adapter_kernel_size", "adapter_stride",
    "num_adapter_layers", "output_hidden_size", "gradient_checkpointing", "num_feat_extract_layers",
})


@dataclasses.dataclass
class Wav2Vec2Config:
    """The architecture fields of transformers' ``Wav2Vec2Config``, with its defaults.

    :meth:`from_mapping` takes a ``config.json``-style mapping: the fields below, fields of
    transformers' config that the base model does not use (ignored), nothing else.

    >>> cfg = Wav2Vec2Config.from_mapping({"hidden_size": 32, "vocab_size": 40,
    ...                                    "num_attention_heads": 4})
    >>> cfg.hidden_size, cfg.num_feat_extract_layers
    (32, 7)
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.1
    attention_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    layerdrop: float = 0.1
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    add_adapter: bool = False
    adapter_attn_dim: int | None = None

    def __post_init__(self):
        self.conv_dim, self.conv_stride, self.conv_kernel = (
            tuple(self.conv_dim), tuple(self.conv_stride), tuple(self.conv_kernel))
        if not len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel):
            raise SettingsError("wav2vec2: conv_dim, conv_stride and conv_kernel must have the "
                                f"same length, got {len(self.conv_dim)}, "
                                f"{len(self.conv_stride)}, {len(self.conv_kernel)}")
        if self.feat_extract_norm not in ("group", "layer"):
            raise SettingsError("wav2vec2: feat_extract_norm must be 'group' or 'layer', got "
                                f"{self.feat_extract_norm!r}")
        for field in ("hidden_act", "feat_extract_activation"):
            if getattr(self, field) not in ACTIVATIONS:
                raise SettingsError(f"wav2vec2: {field} {getattr(self, field)!r} is not one of "
                                    f"{', '.join(ACTIVATIONS)}")
        if self.add_adapter or self.adapter_attn_dim is not None:
            raise SettingsError("wav2vec2: adapter layers (add_adapter, adapter_attn_dim) are "
                                "not supported")

    @property
    def num_feat_extract_layers(self) -> int:
        return len(self.conv_dim)

    @classmethod
    def from_mapping(cls, values: Mapping) -> Wav2Vec2Config:
        """Build from keyword values, ignoring transformers fields the base model does not
        use; an unknown field is a :class:`~agegender_sb.errors.SettingsError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - _IGNORED)
        if unknown:
            raise SettingsError(f"wav2vec2: unknown field(s) {', '.join(unknown)}")
        return cls(**{k: v for k, v in values.items() if k in known})


class Wav2Vec2ConvLayer(nn.Module):
    """One convolution of the feature encoder: conv → (layer or group norm) → activation.

    ``norm`` is ``"layer"`` (over channels), ``"group"`` (one group per channel, over time:
    the first layer of ``feat_extract_norm="group"`` models) or None.
    """

    def __init__(self, config: Wav2Vec2Config, layer_id: int = 0, norm: str | None = "layer"):
        super().__init__()
        in_dim = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        out_dim = config.conv_dim[layer_id]
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size=config.conv_kernel[layer_id],
                              stride=config.conv_stride[layer_id], bias=config.conv_bias)
        self.norm = norm
        if norm == "layer":
            self.layer_norm = nn.LayerNorm(out_dim)
        elif norm == "group":
            self.layer_norm = nn.GroupNorm(out_dim, out_dim)
        self.activation = ACTIVATIONS[config.feat_extract_activation]()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv(hidden_states)
        if self.norm == "layer":
            hidden_states = self.layer_norm(hidden_states.transpose(-2, -1)).transpose(-2, -1)
        elif self.norm == "group":
            hidden_states = self.layer_norm(hidden_states)
        return self.activation(hidden_states)


class Wav2Vec2FeatureEncoder(nn.Module):
    """The convolutional feature encoder: ``[batch, samples]`` → ``[batch, channels, frames]``.

    >>> enc = Wav2Vec2FeatureEncoder(Wav2Vec2Config(conv_dim=[8] * 7))
    >>> enc(torch.randn(2, 16000)).shape
    torch.Size([2, 8, 49])
    """

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        n = config.num_feat_extract_layers
        if config.feat_extract_norm == "layer":
            layers = [Wav2Vec2ConvLayer(config, i, "layer") for i in range(n)]
        else:
            layers = [Wav2Vec2ConvLayer(config, 0, "group")] + [
                Wav2Vec2ConvLayer(config, i, None) for i in range(1, n)]
        self.conv_layers = nn.ModuleList(layers)
        self._requires_grad = True

    def _freeze_parameters(self) -> None:
        for param in self.parameters():
            param.requires_grad = False
        self._requires_grad = False

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        hidden_states = input_values[:, None]
        for layer in self.conv_layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class Wav2Vec2FeatureProjection(nn.Module):
    """Layer norm and projection of the CNN features to the transformer's width."""

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.projection(self.layer_norm(hidden_states)))


def allocate(module: nn.Module) -> nn.Module:
    """Give a module built on the meta device uninitialised CPU memory, in place (what
    ``Module.to_empty(device="cpu")`` does, without ``empty_like`` on meta tensors, whose
    first call imports torch's symbolic-shape machinery: 0.3 s); returns ``module``.

    >>> with torch.device("meta"):
    ...     lin = nn.Linear(3, 2)
    >>> allocate(lin).weight.device, lin.weight.shape
    (device(type='cpu'), torch.Size([2, 3]))
    """
    return module._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device="cpu"))


class Wav2Vec2PositionalConvEmbedding(nn.Module):
    """The weight-normed grouped convolution that gives the transformer relative positions.

    >>> pos = Wav2Vec2PositionalConvEmbedding(Wav2Vec2Config(hidden_size=32,
    ...     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4))
    >>> pos(torch.randn(2, 50, 32)).shape
    torch.Size([2, 50, 32])
    """

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        conv = nn.Conv1d(config.hidden_size, config.hidden_size,
                         kernel_size=config.num_conv_pos_embeddings,
                         padding=config.num_conv_pos_embeddings // 2,
                         groups=config.num_conv_pos_embedding_groups)
        if conv.weight.is_meta:  # a model built to be loaded: a weight norm of no values,
            allocate(conv)  # which on the meta device takes a second to trace
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.padding = _SamePad(config.num_conv_pos_embeddings)
        self.activation = ACTIVATIONS[config.feat_extract_activation]()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.padding(self.conv(hidden_states.transpose(1, 2)))
        return self.activation(hidden_states).transpose(1, 2)


class _SamePad(nn.Module):
    """Drops the last frame after an even-kernel convolution (so the length is kept)."""

    def __init__(self, kernel: int):
        super().__init__()
        self.num_pad_remove = 1 if kernel % 2 == 0 else 0

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.num_pad_remove:
            return hidden_states[:, :, : -self.num_pad_remove]
        return hidden_states


class Wav2Vec2Attention(nn.Module):
    """Multi-head self-attention. ``implementation``: ``"sdpa"`` (torch's fused kernel) or
    ``"eager"`` (matrix products and softmax; plain MatMul nodes in an ONNX export).

    ``attention_mask`` is ``[batch, 1, 1, frames]`` bool, True where a key may be attended.

    >>> att = Wav2Vec2Attention(32, 4)
    >>> att(torch.randn(2, 9, 32)).shape
    torch.Size([2, 9, 32])
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0,
                 implementation: str = "sdpa"):
        super().__init__()
        if embed_dim % num_heads:
            raise SettingsError(f"wav2vec2: hidden_size {embed_dim} is not a multiple of "
                                f"num_attention_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.implementation = implementation
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, hidden_states: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, n_frames, _ = hidden_states.shape
        shape = (batch, n_frames, self.num_heads, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        if self.implementation == "eager":
            weights = torch.matmul(q, k.transpose(2, 3)) * self.scaling
            if attention_mask is not None:
                weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
            weights = F.dropout(F.softmax(weights, dim=-1), p=dropout, training=self.training)
            out = torch.matmul(weights, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask,
                                                 dropout_p=dropout, scale=self.scaling)
        return self.out_proj(out.transpose(1, 2).reshape(batch, n_frames, self.embed_dim))


class Wav2Vec2FeedForward(nn.Module):
    """Linear → activation → dropout → Linear → dropout."""

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACTIVATIONS[config.hidden_act]()
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.intermediate_dropout(
            self.intermediate_act_fn(self.intermediate_dense(hidden_states)))
        return self.output_dropout(self.output_dense(hidden_states))


class Wav2Vec2EncoderLayer(nn.Module):
    """One transformer layer; ``stable``: layer norms before attention and feed-forward
    (wav2vec2-large-robust), else after them (wav2vec2-base)."""

    def __init__(self, config: Wav2Vec2Config, stable: bool, implementation: str = "sdpa"):
        super().__init__()
        self.stable = stable
        self.attention = Wav2Vec2Attention(config.hidden_size, config.num_attention_heads,
                                           config.attention_dropout, implementation)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = Wav2Vec2FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden_states
        if self.stable:
            hidden_states = self.attention(self.layer_norm(hidden_states), attention_mask)
            hidden_states = residual + self.dropout(hidden_states)
            return hidden_states + self.feed_forward(self.final_layer_norm(hidden_states))
        hidden_states = residual + self.dropout(self.attention(hidden_states, attention_mask))
        hidden_states = self.layer_norm(hidden_states)
        return self.final_layer_norm(hidden_states + self.feed_forward(hidden_states))


class Wav2Vec2Encoder(nn.Module):
    """The transformer: positional convolution, layers (LayerDrop in training), layer norm
    (after the positional convolution for post-norm models, at the end for stable ones)."""

    stable = False

    def __init__(self, config: Wav2Vec2Config, implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.pos_conv_embed = Wav2Vec2PositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList([Wav2Vec2EncoderLayer(config, self.stable, implementation)
                                     for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states: torch.Tensor,
                frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        attention_mask = None
        if frame_mask is not None:  # padded frames enter as zeros, and are never attended
            hidden_states = hidden_states.masked_fill(~frame_mask[..., None], 0.0)
            attention_mask = frame_mask[:, None, None, :]
        hidden_states = hidden_states + self.pos_conv_embed(hidden_states)
        if not self.stable:
            hidden_states = self.layer_norm(hidden_states)
        hidden_states = self.dropout(hidden_states)
        for layer in self.layers:
            if self.training and self.config.layerdrop > 0 and (
                    float(torch.rand([])) < self.config.layerdrop):
                continue  # LayerDrop
            hidden_states = layer(hidden_states, attention_mask)
        return self.layer_norm(hidden_states) if self.stable else hidden_states


class Wav2Vec2EncoderStableLayerNorm(Wav2Vec2Encoder):
    """The pre-layer-norm transformer of wav2vec2-large-robust (``do_stable_layer_norm``)."""

    stable = True


def time_mask(lengths: torch.Tensor, width: int, prob: float, span: int,
              min_masks: int = 0) -> torch.Tensor:
    """SpecAugment spans, after transformers' ``_compute_mask_indices``:
    ``[batch, width]`` bool, per row ``max(min_masks, int(prob * length / span + u))`` spans
    of ``span`` positions (``u`` uniform in [0, 1)), starts drawn without replacement within
    the row's valid ``length``, at most as many as fit.

    >>> m = time_mask(torch.tensor([100, 40]), 100, prob=0.5, span=10, min_masks=1)
    >>> m.shape, bool(m[1, 40:].any()), bool(m[0].any())
    (torch.Size([2, 100]), False, True)
    """
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for row, length in enumerate(lengths.tolist()):
        length = min(int(length), width)
        n_starts = length - span + 1
        if n_starts <= 0:
            continue
        n_spans = max(min_masks, int(prob * length / span + float(torch.rand([]))))
        n_spans = min(n_spans, n_starts, length // span)
        for start in torch.randperm(n_starts)[:n_spans].tolist():
            mask[row, start:start + span] = True
    return mask


class Wav2Vec2Model(nn.Module):
    """wav2vec2 without a head: ``[batch, samples]`` (+ sample mask) → last hidden states.

    >>> model = Wav2Vec2Model(Wav2Vec2Config(hidden_size=32, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=37, conv_dim=[16] * 7,
    ...     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2))
    >>> model(torch.randn(2, 16000)).shape
    torch.Size([2, 49, 32])
    """

    def __init__(self, config: Wav2Vec2Config, implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.feature_extractor = Wav2Vec2FeatureEncoder(config)
        self.feature_projection = Wav2Vec2FeatureProjection(config)
        if config.mask_time_prob > 0 or config.mask_feature_prob > 0:
            self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        encoder = (Wav2Vec2EncoderStableLayerNorm if config.do_stable_layer_norm
                   else Wav2Vec2Encoder)
        self.encoder = encoder(config, implementation)

    def freeze_feature_encoder(self) -> None:
        """No gradients through the convolutional feature encoder."""
        self.feature_extractor._freeze_parameters()

    def frame_lengths(self, n_samples: torch.Tensor) -> torch.Tensor:
        """Frames the feature encoder makes of ``n_samples`` samples."""
        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride):
            n_samples = torch.div(n_samples - kernel, stride, rounding_mode="floor") + 1
        return n_samples

    def _spec_augment(self, hidden: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if not (self.training and cfg.apply_spec_augment):
            return hidden
        batch, width, size = hidden.shape
        if cfg.mask_time_prob > 0:
            mask = time_mask(frame_lengths, width, cfg.mask_time_prob, cfg.mask_time_length,
                             cfg.mask_time_min_masks).to(hidden.device)
            hidden = torch.where(mask[..., None], self.masked_spec_embed.to(hidden.dtype), hidden)
        if cfg.mask_feature_prob > 0:
            mask = time_mask(torch.full((batch,), size), size, cfg.mask_feature_prob,
                             cfg.mask_feature_length, cfg.mask_feature_min_masks)
            hidden = hidden.masked_fill(mask[:, None, :].to(hidden.device), 0.0)
        return hidden

    def forward(self, input_values: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``input_values`` ``[batch, samples]``; ``attention_mask`` ``[batch, samples]``,
        nonzero on valid samples (a prefix of each row). Returns ``[batch, frames, hidden]``."""
        features = self.feature_extractor(input_values).transpose(1, 2)
        width = features.shape[1]
        frame_mask = None
        if attention_mask is not None:
            lengths = self.frame_lengths(attention_mask.long().sum(-1))
            frame_mask = torch.arange(width, device=features.device)[None, :] < lengths[:, None]
        else:
            lengths = torch.full((features.shape[0],), width)
        hidden = self._spec_augment(self.feature_projection(features), lengths)
        return self.encoder(hidden, frame_mask)


def attention_modules(module: nn.Module):
    """The :class:`Wav2Vec2Attention` modules inside ``module``."""
    return [m for m in module.modules() if isinstance(m, Wav2Vec2Attention)]
