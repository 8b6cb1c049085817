"""torchrun launches: rank, world size, one process group, and the few collectives we need.

Used by the ``agegender`` command and the training recipe alike. Outside torchrun
(``WORLD_SIZE`` unset or 1) every method is a cheap no-op, so callers need no branches.

Example
-------
>>> d = Distributed({})
>>> d.active, d.rank, d.world, d.any_true(True, "cpu")
(False, 0, 1, True)
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch

__all__ = ["Distributed", "DIST_TIMEOUT", "threads_per_rank", "exit_rank"]

#: How long ranks wait for each other at a collective (long runs wait at the final barrier).
DIST_TIMEOUT = timedelta(days=7)


def threads_per_rank(local_world: int, cpus: int | None = None) -> int:
    """CPU threads for one of ``local_world`` processes sharing this machine's cores.

    Example
    -------
    >>> threads_per_rank(2, cpus=16), threads_per_rank(4, cpus=2)
    (8, 1)
    """
    if cpus is None:
        cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count() or 1)
    return max(1, cpus // max(1, local_world))


class Distributed:
    """Rank and world size of a torchrun launch (world 1 when not distributed).

    Parameters
    ----------
    environ : mapping, optional
        Where ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` are read
        (default ``os.environ``).
    """

    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        self.world = int(env.get("WORLD_SIZE", "1"))
        self.rank = int(env.get("RANK", "0"))
        self.local_rank = int(env.get("LOCAL_RANK", "0"))
        self.local_world = int(env.get("LOCAL_WORLD_SIZE", str(self.world)))
        self.active = self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device: str) -> str:
        """Join the process group (gloo on CPU, nccl on CUDA); return this rank's device."""
        if not self.active:
            return device
        import torch.distributed as dist

        if device.startswith("cuda"):
            device = f"cuda:{self.local_rank}"
            torch.cuda.set_device(self.local_rank)
            backend = "nccl"
        else:
            backend = "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=DIST_TIMEOUT)
        return device

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def any_true(self, flag: bool, device: str = "cpu") -> bool:
        """Whether ``flag`` is true on any rank (every rank must call it)."""
        if not self.active:
            return bool(flag)
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def close(self) -> None:
        """Leave the process group once every rank is done (a barrier first, so that no rank
        tears its connections down while another still talks)."""
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                try:
                    dist.barrier()
                finally:
                    dist.destroy_process_group()


def exit_rank(status: int) -> None:
    """End a torchrun rank's process now, its files closed and its output flushed.

    gloo's threads can still be tearing down when the process group is destroyed or the
    interpreter finalises, which aborts the process ("terminate called without an active
    exception") and turns a complete run into a failure; once every rank has passed a final
    barrier with everything written, leaving with ``os._exit`` avoids that teardown.
    """
    import logging
    import sys

    logging.shutdown()  # flush and close log files (SpeechBrain's log.txt among them)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
