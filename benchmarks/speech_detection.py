"""Which real utterances and which made-up non-speech signals the default detector answers.

Runs every utterance of speechocean762 (train + test ``wav.scp``; ``--data DIR`` or
``$AGEGENDER_SPEECHOCEAN``) through ``SileroDetector()`` (the default, with its second look),
``SileroDetector(fallback=False)`` (Silero alone) and the second look alone
(:class:`agegender_sb.speech.relative.RelativeLevel`), then 5 s non-speech signals through the
same. Prints the utterances each refuses and, per signal, refused or SPEECH. docs/reliability.md
holds the numbers.

    python benchmarks/speech_detection.py [--data DIR] [--negatives-only]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agegender_sb.speech.detectors import FRAME_SAMPLES, SileroDetector  # noqa: E402

DEFAULT_DATA = os.environ.get(
    "AGEGENDER_SPEECHOCEAN",
    Path(__file__).resolve().parents[2] / "shared" / "data" / "speechocean762")


def relative_alone(wav: torch.Tensor) -> bool:
    """Whether the second look alone finds speech (the detector's own post-processing)."""

    class Alone(SileroDetector):  # Silero's scores replaced by zeros: only the second look
        def _reset(self):
            pass

        def _score(self, frames):
            return np.zeros(len(frames), dtype=np.float32)

    return bool(Alone()(wav))


def negatives(seconds: float = 5.0) -> dict:
    n = round(seconds * 16000)
    rng = np.random.default_rng(0)
    t = np.arange(n) / 16000
    on = (np.arange(n) // 8000) % 2 == 1
    hiss = rng.standard_normal(n) * 1e-3
    brown = np.cumsum(rng.standard_normal(n))
    brown -= np.convolve(brown, np.ones(801) / 801, "same")
    brown *= 0.1 / brown.std()
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    return {
        "digital silence": np.zeros(n), "DC 0.3": np.full(n, 0.3),
        "hiss -60 dBFS": hiss, "DC + hiss": 0.3 + hiss,
        "white noise -20 dBFS": rng.standard_normal(n) * 0.1,
        "white noise -6 dBFS": rng.standard_normal(n) * 0.5,
        "brown noise -20 dBFS": brown, "hum 50 Hz": 0.3 * np.sin(2 * np.pi * 50 * t),
        "tone 440 Hz": tone,
        "white-noise bursts (0.5 s on/off)": np.where(on, rng.standard_normal(n) * 0.1,
                                                      rng.standard_normal(n) * 1e-4),
        "clicks over hiss": np.where(np.arange(n) % 4000 == 0, 0.9, hiss),
        "tone bursts over silence": np.where(on, tone, 0.0),
        "tone bursts over hiss": np.where(on, tone, hiss),
        "brown-noise bursts": np.where(on, brown, brown * 1e-3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--negatives-only", action="store_true")
    args = parser.parse_args()
    default, alone = SileroDetector(), SileroDetector(fallback=False)
    assert FRAME_SAMPLES == 512
    if not args.negatives_only:
        root = Path(args.data)
        files = [root / line.split()[1] for part in ("train", "test")
                 for line in (root / part / "wav.scp").read_text().splitlines()]
        refused = {"default": [], "silero alone": [], "second look alone": []}
        start = time.perf_counter()
        for path in files:
            wav, rate = sf.read(str(path), dtype="float32")
            assert rate == 16000, path
            wav = torch.from_numpy(wav)
            for name, found in (("default", default(wav)), ("silero alone", alone(wav)),
                                ("second look alone", relative_alone(wav))):
                if not found:
                    refused[name].append(str(path.relative_to(root)))
        print(f"{len(files)} utterances ({time.perf_counter() - start:.0f} s)")
        for name, paths in refused.items():
            print(f"  no speech, {name}: {len(paths)} {paths}")
    for name, x in negatives().items():
        wav = torch.from_numpy(x.astype(np.float32))
        verdict = ["refused" if not d(wav) else "SPEECH" for d in (default, alone)]
        verdict.append("refused" if not relative_alone(wav) else "SPEECH")
        print(f"{name:34s} default {verdict[0]:8s} silero alone {verdict[1]:8s} "
              f"second look alone {verdict[2]}")


if __name__ == "__main__":
    main()
