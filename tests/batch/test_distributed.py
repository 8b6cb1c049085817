"""Ending a torchrun rank: ``exit_rank`` leaves at once, with everything written."""

from __future__ import annotations

import os
import subprocess
import sys

PROGRAM = r"""
import logging, logging.handlers, sys
from agegender_sb.batch.distributed import exit_rank

# A handler that holds its records until it is flushed or closed (as buffered handlers do).
target = logging.FileHandler(sys.argv[1])
held = logging.handlers.MemoryHandler(capacity=1000, target=target, flushOnClose=True)
log = logging.getLogger("rank")
log.addHandler(held)
log.setLevel(logging.INFO)
log.info("export done")
print("rows written", end="")  # block-buffered: stdout is a pipe
sys.stderr.write("last words")
exit_rank(3)
print("never")
"""


def test_exit_rank_status_output_and_logs(tmp_path):
    log_file = tmp_path / "log.txt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run([sys.executable, "-c", PROGRAM, str(log_file)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "rows written"
    assert proc.stderr == "last words"
    assert log_file.read_text(encoding="utf-8") == "export done\n"
