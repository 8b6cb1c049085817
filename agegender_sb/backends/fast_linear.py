"""oneDNN matrix products for the encoder's Linear layers in CPU inference.

PyTorch computes ``nn.Linear`` on the CPU with its BLAS (MKL in the PyPI wheels), which on some
processors — AMD EPYC with AVX-512, for one — runs its AVX2 code path. oneDNN, which PyTorch
also ships, picks its kernels by instruction set, not by vendor (the measured difference is in
docs/speed.md). :func:`use_onednn_linear` switches a module's Linear
layers to oneDNN for inference only; training, autocast, other devices and builds without
oneDNN take PyTorch's usual path, and parameters and ``state_dict`` keys are unchanged.

Given a plain weight, oneDNN reorders it into its blocked layout on every call: 1.2 GB of
copying per pass of the 24-layer model, 4.5 % of the Linear layers' time on an AVX2 EPYC
(benchmarks/RESULTS.md).
:func:`pack_linear_weights` does that reorder once, in place of the plain weight rather than
beside it (one copy of the model): for frozen CPU float32 weights, the inference classifier's.
The packed weight gives the same products bit for bit, and is unpacked exactly (a reorder is a
permutation) wherever anything else needs it: ``state_dict`` and pickling see plain tensors,
loading, ``.to()``/``.double()`` and any call off the inference path unpack first, and
:func:`use_onednn_linear` (``enabled=False``) unpacks before switching classes back.
"""

from __future__ import annotations

import contextlib
import functools

import torch

__all__ = ["OneDNNLinear", "onednn_available", "pack_linear_weights", "unpack_linear_weights",
           "use_onednn_linear"]


@functools.lru_cache(maxsize=1)
def onednn_available() -> bool:
    """Whether this torch build can run ``mkldnn._linear_pointwise`` on the CPU."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x, w, b = torch.ones(2, 3), torch.ones(4, 3), torch.zeros(4)
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        return bool(torch.allclose(y, torch.full((2, 4), 3.0)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class OneDNNLinear(torch.nn.Linear):
    """``nn.Linear`` that runs inference on the CPU through oneDNN.

    The fast path is taken for float32 CPU tensors when no gradient is needed, autocast is
    off and ``torch.compile`` is not tracing (inductor lowers ``F.linear`` itself); everything
    else goes through ``nn.Linear.forward``.

    Example
    -------
    >>> lin = use_onednn_linear(torch.nn.Sequential(torch.nn.Linear(8, 4)))[0]
    >>> x = torch.randn(2, 5, 8)
    >>> with torch.no_grad():
    ...     bool(torch.allclose(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias),
    ...                         atol=1e-6))
    True
    """

    def _fast(self, x: torch.Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            and not torch.compiler.is_compiling()  # inductor cannot lower this operator
            and onednn_available()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fast(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        self.unpack()  # a packed weight serves only the oneDNN inference path
        return super().forward(x)

    @property
    def packed(self) -> bool:
        """Whether the weight is held in oneDNN's blocked layout (see :meth:`pack`)."""
        return self.weight.is_mkldnn

    def pack(self) -> bool:
        """Hold the weight in oneDNN's blocked layout instead of the plain one (same
        ``Parameter`` object, no second copy), so that inference skips the per-call reorder.

        Only a frozen (``requires_grad=False``) CPU float32 weight is packed, where oneDNN
        runs, and not one autograd has used (``torch.utils.swap_tensors`` refuses those);
        returns whether the weight is packed now. Once unpacked (by ``.double()``, training,
        ...) a weight stays plain until packed again.

        >>> lin = use_onednn_linear(torch.nn.Sequential(torch.nn.Linear(8, 4)))[0]
        >>> plain = lin.weight.detach().clone()
        >>> _ = lin.requires_grad_(False)
        >>> lin.pack() == onednn_available(), torch.equal(lin.state_dict()["weight"], plain)
        (True, True)
        >>> lin.unpack(); lin.packed, torch.equal(lin.weight, plain)
        (False, True)
        """
        w = self.weight
        if w.is_mkldnn:
            return True
        if (w.device.type != "cpu" or w.dtype != torch.float32 or w.requires_grad
                or not onednn_available()):
            return False
        try:
            _swap(w, torch.ops.mkldnn._reorder_linear_weight(w.detach()))
        except RuntimeError:  # swap_tensors refuses a weight autograd has seen: stays plain
            return False
        return True

    def unpack(self) -> None:
        """Back to the plain weight (exact: the reorder is a permutation), in place."""
        if self.weight.is_mkldnn:
            _swap(self.weight, self.weight.detach().to_dense())

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.packed:  # a plain copy: checkpoints and fingerprints never see the packing
            destination[prefix + "weight"] = self.weight.detach().to_dense()

    @contextlib.contextmanager
    def _plain_weight(self):
        """The plain weight inside the block; packed again after it if it was packed before
        (:meth:`pack` declines unless it is still a frozen CPU float32 weight)."""
        packed = self.packed
        self.unpack()
        yield
        if packed:
            self.pack()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        with self._plain_weight():
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, recurse=True):  # .to(), .double(), .cuda(), ...: on the plain weight
        with self._plain_weight():
            return super()._apply(fn, recurse)

    def __getstate__(self):  # pickling and copy.deepcopy: a plain weight
        state = super().__getstate__()
        if self.packed:
            state["_parameters"] = {**state["_parameters"], "weight": torch.nn.Parameter(
                self.weight.detach().to_dense(), requires_grad=self.weight.requires_grad)}
        return state


def _swap(param: torch.nn.Parameter, tensor: torch.Tensor) -> None:
    """Give ``param`` the contents of ``tensor`` (any layout), keeping the ``Parameter``
    object: optimisers, hooks and other references still hold it."""
    torch.utils.swap_tensors(param, torch.nn.Parameter(tensor, requires_grad=param.requires_grad))


def pack_linear_weights(module: torch.nn.Module) -> int:
    """:meth:`OneDNNLinear.pack` every oneDNN Linear layer in ``module`` (not the fast paths'
    subclasses, which derive their own weights); returns how many are packed. The inference
    classifier does this for its CPU float32 model."""
    return sum(sub.pack() for sub in module.modules() if type(sub) is OneDNNLinear)


def unpack_linear_weights(module: torch.nn.Module) -> list[OneDNNLinear]:
    """:meth:`OneDNNLinear.unpack` every packed layer in ``module``; returns those layers."""
    layers = [sub for sub in module.modules() if isinstance(sub, OneDNNLinear) and sub.packed]
    for layer in layers:
        layer.unpack()
    return layers


def use_onednn_linear(module: torch.nn.Module, enabled: bool = True) -> torch.nn.Module:
    """Turn every plain ``nn.Linear`` in ``module`` into :class:`OneDNNLinear` (in place).

    With ``enabled=False``, turn them back into plain ``nn.Linear`` (before ONNX export or
    ``torch.ao.quantization.quantize_dynamic``, which match the exact class; for every CPU
    speed module at once: :func:`agegender_sb.backends.cpu_speed.plain_torch_modules`).
    """
    for sub in module.modules():
        if enabled and type(sub) is torch.nn.Linear:
            sub.__class__ = OneDNNLinear
        elif not enabled and isinstance(sub, OneDNNLinear):  # subclasses too
            sub.unpack()
            sub.__class__ = torch.nn.Linear
    return module
