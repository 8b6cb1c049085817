"""Channels-last wav2vec2 feature encoder and positional convolution for CPU inference.

transformers' wav2vec2 runs its convolutional feature encoder in ``[batch, channels, time]``
layout and transposes around every layer norm: on a 6 s utterance (24-layer model, one CPU
thread) those layout copies, the layer norms on transposed views and the GELUs allocating fresh
40 MB outputs cost about 300 ms, as much as all its convolutions. The positional convolution
recomputes its weight norm on every call (18 ms). :func:`use_fast_cpu_modules` switches, in
place, the modules of a transformers ``Wav2Vec2Model`` to subclasses that, in CPU float32
inference only:

- keep the feature encoder in ``[batch, time, channels]`` (channels-last) layout: the first
  convolution (one input channel) as a matrix product over a strided view of the signal, the
  others as oneDNN channels-last convolutions, layer norms over contiguous rows, GELU in place;
- compute the positional convolution's weight norm once and keep it until a weight changes
  (keyed on the parameters' version counters), and run that convolution channels-last too;
- apply the feed-forward's GELU in place (oneDNN's fused GELU post-op measured slower).

The same operations on the same numbers, in another memory order: results agree with
transformers' modules within float rounding (tested against the model card's code at 1e-4 on
the full chain). Training, autocast, other dtypes and devices, and configurations other than
the audEERING models' (``feat_extract_norm="layer"``, GELU activations) take transformers' own
``forward``; parameters and ``state_dict`` keys are unchanged.
"""

from __future__ import annotations

import warnings
import weakref

import torch
import torch.nn.functional as F
from transformers.activations import GELUActivation
from transformers.models.wav2vec2 import modeling_wav2vec2 as w2v

__all__ = ["FAST_PATHS", "enable_fast_path", "FastFeatureEncoder", "FastPositionalConv",
           "FastFeedForward", "use_fast_cpu_modules", "plain_torch_modules"]


def _inference_fp32_cpu(x: torch.Tensor, module: torch.nn.Module) -> bool:
    """CPU float32 input, no autocast and nothing that needs a gradient."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled()
                 and (x.requires_grad or any(p.requires_grad for p in module.parameters())))
    )


#: derived weights per module, outside the module (not copied, saved or exported with it)
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached(module: torch.nn.Module, make):
    """``make()``'s result, recomputed only when one of ``module``'s parameters changed
    (in-place updates bump a tensor's version; new tensors change its identity)."""
    key = tuple((id(p), p._version) for p in module.parameters())
    cache = _CACHE.get(module)
    if cache is None or cache[0] != key:
        with torch.no_grad():
            cache = (key, make())
        _CACHE[module] = cache
    return cache[1]


def _gelu_inplace(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_(x)


class FastFeatureEncoder(w2v.Wav2Vec2FeatureEncoder):
    """transformers' feature encoder, channels-last in CPU float32 inference.

    Example
    -------
    >>> from transformers import Wav2Vec2Config
    >>> cfg = Wav2Vec2Config(conv_dim=[8] * 7, feat_extract_norm="layer", conv_bias=True)
    >>> enc = w2v.Wav2Vec2FeatureEncoder(cfg).eval()
    >>> x = torch.randn(2, 4000)
    >>> with torch.no_grad():
    ...     ref = enc(x)
    ...     _ = use_fast_cpu_modules(enc)
    ...     out = enc(x)
    >>> type(enc).__name__, out.shape, bool(torch.allclose(out, ref, atol=1e-5))
    ('FastFeatureEncoder', torch.Size([2, 8, 12]), True)
    """

    def _supported(self) -> bool:
        return all(type(layer) is w2v.Wav2Vec2LayerNormConvLayer
                   and _is_exact_gelu(layer.activation)
                   and layer.conv.padding == (0,) and layer.conv.dilation == (1,)
                   and layer.conv.groups == 1
                   for layer in self.conv_layers)

    def _weights(self):
        out = []
        for i, layer in enumerate(self.conv_layers):
            w = layer.conv.weight  # [out, in, kernel]
            if i == 0 and w.shape[1] == 1:
                out.append(w[:, 0, :].contiguous())  # [out, kernel]: a Linear over frames
            else:  # [out, in, 1, kernel] in channels-last order for oneDNN
                out.append(w.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last))
        return out

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        if not (self._supported() and _inference_fp32_cpu(input_values, self)):
            return super().forward(input_values)
        weights = _cached(self, self._weights)
        x = input_values
        for layer, w in zip(self.conv_layers, weights):
            conv = layer.conv
            k, s = conv.kernel_size[0], conv.stride[0]
            if w.dim() == 2:  # [B, T] signal → [B, T', k] overlapping frames (a view)
                sig = x.contiguous()
                n_out = (sig.shape[1] - k) // s + 1
                frames = sig.as_strided((sig.shape[0], n_out, k), (sig.stride(0), s, 1))
                x = F.linear(frames, w, conv.bias)  # [B, T', C]
            elif getattr(layer, "int8_frames", None) is not None:  # enable_fast_path int8-cnn
                # [B, T, C] contiguous: the k rows of one output frame are k*C contiguous
                # values, so the frames are a strided view [B, T', k*C] (no copy)
                n_out = (x.shape[1] - k) // s + 1
                c = x.shape[2]
                frames = x.as_strided((x.shape[0], n_out, k * c), (x.stride(0), s * c, 1))
                x = layer.int8_frames(frames)
            else:  # [B, T, C] contiguous == NHWC [B, 1, T, C] for a [B, C, 1, T] tensor
                nchw = x.transpose(1, 2).unsqueeze(2)
                y = F.conv2d(nchw, w, conv.bias, stride=(1, s))
                x = y.squeeze(2).transpose(1, 2)
                if not x.is_contiguous():  # oneDNN chose another layout: keep going right
                    x = x.contiguous()
            x = F.layer_norm(x, layer.layer_norm.normalized_shape, layer.layer_norm.weight,
                             layer.layer_norm.bias, layer.layer_norm.eps)
            x = _gelu_inplace(x)
        return x.transpose(1, 2)  # [B, C, T] view, as transformers returns it


class FastPositionalConv(w2v.Wav2Vec2PositionalConvEmbedding):
    """transformers' positional convolution with its weight norm computed once (until a
    weight changes), channels-last, in CPU float32 inference.

    Example
    -------
    >>> from transformers import Wav2Vec2Config
    >>> cfg = Wav2Vec2Config(hidden_size=32, num_conv_pos_embeddings=16,
    ...                      num_conv_pos_embedding_groups=4)
    >>> pos = w2v.Wav2Vec2PositionalConvEmbedding(cfg).eval()
    >>> h = torch.randn(2, 50, 32)
    >>> with torch.no_grad():
    ...     ref = pos(h)
    ...     _ = use_fast_cpu_modules(pos)
    ...     out = pos(h)
    >>> type(pos).__name__, bool(torch.allclose(out, ref, atol=1e-5))
    ('FastPositionalConv', True)
    """

    def _supported(self) -> bool:
        return _is_exact_gelu(self.activation) and not hasattr(self.conv, "weight_g")

    def _weight(self) -> torch.Tensor:
        # conv.weight runs the weight-norm parametrization (or reads the old hook's result)
        return self.conv.weight.detach().unsqueeze(2).contiguous(
            memory_format=torch.channels_last)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not (self._supported() and _inference_fp32_cpu(hidden_states, self)):
            return super().forward(hidden_states)
        w = _cached(self, self._weight)
        conv = self.conv
        nchw = hidden_states.contiguous().transpose(1, 2).unsqueeze(2)
        y = F.conv2d(nchw, w, conv.bias, padding=(0, conv.padding[0]), groups=conv.groups)
        y = y.squeeze(2).transpose(1, 2)  # [B, T + pad, C]
        if self.padding.num_pad_remove > 0:
            y = y[:, : -self.padding.num_pad_remove]
        if not y.is_contiguous():
            y = y.contiguous()
        return _gelu_inplace(y)


class FastFeedForward(w2v.Wav2Vec2FeedForward):
    """transformers' feed-forward block with its GELU applied in place (no fresh
    ``[batch, frames, 4096]`` tensor) in CPU float32 inference.

    Example
    -------
    >>> from transformers import Wav2Vec2Config
    >>> ff = w2v.Wav2Vec2FeedForward(Wav2Vec2Config(hidden_size=16, intermediate_size=40)).eval()
    >>> h = torch.randn(2, 7, 16)
    >>> with torch.no_grad():
    ...     ref = ff(h)
    ...     _ = use_fast_cpu_modules(ff)
    ...     out = ff(h)
    >>> bool(torch.allclose(out, ref, atol=1e-5))
    True
    """

    def _fusable(self, x: torch.Tensor) -> bool:
        return (_is_exact_gelu(self.intermediate_act_fn)
                and isinstance(self.intermediate_dense,  # modules returning a fresh tensor
                               (torch.nn.Linear, torch.ao.nn.quantized.dynamic.Linear))
                and _inference_fp32_cpu(x, self))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self._fusable(hidden_states):
            return super().forward(hidden_states)
        return self.output_dense(_gelu_inplace(self.intermediate_dense(hidden_states)))


def _is_exact_gelu(act) -> bool:
    """transformers' ``"gelu"`` activation (erf form, torch's kernel)."""
    return isinstance(act, GELUActivation) and getattr(act, "act", None) is F.gelu


_SWAPS = {
    w2v.Wav2Vec2FeatureEncoder: FastFeatureEncoder,
    w2v.Wav2Vec2PositionalConvEmbedding: FastPositionalConv,
    w2v.Wav2Vec2FeedForward: FastFeedForward,
}


def use_fast_cpu_modules(module: torch.nn.Module, enabled: bool = True) -> torch.nn.Module:
    """Switch, in place, the wav2vec2 feature encoder, positional convolution and
    feed-forward blocks inside ``module`` to their CPU-inference subclasses (or back, with
    ``enabled=False``, e.g. before ONNX export). Returns ``module``."""
    back = {fast: plain for plain, fast in _SWAPS.items()}
    for sub in module.modules():
        if enabled and type(sub) in _SWAPS:
            sub.__class__ = _SWAPS[type(sub)]
        elif not enabled and type(sub) in back:
            sub.__class__ = back[type(sub)]
            _CACHE.pop(sub, None)
    return module


FAST_PATHS = ("int8", "int8-cnn")


def enable_fast_path(model: torch.nn.Module, kind: str = "int8") -> torch.nn.Module:
    """Opt-in approximate CPU inference: the transformer's matrix products in int8.

    ``kind="int8"``: every ``nn.Linear`` of the wav2vec2 transformer encoder (attention
    projections and feed-forward; 80 % of the model's arithmetic) becomes PyTorch's dynamic
    int8 Linear (fbgemm: int8 weights quantised once per output channel, activations per call,
    int32 accumulation, VNNI where the CPU has it). The convolutional feature encoder, the
    positional convolution, layer norms, softmax, pooling and both heads stay float32.
    ``kind="int8-cnn"``: also the feature encoder's six multi-channel convolutions (another
    15 % of the arithmetic), as int8 matrix products over strided frames; the int8 twins are
    extra modules (not in ``state_dict``), the float32 weights stay. Results
    are *not* the reference's: ``benchmarks/fast_path_fidelity.py`` measures how far they move
    (README / ``benchmarks/RESULTS.md``). In place; returns ``model`` (e.g. an
    :class:`~agegender_sb.model.AgeGenderModel` or ``clf.mods.model``). CPU inference only.

    Raises
    ------
    ValueError
        An unknown ``kind``, a model without a wav2vec2 transformer encoder, or one that is
        not on the CPU.
    RuntimeError
        A torch build without an int8 CPU engine.

    Example
    -------
    >>> from transformers import Wav2Vec2Config, Wav2Vec2Model
    >>> enc = Wav2Vec2Model(Wav2Vec2Config(hidden_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=37, conv_dim=[16] * 7,
    ...     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)).eval()
    >>> _ = enable_fast_path(enc, "int8")
    >>> type(enc.encoder.layers[0].feed_forward.intermediate_dense).__name__
    'Linear'
    >>> enc.encoder.layers[0].feed_forward.intermediate_dense.__module__
    'torch.ao.nn.quantized.dynamic.modules.linear'
    """
    if kind not in FAST_PATHS:
        raise ValueError(f"fast path kind must be one of {FAST_PATHS}, got {kind!r}")
    encoders = [m for m in model.modules()
                if isinstance(m, (w2v.Wav2Vec2Encoder, w2v.Wav2Vec2EncoderStableLayerNorm))]
    if not encoders:
        raise ValueError(f"{type(model).__name__} holds no wav2vec2 transformer encoder")
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"the int8 fast paths run on the CPU; the model is on {devices}")
    if torch.backends.quantized.engine in (None, "none"):
        raise RuntimeError("this torch build has no int8 CPU engine "
                           f"(engines: {torch.backends.quantized.supported_engines})")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from .fast_linear import OneDNNLinear

    for encoder in encoders:
        for sub in encoder.modules():  # quantize_dynamic matches the exact class
            if type(sub) is OneDNNLinear:
                sub.__class__ = torch.nn.Linear
        with warnings.catch_warnings():  # torch.ao's deprecation notice (torchao migration)
            warnings.simplefilter("ignore")
            quantize_dynamic(encoder, {torch.nn.Linear: per_channel_dynamic_qconfig},
                             dtype=torch.qint8, inplace=True)
    if kind == "int8-cnn":
        for fe in model.modules():
            if isinstance(fe, FastFeatureEncoder) and fe._supported():
                _quantize_cnn(fe)
    model.eval()
    return model


def _quantize_cnn(encoder: FastFeatureEncoder) -> None:
    """Give the feature encoder's multi-channel convolutions an int8 twin: a dynamic int8
    Linear over frames of ``kernel * channels`` values (weights reordered to match)."""
    from torch.ao.nn.quantized.dynamic import Linear as QLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    for layer in encoder.conv_layers:
        conv = layer.conv
        out_c, in_c, k = conv.weight.shape
        if in_c == 1:
            continue  # the first convolution: tiny, memory-bound
        lin = torch.nn.Linear(k * in_c, out_c, bias=conv.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(conv.weight.permute(0, 2, 1).reshape(out_c, k * in_c))
            if conv.bias is not None:
                lin.bias.copy_(conv.bias)
        lin.qconfig = per_channel_dynamic_qconfig
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # kept out of the module tree (and so out of state_dict and .to())
            layer.__dict__["int8_frames"] = QLinear.from_float(lin)


def plain_torch_modules(module: torch.nn.Module) -> torch.nn.Module:
    """Every CPU speed module of ``module`` back to transformers' and torch's own classes
    (channels-last modules and oneDNN Linear layers), in place: before ONNX export or
    ``torch.ao.quantization.quantize_dynamic``, which match exact classes."""
    from .fast_linear import use_onednn_linear

    use_fast_cpu_modules(module, enabled=False)
    return use_onednn_linear(module, enabled=False)
