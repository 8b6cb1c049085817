"""How long ``agegender predict one.wav`` takes with a tiny model, against the imports it needs.

Interleaved, in fresh processes, ``--rounds`` times (a busy neighbour slows all alike):

- ``imports``: ``python -c "import torch, torchaudio, speechbrain, transformers"``;
- ``imports + Wav2Vec2Model``: the same, then ``from transformers import Wav2Vec2Model``
  (transformers imports a model's code lazily; the package's encoder,
  ``agegender_sb.model.wav2vec2``, no longer imports it: shown for comparison);
- ``predict``: ``python -m agegender_sb predict ONE.wav --source TINY -o OUT.csv`` with a
  checkpoint from :func:`agegender_sb.testing.write_checkpoint` (``--size``), or with the
  model folder ``--source`` names (e.g. the full-size one: loading then dominates).

Prints each round and the medians; the issue's target: predict within 1.5 s of ``imports``.

    python benchmarks/startup.py [--rounds 5] [--audio FILE] [--size tiny] [--source DIR]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agegender_sb.testing import write_checkpoint  # noqa: E402

SPEECH = ROOT.parent / "shared/data/speechocean762/WAVE/SPEAKER0001/000010011.WAV"
IMPORTS = "import torch, torchaudio, speechbrain, transformers"


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--audio", default=str(SPEECH) if SPEECH.is_file() else None,
                        help="a speech file (default: a speechocean762 utterance where present, "
                        "else 3 s of a made-up sound, analysed with --vad none: the speech "
                        "detector rightly finds no speech in it)")
    parser.add_argument("--size", default="tiny", choices=("tiny", "small"))
    parser.add_argument("--source", help="a model folder to load instead of a --size one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = args.source or write_checkpoint(tmp / "model", size=args.size)
        audio, extra = args.audio, []
        if not audio:
            t = np.arange(48000) / 16000
            voice = 0.3 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 3 * t))
            sf.write(str(tmp / "one.wav"), voice.astype(np.float32), 16000)
            audio, extra = str(tmp / "one.wav"), ["--vad", "none"]
        commands = {
            "imports": [sys.executable, "-c", IMPORTS],
            "imports + Wav2Vec2Model": [
                sys.executable, "-c", IMPORTS + "; from transformers import Wav2Vec2Model"],
            "predict": [sys.executable, "-m", "agegender_sb", "predict", audio, "--source",
                        str(source), "-o", str(tmp / "out.csv"), "--quiet", *extra],
        }
        times = {name: [] for name in commands}
        for round_ in range(args.rounds):
            for name in list(commands)[round_ % 3:] + list(commands)[: round_ % 3]:
                times[name].append(timed(commands[name]))
            print(f"round {round_ + 1}: " + ", ".join(
                f"{name} {values[-1]:.2f} s" for name, values in times.items()))
        print((tmp / "out.csv").read_text().strip())
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, value in median.items():
        print(f"median {name}: {value:.2f} s")
    gaps = [p - i for p, i in zip(times["predict"], times["imports"])]
    print(f"predict - imports: median {statistics.median(gaps):.2f} s "
          f"[{min(gaps):.2f}-{max(gaps):.2f}] (target: within 1.5 s)")


if __name__ == "__main__":
    main()
