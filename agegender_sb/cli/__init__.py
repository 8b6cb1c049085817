"""The ``agegender`` command: argument parsing, and writing what the package computes.

``predict`` labels files, folders, list files and speaker turns with age and gender and
writes a table (see :mod:`agegender_sb.batch.tables` and ``docs/cli.md``); ``convert``, ``info``,
``export-onnx``. Nothing heavy is imported before the arguments are parsed, so ``--help``
answers at once. Exit status: 0 when every file was analysed (a file without speech counts
as analysed), 1 when any file failed (its row has ``error`` filled), 2 for usage errors (bad
options, unreadable inputs, an output that is an input or is locked by another process, a
model that cannot be loaded, a table that cannot be resumed).

Example
-------
>>> import contextlib, io
>>> out = io.StringIO()
>>> with contextlib.redirect_stdout(out):
...     status = main(["info", getfixture("tiny_checkpoint")])
>>> status, "labels: female, male, child" in out.getvalue()
(0, True)
"""

from __future__ import annotations

import argparse
import sys

from agegender_sb.cli import calibration, models, predict, reports
from agegender_sb.cli.common import PROG

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``agegender`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Speaker age and gender from speech (audEERING wav2vec2 model).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict.add_parser(sub)
    models.add_parsers(sub)
    reports.add_parsers(sub)
    calibration.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage error (2) or --help (0)
        return int(exc.code or 0)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
