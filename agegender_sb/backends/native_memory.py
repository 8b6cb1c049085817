"""glibc's malloc, told to keep large blocks out of its heap (Linux).

glibc serves blocks above ``M_MMAP_THRESHOLD`` (128 KiB at start) with their own ``mmap``, and
returns them to the system on ``free``. But the threshold is *dynamic*: each time such a
block is freed, it rises to that block's size (up to 32 MiB). After the ONNX backend frees the
torch weights (4-16 MiB blocks each), ONNX Runtime's weight-sized allocations while it opens the
graph therefore land in the heap, where freed blocks below live ones cannot be returned: the
full-size model's session then holds about 0.8 GB more than in a fresh process (measured,
``benchmarks/command_memory.py``). Setting the threshold explicitly turns the adjustment off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["pin_mmap_threshold"]

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def pin_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """Fix glibc's ``M_MMAP_THRESHOLD`` at ``nbytes`` for this process (blocks of that size
    and above get their own mapping, returned to the system when freed); False where the C
    library is not glibc or refuses.

    >>> pin_mmap_threshold() in (True, False)
    True
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
    except (OSError, AttributeError):
        return False
