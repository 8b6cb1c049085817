"""Opt-in approximate CPU inference: the heavy matrix products in bfloat16 or int8.

The default path gives the model card's numbers; these give up a little of that for speed,
only where asked for (``fast_path=`` / ``--fast-path``), and say so in a table's provenance.
How far they move results, and how fast they are, is measured in docs/speed.md and
``benchmarks/RESULTS.md`` (``benchmarks/speed.py``, ``benchmarks/fast_path_fidelity.py``).

- ``"bf16"``: every matrix product of the transformer (attention projections, scaled
  dot-product attention, feed-forward) and the CNN feature encoder's and positional
  convolution's convolutions take bfloat16 inputs and weights, accumulate in float32
  (oneDNN; AMX or AVX512-BF16 where the CPU has them) and round their outputs to bfloat16.
  The residual stream, layer norms, softmax statistics, pooling and both heads stay float32.
  Weights are converted and reordered once, kept outside the module (not in ``state_dict``)
  until a weight changes.
- ``"int8"``: the transformer's Linear layers as PyTorch's dynamic int8 Linear (fbgemm: int8
  weights per output channel, activations quantised per call, int32 accumulation).
- ``"int8-cnn"``: also the feature encoder's multi-channel convolutions in int8.
- ``"auto"``: ``"bf16"`` on a CPU with bfloat16 arithmetic in hardware (:func:`native_bf16`),
  else ``"int8"`` (:func:`resolve_fast_path`).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch

from agegender_sb.backends.cpu_speed import (
    FastFeatureEncoder,
    FastFeedForward,
    FastPositionalConv,
    cached,
    frame_weight,
    inference_fp32_cpu,
    use_fast_cpu_modules,
)
from agegender_sb.backends.fast_linear import (
    OneDNNLinear,
    onednn_available,
    unpack_linear_weights,
)
from agegender_sb.model import wav2vec2 as w2v

__all__ = ["FAST_PATHS", "BF16Linear", "BF16Attention", "BF16FeedForward", "BF16FeatureEncoder",
           "BF16PositionalConv", "bf16_available", "enable_fast_path", "native_bf16",
           "resolve_fast_path"]

#: the kinds :func:`enable_fast_path` takes ("auto" resolves to one of the others)
FAST_PATHS = ("auto", "bf16", "int8", "int8-cnn")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bfloat16 matrix arithmetic in hardware (x86 AMX-BF16 or
    AVX512-BF16), read from ``/proc/cpuinfo`` (or the ``cpuinfo`` text given); ``False``
    where that cannot be read. Elsewhere oneDNN emulates bfloat16, slower than float32.

    >>> native_bf16("flags\t\t: fpu avx512f avx512_bf16 amx_tile")
    True
    >>> native_bf16("flags\t\t: fpu avx2 avx512f avx512_vnni")
    False
    """
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return bool({"amx_bf16", "avx512_bf16"} & set(flags))


def resolve_fast_path(kind: str) -> str:
    """The fast path ``kind`` stands for on this machine: ``"auto"`` becomes ``"bf16"`` where
    :func:`native_bf16` and :func:`bf16_available`, else ``"int8"``; other kinds are returned as
    they are once checked.

    >>> resolve_fast_path("int8")
    'int8'
    >>> resolve_fast_path("auto") in ("bf16", "int8")
    True
    """
    if kind not in FAST_PATHS:
        raise ValueError(f"fast path kind must be one of {FAST_PATHS}, got {kind!r}")
    if kind == "auto":
        return "bf16" if native_bf16() and bf16_available() else "int8"
    return kind


@functools.lru_cache(maxsize=1)
def bf16_available() -> bool:
    """Whether this torch build runs the bf16 path's oneDNN operators (packed bfloat16
    weights, bfloat16 products with fused GELU) on the CPU."""
    if not onednn_available():
        return False
    try:
        lin = torch.nn.Linear(4, 3)
        with torch.no_grad():
            lin.weight.fill_(0.5)
            lin.bias.zero_()
            y = _bf16_linear(torch.ones(2, 4), _pack(lin.weight, lin.bias), "gelu").float()
        return bool(torch.allclose(y, torch.nn.functional.gelu(torch.full((2, 3), 2.0)),
                                   rtol=1e-2))  # bfloat16: 8 significant bits
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _pack(weight: torch.Tensor, bias: torch.Tensor | None):
    """A Linear-shaped ``[out, in]`` weight in bfloat16, reordered into oneDNN's blocked
    layout, and its bias in bfloat16."""
    w = torch.ops.mkldnn._reorder_linear_weight(weight.detach().bfloat16())
    return w, None if bias is None else bias.detach().bfloat16()


def _bf16_linear(x: torch.Tensor, packed, post_op: str = "none") -> torch.Tensor:
    weight, bias = packed
    # algorithm "none" is the exact (erf) GELU for post_op "gelu"
    return torch.ops.mkldnn._linear_pointwise(x.bfloat16(), weight, bias, post_op, [], "none")


class BF16Linear(OneDNNLinear):
    """``nn.Linear`` computing in bfloat16 in CPU inference (float32 in and out).

    Inputs and weights are rounded to bfloat16, products accumulated in float32 by oneDNN,
    the output rounded to bfloat16 and returned as float32. Training, autocast and other
    devices take ``nn.Linear``'s float32 path.

    Example
    -------
    >>> lin = torch.nn.Linear(64, 32)
    >>> x = torch.randn(3, 5, 64)
    >>> ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
    >>> lin.__class__ = BF16Linear
    >>> with torch.no_grad():
    ...     out = lin(x)
    >>> out.dtype, bool(0 < (out - ref).abs().max() < 0.05 * ref.abs().max())
    (torch.float32, True)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast(x):
            return torch.nn.functional.linear(x, self.weight, self.bias)
        return _bf16_linear(x, cached(self, lambda: _pack(self.weight, self.bias))).float()


class BF16Attention(w2v.Wav2Vec2Attention):
    """wav2vec2 self-attention in bfloat16 in CPU inference: the query, key and value
    projections as one product (their weights stacked), scaled dot-product attention on
    bfloat16, the output projection in bfloat16, the result returned as float32. Training and
    other devices take the plain path.

    Example
    -------
    >>> att = w2v.Wav2Vec2Attention(32, 4).eval()
    >>> h = torch.randn(2, 9, 32)
    >>> with torch.no_grad():
    ...     ref = att(h)
    ...     att.__class__ = BF16Attention
    ...     out = att(h)
    >>> out.dtype, bool(0 < (out - ref).abs().max() < 0.05 * ref.abs().max())
    (torch.float32, True)
    """

    def _pack_all(self):
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([p.weight for p in projections])
        bias = (None if any(p.bias is None for p in projections)
                else torch.cat([p.bias for p in projections]))
        return _pack(weight, bias), _pack(self.out_proj.weight, self.out_proj.bias)

    def _fast(self, hidden_states) -> bool:
        return (hidden_states.dim() == 3
                and all(type(p) in (torch.nn.Linear, OneDNNLinear, BF16Linear)
                        for p in (self.q_proj, self.k_proj, self.v_proj, self.out_proj))
                and onednn_available() and inference_fp32_cpu(hidden_states, self))

    def forward(self, hidden_states, attention_mask=None):
        if not self._fast(hidden_states):
            return super().forward(hidden_states, attention_mask)
        qkv_packed, out_packed = cached(self, self._pack_all)
        batch, n_frames, _ = hidden_states.shape
        qkv = _bf16_linear(hidden_states, qkv_packed)  # [B, T, 3 * E]
        q, k, v = qkv.view(batch, n_frames, 3, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4)  # [3, B, heads, T, head_dim] views
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=attention_mask, scale=self.scaling)  # a bool mask, if any
        out = out.transpose(1, 2).reshape(batch, n_frames, self.embed_dim)
        return _bf16_linear(out, out_packed).float()


class BF16FeedForward(FastFeedForward):
    """The wav2vec2 feed-forward block in bfloat16 in CPU inference: the first product with
    its GELU fused (computed on the float32 accumulator), the 4096-wide intermediate kept in
    bfloat16, the output returned as float32.

    Example
    -------
    >>> cfg = w2v.Wav2Vec2Config(hidden_size=16, intermediate_size=40)
    >>> ff = w2v.Wav2Vec2FeedForward(cfg).eval()
    >>> h = torch.randn(2, 7, 16)
    >>> with torch.no_grad():
    ...     ref = ff(h)
    ...     ff.__class__ = BF16FeedForward
    ...     out = ff(h)
    >>> out.dtype, bool(0 < (out - ref).abs().max() < 0.05 * ref.abs().max())
    (torch.float32, True)
    """

    def _pack_both(self):
        first, second = self.intermediate_dense, self.output_dense
        return _pack(first.weight, first.bias), _pack(second.weight, second.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not (self._fusable(hidden_states) and onednn_available()
                and isinstance(self.intermediate_dense, torch.nn.Linear)
                and isinstance(self.output_dense, torch.nn.Linear)):
            return super().forward(hidden_states)
        first, second = cached(self, self._pack_both)
        inner = _bf16_linear(hidden_states, first, "gelu")
        return _bf16_linear(inner, second).float()


class BF16FeatureEncoder(FastFeatureEncoder):
    """The channels-last feature encoder with its multi-channel convolutions in bfloat16, as
    matrix products over the overlapping frames they read (weights ``[out, kernel * in]``,
    packed once), and the activations between them in bfloat16 (layer norms compute in
    float32; the one-channel first convolution stays float32)."""

    frame_products = True
    frames_dtype = torch.bfloat16

    def _frames_weights(self, conv: torch.nn.Conv1d):
        return _pack(frame_weight(conv), conv.bias)

    def _frames_product(self, rows: torch.Tensor, weights) -> torch.Tensor:
        return _bf16_linear(rows, weights)


class BF16PositionalConv(FastPositionalConv):
    """The channels-last positional convolution in bfloat16 (output float32)."""

    conv_dtype = torch.bfloat16


def _already(model: torch.nn.Module) -> str | None:
    for m in model.modules():
        if isinstance(m, (BF16Linear, BF16Attention, BF16FeedForward, BF16FeatureEncoder,
                          BF16PositionalConv)):
            return "bf16"
        if isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            return "int8"
    return None


def enable_fast_path(model: torch.nn.Module, kind: str = "int8") -> torch.nn.Module:
    """Switch a model to an opt-in approximate CPU fast path (``kind``: see the module's
    docstring and :data:`FAST_PATHS`), in place; returns ``model`` (e.g. an
    :class:`~agegender_sb.model.network.AgeGenderModel` or ``clf.mods.model``). Results are *not*
    the reference's. Parameters and ``state_dict`` are unchanged for ``"bf16"``; for the int8
    kinds the transformer's Linear weights become int8 modules.

    Raises
    ------
    ValueError
        An unknown ``kind``, a model without a wav2vec2 transformer encoder, one that is not
        on the CPU, or one that already has a fast path.
    RuntimeError
        A torch build without oneDNN's bfloat16 operators (``"bf16"``) or without an int8 CPU
        engine.

    Example
    -------
    >>> cfg = w2v.Wav2Vec2Config(hidden_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=37, conv_dim=[16] * 7,
    ...     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    >>> enc = w2v.Wav2Vec2Model(cfg).eval()
    >>> _ = enable_fast_path(enc, "int8")
    >>> enc.encoder.layers[0].feed_forward.intermediate_dense.__module__
    'torch.ao.nn.quantized.dynamic.modules.linear'
    >>> enc = w2v.Wav2Vec2Model(cfg).eval()
    >>> type(enable_fast_path(enc, "bf16").encoder.layers[0].attention.q_proj).__name__
    'BF16Linear'
    """
    kind = resolve_fast_path(kind)
    encoders = [m for m in model.modules() if isinstance(m, w2v.Wav2Vec2Encoder)]
    if not encoders:
        raise ValueError(f"{type(model).__name__} holds no wav2vec2 transformer encoder")
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"the fast paths run on the CPU; the model is on {devices}")
    previous = _already(model)
    if previous is not None:
        raise ValueError(f"this model already runs the {previous!r} fast path; "
                         "load it again for another")
    unpack_linear_weights(model)  # the fast paths derive their weights from the plain ones
    if kind == "bf16":
        _enable_bf16(model, encoders)
    else:
        _enable_int8(model, encoders, with_cnn=kind == "int8-cnn")
    model.eval()
    return model


def _enable_bf16(model: torch.nn.Module, encoders) -> None:
    if not bf16_available():
        raise RuntimeError("this torch build cannot run the bf16 fast path (it needs oneDNN's "
                           "bfloat16 Linear operators); fast_path='int8' runs here")
    if not native_bf16():
        warnings.warn("this CPU has no bfloat16 arithmetic in hardware (AMX-BF16 or "
                      "AVX512-BF16): the bf16 fast path is emulated and slower than float32 "
                      "here; fast_path='int8' (or 'auto') is the faster choice",
                      RuntimeWarning, stacklevel=3)
    use_fast_cpu_modules(model)
    swaps = {FastPositionalConv: BF16PositionalConv, FastFeedForward: BF16FeedForward,
             w2v.Wav2Vec2Attention: BF16Attention, torch.nn.Linear: BF16Linear,
             OneDNNLinear: BF16Linear}
    for fe in model.modules():  # the CNN sits outside the transformer encoder
        if type(fe) is FastFeatureEncoder:
            fe.__class__ = BF16FeatureEncoder
    for encoder in encoders:
        for sub in encoder.modules():
            if type(sub) in swaps:
                sub.__class__ = swaps[type(sub)]


def _enable_int8(model: torch.nn.Module, encoders, with_cnn: bool) -> None:
    if torch.backends.quantized.engine in (None, "none"):
        raise RuntimeError("this torch build has no int8 CPU engine "
                           f"(engines: {torch.backends.quantized.supported_engines})")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    for encoder in encoders:
        for sub in encoder.modules():  # quantize_dynamic matches the exact class
            if type(sub) is OneDNNLinear:
                sub.__class__ = torch.nn.Linear
        with warnings.catch_warnings():  # torch.ao's deprecation notice (torchao migration)
            warnings.simplefilter("ignore")
            quantize_dynamic(encoder, {torch.nn.Linear: per_channel_dynamic_qconfig},
                             dtype=torch.qint8, inplace=True)
    if with_cnn:
        for fe in model.modules():
            if isinstance(fe, FastFeatureEncoder) and fe.supported():
                _quantize_cnn(fe)


def _quantize_cnn(encoder: FastFeatureEncoder) -> None:
    """Give the feature encoder's multi-channel convolutions an int8 twin: a dynamic int8
    Linear over frames of ``kernel * channels`` values (weights reordered to match)."""
    from torch.ao.nn.quantized.dynamic import Linear as QLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    for layer in encoder.conv_layers:
        conv = layer.conv
        if conv.in_channels == 1:
            continue  # the first convolution: tiny, memory-bound
        weight = frame_weight(conv)
        lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=conv.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(weight)
            if conv.bias is not None:
                lin.bias.copy_(conv.bias)
        lin.qconfig = per_channel_dynamic_qconfig
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # kept out of the module tree (and so out of state_dict and .to())
            layer.__dict__["int8_frames"] = QLinear.from_float(lin)
