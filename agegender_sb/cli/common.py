"""What every ``agegender`` command shares: the program name, one-line errors, argument
types that refuse bad values at parse time, and loading a model.
"""

from __future__ import annotations

import argparse
import math
import sys

__all__ = ["PROG", "error", "seconds", "count", "probability", "load_errors", "load_classifier"]

PROG = "agegender"


def seconds(minimum: float, strict: bool):
    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(
                f"expected a number of seconds {'>' if strict else '>='} {minimum}, got {text}")
        return value
    return parse


def count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
    return value



def error(command: str, message) -> None:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr, flush=True)


def load_errors():
    from agegender_sb.loading.checkpoint import CheckpointError

    return (OSError, CheckpointError, ValueError)


def load_classifier(source: str, device: str, backend: str = "torch", precision: str = "fp32",
                    onnx_path: str | None = None, trust_remote_code: bool = False,
                    fast_path: str | None = None, allow_other_onnx: bool = False,
                    pack_weights: bool = True):
    """The classifier, as ``AgeGenderClassifier.from_hparams`` loads it."""
    from agegender_sb.inference.classifier import AgeGenderClassifier

    return AgeGenderClassifier.from_hparams(
        source=source, run_opts={"device": device, "precision": precision}, backend=backend,
        onnx_path=onnx_path, trust_remote_code=trust_remote_code, fast_path=fast_path,
        allow_other_onnx=allow_other_onnx, pack_weights=pack_weights)

