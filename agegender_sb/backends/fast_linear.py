"""oneDNN matrix products for the encoder's Linear layers in CPU inference.

PyTorch computes ``nn.Linear`` on the CPU with its BLAS (MKL in the PyPI wheels), which on some
processors — AMD EPYC with AVX-512, for one — runs its AVX2 code path. oneDNN, which PyTorch
also ships, picks its kernels by instruction set, not by vendor (the measured difference is in
docs/speed.md). :func:`use_onednn_linear` switches a module's Linear
layers to oneDNN for inference only; training, autocast, other devices and builds without
oneDNN take PyTorch's usual path, and parameters and ``state_dict`` keys are unchanged.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["OneDNNLinear", "onednn_available", "use_onednn_linear"]


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

    The fast path is taken for float32 CPU tensors when no gradient is needed and autocast is
    off; everything else goes through ``nn.Linear.forward``.

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
            and onednn_available()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fast(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)


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
            sub.__class__ = torch.nn.Linear
    return module
