"""Channels-last wav2vec2 feature encoder and positional convolution for CPU inference.

wav2vec2 (transformers' and :mod:`agegender_sb.model.wav2vec2`) runs its convolutional
feature encoder in ``[batch, channels, time]`` layout and transposes around every layer norm:
on a 6 s utterance (24-layer model, one CPU thread) those layout copies, the layer norms on
transposed views and the GELUs allocating fresh 40 MB outputs cost about 300 ms, as much as
all its convolutions. The positional convolution recomputes its weight norm on every call
(18 ms). :func:`use_fast_cpu_modules` switches, in place, the modules of a
:class:`~agegender_sb.model.wav2vec2.Wav2Vec2Model` to subclasses that, in CPU float32
inference only:

- keep the feature encoder in ``[batch, time, channels]`` (channels-last) layout: the first
  convolution (one input channel) as a matrix product over a strided view of the signal, the
  others as oneDNN products over the overlapping frames they read where the CPU runs those
  faster (AVX-512), else as oneDNN channels-last convolutions; layer norms over contiguous
  rows and GELU in place, on blocks of frames while they are in cache;
- compute the positional convolution's weight norm once and keep it until a weight changes
  (keyed on the parameters' version counters), and run that convolution channels-last too;
- apply the feed-forward's GELU in place (oneDNN's fused GELU post-op measured slower).

The same operations on the same numbers, in another memory order: results agree with
the plain modules within float rounding (tested against the model card's code at 1e-4 on
the full chain). Training, autocast, other dtypes and devices, and configurations other than
the audEERING models' (``feat_extract_norm="layer"``, GELU activations) take the plain
``forward``; parameters and ``state_dict`` keys are unchanged.
"""

from __future__ import annotations

import functools
import weakref

import torch
import torch.nn.functional as F

from agegender_sb.backends.fast_linear import onednn_available, use_onednn_linear
from agegender_sb.model import wav2vec2 as w2v

__all__ = ["FastFeatureEncoder", "FastPositionalConv", "FastFeedForward", "cached", "frames",
           "frame_products_faster", "frame_weight", "inference_fp32_cpu", "use_fast_cpu_modules",
           "plain_torch_modules"]


def inference_fp32_cpu(x: torch.Tensor, module: torch.nn.Module) -> bool:
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


def cached(module: torch.nn.Module, make, also=()):
    """``make()``'s result, recomputed only when one of ``module``'s parameters changed
    (in-place updates bump a tensor's version; new tensors change its identity) or ``also``
    (anything else ``make`` depends on, compared by equality) differs from the last call's."""
    key = (tuple((id(p), p._version) for p in module.parameters()), also)
    cache = _CACHE.get(module)
    if cache is None or cache[0] != key:
        with torch.no_grad():
            cache = (key, make())
        _CACHE[module] = cache
    return cache[1]


def _gelu_inplace(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_(x)


class FastFeatureEncoder(w2v.Wav2Vec2FeatureEncoder):
    """The feature encoder, channels-last in CPU float32 inference.

    The first convolution (one input channel) is a product over a strided view of the
    signal. The others are products over the overlapping frames they read, or oneDNN's
    channels-last convolution, by :attr:`frame_products` (by default what this CPU runs
    faster, :func:`frame_products_faster`). Each layer's layer norm and GELU run on blocks
    of its output frames while they are in cache; where the second layer runs as products
    over frames, it computes the first layer's frames a block at a time as it reads them
    (the first layer's output, the largest, is never written whole). The products over
    frames go through :meth:`_frames_weights` and :meth:`_frames_product`, which the
    opt-in bf16 fast path (:mod:`agegender_sb.backends.fast_paths`) overrides; layer norms
    compute in float32 either way, and the output is float32. Under ``torch.compile`` it
    traces as the plain encoder.

    Example
    -------
    >>> cfg = w2v.Wav2Vec2Config(conv_dim=[8] * 7, feat_extract_norm="layer", conv_bias=True)
    >>> enc = w2v.Wav2Vec2FeatureEncoder(cfg).eval()
    >>> x = torch.randn(2, 4000)
    >>> with torch.no_grad():
    ...     ref = enc(x)
    ...     _ = use_fast_cpu_modules(enc)
    ...     out = enc(x)
    >>> type(enc).__name__, out.shape, bool(torch.allclose(out, ref, atol=1e-5))
    ('FastFeatureEncoder', torch.Size([2, 8, 12]), True)
    """

    #: output frames per block: each block's layer norm and GELU run while its product's
    #: output is still in cache (the first layer's, where it is computed on its own, and
    #: the products' over frames)
    first_block_frames = 256
    block_frames = 1024
    #: the multi-channel convolutions as products over frames (True), as oneDNN's
    #: channels-last convolution (False), or as this CPU is measured to favour (None:
    #: :func:`frame_products_faster`); set on an instance to choose
    frame_products: bool | None = None
    #: the dtype the products over frames take (the bf16 fast path's subclass: bfloat16)
    frames_dtype = torch.float32

    def supported(self) -> bool:
        """Whether this encoder's configuration is the one the channels-last path computes
        (layer-norm convolutions, exact GELU, no padding, dilation or groups)."""
        return all(type(layer) is w2v.Wav2Vec2ConvLayer and layer.norm == "layer"
                   and _is_exact_gelu(layer.activation)
                   and layer.conv.padding == (0,) and layer.conv.dilation == (1,)
                   and layer.conv.groups == 1
                   for layer in self.conv_layers)

    def _use_frame_products(self) -> bool:
        chosen = self.frame_products
        if chosen is None:
            return frame_products_faster()
        return bool(chosen) and onednn_available()

    def _layout(self) -> tuple:
        """How the convolutions run: products over frames or not, and which layers have an
        int8 twin (fast path ``int8-cnn``), whose float32 weights then go unused."""
        return (self._use_frame_products(),
                tuple(getattr(layer, "int8_frames", None) is not None
                      for layer in self.conv_layers))

    def _weights(self, layout: tuple) -> list:
        as_frames, int8 = layout
        out = []
        for i, layer in enumerate(self.conv_layers):
            w, b = layer.conv.weight.detach(), layer.conv.bias  # [out, in, kernel]
            if i == 0 and w.shape[1] == 1:  # [out, kernel]: a Linear over frames
                out.append((w[:, 0, :].contiguous(), b))
            elif int8[i]:
                out.append((None, None))  # the int8 twin computes this layer
            elif as_frames:
                out.append(self._frames_weights(layer.conv))
            else:
                w = w.unsqueeze(2).contiguous(memory_format=torch.channels_last)
                out.append((w, b))  # [out, in, 1, kernel] channels-last, for oneDNN
        return out

    def _frames_weights(self, conv: torch.nn.Conv1d):
        """A multi-channel convolution's weights as :meth:`_frames_product` takes them:
        ``[out, kernel * in]`` (:func:`frame_weight`) packed for oneDNN, and the bias."""
        return torch.ops.mkldnn._reorder_linear_weight(frame_weight(conv)), conv.bias

    def _frames_product(self, rows: torch.Tensor, weights) -> torch.Tensor:
        """One block of a multi-channel convolution as a product over its frames:
        ``[B, n, kernel * C]`` → ``[B, n, C']``."""
        w, bias = weights
        return torch.ops.mkldnn._linear_pointwise(rows, w, bias, "none", [], "")

    def _convolution(self, layer, x: torch.Tensor, weights) -> torch.Tensor:
        """One multi-channel convolution by oneDNN, channels-last:
        ``[B, T, C]`` contiguous → ``[B, T', C']``."""
        w, bias = weights
        nchw = x.transpose(1, 2).unsqueeze(2)  # [B, T, C] contiguous == NHWC [B, 1, T, C]
        y = F.conv2d(nchw, w, bias, stride=(1, layer.conv.stride[0])).squeeze(2).transpose(1, 2)
        return y if y.is_contiguous() else y.contiguous()  # oneDNN chose another layout

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        if (torch.compiler.is_compiling()  # inductor lowers the plain layers itself
                or not (self.supported() and inference_fp32_cpu(input_values, self))):
            return super().forward(input_values)
        layout = self._layout()  # weights derived again where frame_products or int8 twins change
        weights = cached(self, functools.partial(self._weights, layout), also=layout)
        as_frames, int8 = layout
        # the first layer's frames are computed where the second layer reads them, a block at
        # a time, when the second runs as products over frames: its output never exists whole
        stream_first = as_frames and len(self.conv_layers) > 1 and not int8[1]
        x, pending = input_values, None
        for i, (layer, (w, bias)) in enumerate(zip(self.conv_layers, weights)):
            k, stride = layer.conv.kernel_size[0], layer.conv.stride[0]
            if i == 0 and layer.conv.in_channels == 1:  # [B, T] → [B, T', k] frames (a view)
                linear = functools.partial(F.linear, weight=w, bias=bias)
                pending = _Rows.of(frames(x.contiguous().unsqueeze(-1), k, stride)).then(
                    functools.partial(_layer, layer, linear))
                if not stream_first:
                    x, pending = pending.compute(self.first_block_frames), None
            elif int8[i]:  # fast path int8-cnn
                x = _norm_gelu(layer, layer.int8_frames(frames(x, k, stride)))
            elif as_frames:
                source = (_Rows.of(frames(x.to(self.frames_dtype), k, stride)) if pending is None
                          else pending.framed(k, stride, self.frames_dtype))
                product = functools.partial(self._frames_product, weights=(w, bias))
                x, pending = source.then(functools.partial(_layer, layer, product)).compute(
                    self.block_frames), None
            else:
                x = _norm_gelu(layer, self._convolution(layer, x, (w, bias)))
        return x.float().transpose(1, 2)  # [B, C, T] view, as the plain encoder returns it


def _norm_gelu(layer, y: torch.Tensor) -> torch.Tensor:
    """A convolution layer's layer norm (float32 inside) and GELU (in place) over
    ``[B, T, C]`` rows."""
    norm = layer.layer_norm
    return _gelu_inplace(F.layer_norm(y, norm.normalized_shape, norm.weight, norm.bias,
                                      norm.eps))


def _layer(layer, product, rows: torch.Tensor) -> torch.Tensor:
    """One convolution layer on some of its frames: ``product`` over ``rows`` (the frames it
    reads), then the layer norm and GELU."""
    return _norm_gelu(layer, product(rows))


class _Rows:
    """``n`` frames of a layer, which ``rows(a, b)`` gives (``[B, b - a, C]``) for any range:
    all of them computed in blocks into one tensor (:meth:`compute`), or only those the next
    layer's frames read, a block at a time (:meth:`framed`), so that a layer's output need
    not exist whole. Frames are independent in every step; the blocks can change at most a
    product's rounding (the full-size encoder's output was the same bit for bit in blocks of
    333 and 1024 frames and whole, float32 and bfloat16, batches of one and two)."""

    def __init__(self, n: int, rows):
        self.n, self.rows = n, rows

    @classmethod
    def of(cls, x: torch.Tensor) -> _Rows:
        """The frames of a ``[B, n, C]`` tensor (or view)."""
        return cls(x.shape[1], lambda a, b: x[:, a:b])

    def then(self, step) -> _Rows:
        """``step`` applied to each range of these frames (frame by frame)."""
        return _Rows(self.n, lambda a, b: step(self.rows(a, b)))

    def compute(self, block: int) -> torch.Tensor:
        """All ``n`` frames, ``block`` at a time (each block's layer norm and GELU while
        its product's output is in cache), into one ``[B, n, C]`` tensor."""
        first = self.rows(0, min(block, self.n))
        if self.n <= block:
            return first
        out = first.new_empty(first.shape[0], self.n, first.shape[2])
        out[:, :block] = first
        for start in range(block, self.n, block):
            out[:, start:start + block] = self.rows(start, min(start + block, self.n))
        return out

    def framed(self, kernel: int, stride: int, dtype: torch.dtype) -> _Rows:
        """The overlapping frames a strided convolution reads of these frames (as
        :func:`frames`, in ``dtype``), each range computing only the frames it reads (one
        more than its share where ``kernel > stride``). The feature encoder's first layer
        then never writes its 39 MB output (6 s, 512 channels, float32) to be read back:
        15-23 ms less per 6 s pass on an AVX-512 EPYC (benchmarks/RESULTS.md)."""
        def rows(a: int, b: int) -> torch.Tensor:
            return frames(self.rows(stride * a, stride * (b - 1) + kernel).to(dtype),
                          kernel, stride)
        return _Rows((self.n - kernel) // stride + 1, rows)


@functools.lru_cache(maxsize=1)
def frame_products_faster() -> bool:
    """Whether this CPU runs the feature encoder's multi-channel float32 convolutions
    faster as oneDNN products over their frames than as oneDNN's convolution: where
    PyTorch dispatches AVX-512 kernels (measured on an AVX-512 AMD EPYC: the feature
    encoder 0.75× the time; benchmarks/RESULTS.md), not on AVX2 (measured slower on an AVX2
    EPYC). Decided by the instruction set, not timed at run time, so that a machine always
    computes the same numbers."""
    return onednn_available() and torch.backends.cpu.get_cpu_capability() == "AVX512"


def frame_weight(conv: torch.nn.Conv1d) -> torch.Tensor:
    """A strided convolution's weight as the ``[out, kernel * in]`` matrix that multiplies
    :func:`frames` of its input.

    >>> conv = torch.nn.Conv1d(2, 4, kernel_size=3, stride=2)
    >>> x = torch.randn(1, 9, 2)  # [B, T, C]
    >>> y = frames(x, 3, 2) @ frame_weight(conv).T + conv.bias
    >>> bool(torch.allclose(y, conv(x.transpose(1, 2)).transpose(1, 2), atol=1e-6))
    True
    """
    out_c, in_c, k = conv.weight.shape
    return conv.weight.detach().permute(0, 2, 1).reshape(out_c, k * in_c)


def frames(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """The overlapping frames a strided convolution reads, as a view: ``[B, T, C]``
    contiguous → ``[B, T', kernel * C]`` (the ``kernel`` rows of one output frame are
    ``kernel * C`` contiguous values; no copy).

    >>> x = torch.arange(12.0).reshape(1, 6, 2)
    >>> frames(x, kernel=3, stride=2).tolist()
    [[[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]]]
    """
    n_out = (x.shape[1] - kernel) // stride + 1
    c = x.shape[2]
    return x.as_strided((x.shape[0], n_out, kernel * c), (x.stride(0), stride * c, 1))


class FastPositionalConv(w2v.Wav2Vec2PositionalConvEmbedding):
    """The positional convolution with its weight norm computed once (until a
    weight changes), channels-last, in CPU float32 inference.

    Example
    -------
    >>> cfg = w2v.Wav2Vec2Config(hidden_size=32, num_conv_pos_embeddings=16,
    ...                          num_conv_pos_embedding_groups=4)
    >>> pos = w2v.Wav2Vec2PositionalConvEmbedding(cfg).eval()
    >>> h = torch.randn(2, 50, 32)
    >>> with torch.no_grad():
    ...     ref = pos(h)
    ...     _ = use_fast_cpu_modules(pos)
    ...     out = pos(h)
    >>> type(pos).__name__, bool(torch.allclose(out, ref, atol=1e-5))
    ('FastPositionalConv', True)
    """

    #: the convolution's dtype (the bf16 fast path's subclass sets bfloat16)
    conv_dtype = torch.float32

    def _supported(self) -> bool:
        return _is_exact_gelu(self.activation) and not hasattr(self.conv, "weight_g")

    def _weight(self):
        # conv.weight runs the weight-norm parametrization (or reads the old hook's result)
        w = self.conv.weight.detach().to(self.conv_dtype).unsqueeze(2)
        b = self.conv.bias
        return (w.contiguous(memory_format=torch.channels_last),
                None if b is None else b.detach().to(self.conv_dtype))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not (self._supported() and inference_fp32_cpu(hidden_states, self)):
            return super().forward(hidden_states)
        w, bias = cached(self, self._weight)
        conv = self.conv
        nchw = hidden_states.to(self.conv_dtype).contiguous().transpose(1, 2).unsqueeze(2)
        y = F.conv2d(nchw, w, bias, padding=(0, conv.padding[0]), groups=conv.groups)
        y = y.squeeze(2).transpose(1, 2)  # [B, T + pad, C]
        if self.padding.num_pad_remove > 0:
            y = y[:, : -self.padding.num_pad_remove]
        if not y.is_contiguous():
            y = y.contiguous()
        return _gelu_inplace(y).float()


class FastFeedForward(w2v.Wav2Vec2FeedForward):
    """The feed-forward block with its GELU applied in place (no fresh
    ``[batch, frames, 4096]`` tensor) in CPU float32 inference.

    Example
    -------
    >>> cfg = w2v.Wav2Vec2Config(hidden_size=16, intermediate_size=40)
    >>> ff = w2v.Wav2Vec2FeedForward(cfg).eval()
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
                and inference_fp32_cpu(x, self))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self._fusable(hidden_states):
            return super().forward(hidden_states)
        return self.output_dense(_gelu_inplace(self.intermediate_dense(hidden_states)))


def _is_exact_gelu(act) -> bool:
    """The ``"gelu"`` activation (erf form, torch's kernel)."""
    return type(act) is torch.nn.GELU and act.approximate == "none"


_SWAPS = {
    w2v.Wav2Vec2FeatureEncoder: FastFeatureEncoder,
    w2v.Wav2Vec2PositionalConvEmbedding: FastPositionalConv,
    w2v.Wav2Vec2FeedForward: FastFeedForward,
}


def use_fast_cpu_modules(module: torch.nn.Module, enabled: bool = True) -> torch.nn.Module:
    """Switch, in place, the wav2vec2 feature encoder, positional convolution and
    feed-forward blocks inside ``module`` to their CPU-inference subclasses (or, with
    ``enabled=False``, every subclass of them, the fast paths' included, back to the plain
    class of :mod:`agegender_sb.model.wav2vec2`, e.g. before ONNX export). Returns
    ``module``."""
    for sub in module.modules():
        if enabled and type(sub) in _SWAPS:
            sub.__class__ = _SWAPS[type(sub)]
        elif not enabled and type(sub).__module__.startswith("agegender_sb.backends."):
            # the speed subclasses (the fast paths' too) → the plain class
            plain = next((c for c in type(sub).__mro__ if c.__module__ == w2v.__name__), None)
            if plain is not None:
                sub.__class__ = plain
                _CACHE.pop(sub, None)
    return module


def plain_torch_modules(module: torch.nn.Module) -> torch.nn.Module:
    """Every CPU speed module of ``module`` back to the plain wav2vec2 and torch classes
    (channels-last modules and oneDNN Linear layers), in place: before ONNX export or
    ``torch.ao.quantization.quantize_dynamic``, which match exact classes."""
    use_fast_cpu_modules(module, enabled=False)
    return use_onednn_linear(module, enabled=False)
