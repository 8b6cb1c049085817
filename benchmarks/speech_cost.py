"""Cost of the speech detectors (agegender_sb.speech.detectors) on an hour of streamed audio.

Builds a ``--minutes`` (default 60) 16 kHz signal by concatenating speechocean762 utterances
(the subset beside the checkout, or ``--corpus``) with gaps of digital silence drawn
uniformly from ``--gap`` seconds, or reads ``--audio FILE`` (16 kHz; channels averaged), and
streams it block by block (``--block-seconds``) through each detector, each in its own
subprocess so its peak RSS is its own. The signal is made or read while streaming, never held
whole, so memory stays bounded whatever the length.

For each detector it prints one markdown table line: audio and speech found (minutes), the
detector's wall time (making/reading the blocks is timed apart and left out), seconds per
audio hour, times faster than real time, peak RSS and the RSS after loading the detector and
before streaming (the difference is what streaming costs).

Usage::

    python benchmarks/speech_cost.py                          # 60 min, silero + energy
    python benchmarks/speech_cost.py --detectors silero silero-onnx energy --minutes 10
    python benchmarks/speech_cost.py --audio meeting.wav
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

RATE = 16000
DETECTORS = {
    "silero": ("silero", {}),
    "silero-onnx": ("silero", {"backend": "onnx"}),
    "energy": ("energy", {}),
}


def corpus_paths(corpus: Path) -> list[Path]:
    """Wave paths of a Kaldi-style corpus (``train``/``test`` ``wav.scp``, relative paths)."""
    paths = []
    for split in ("train", "test"):
        scp = corpus / split / "wav.scp"
        if scp.is_file():
            for line in scp.read_text().splitlines():
                if line.strip():
                    path = Path(line.split(maxsplit=1)[1])
                    paths.append(path if path.is_absolute() else corpus / path)
    if not paths:
        raise SystemExit(f"{corpus}: no train/wav.scp or test/wav.scp")
    return paths


def made_up_pieces(corpus: Path, seconds: float, gap: tuple[float, float], seed: int):
    """Utterance, silence, utterance, ... (float32 arrays) until ``seconds`` of signal."""
    rng = np.random.default_rng(seed)
    paths = corpus_paths(corpus)
    left = round(seconds * RATE)
    index = 0
    while left > 0:
        wav, rate = sf.read(str(paths[index % len(paths)]), dtype="float32")
        if rate != RATE:
            raise SystemExit(f"{paths[index % len(paths)]}: {rate} Hz, need {RATE}")
        index += 1
        for piece in (wav, np.zeros(round(rng.uniform(*gap) * RATE), np.float32)):
            piece = piece[:left]
            left -= len(piece)
            yield piece


def file_pieces(path: Path, block: int):
    """Blocks of a 16 kHz file, channels averaged."""
    info = sf.info(str(path))
    if info.samplerate != RATE:
        raise SystemExit(f"{path}: {info.samplerate} Hz; this benchmark takes {RATE} Hz audio")
    for data in sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True):
        yield data.mean(axis=1)


def blocks_of(pieces, block: int, clock: list[float]):
    """Torch blocks of ``block`` samples (the last shorter); time spent making them -> clock."""
    import torch

    buffer, size = [], 0
    start = time.perf_counter()
    for piece in pieces:
        buffer.append(piece)
        size += len(piece)
        while size >= block:
            joined = np.concatenate(buffer)
            out, rest = joined[:block], joined[block:]
            buffer, size = [rest], len(rest)
            clock[0] += time.perf_counter() - start
            yield torch.from_numpy(out)
            start = time.perf_counter()
    if size:
        clock[0] += time.perf_counter() - start
        yield torch.from_numpy(np.concatenate(buffer))


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(args) -> dict:
    import torch

    from agegender_sb.speech.detectors import make_detector, speech_seconds

    name, options = DETECTORS[args.one]
    detector = make_detector(name, **options)
    detector(torch.zeros(RATE))  # load the model and warm it up before measuring
    before = rss_mb()
    block = round(args.block_seconds * RATE)
    if args.audio:
        pieces = file_pieces(Path(args.audio), block)
    else:
        pieces = made_up_pieces(Path(args.corpus), args.minutes * 60, args.gap, args.seed)
    clock = [0.0]
    total = [0]

    def counted():
        for b in blocks_of(pieces, block, clock):
            total[0] += len(b)
            yield b

    start = time.perf_counter()
    spans = detector.detect(counted())
    wall = time.perf_counter() - start - clock[0]
    return {
        "detector": args.one,
        "audio_s": total[0] / RATE,
        "speech_s": speech_seconds(spans),
        "spans": len(spans),
        "wall_s": wall,
        "making_s": clock[0],
        "rss_before_mb": before,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv=None):
    from paths import SPEECHOCEAN

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", help="a 16 kHz file instead of the made-up hour")
    parser.add_argument("--corpus", default=str(SPEECHOCEAN), help="speechocean762 folder")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--gap", type=float, nargs=2, default=(0.5, 4.0), metavar=("MIN", "MAX"))
    parser.add_argument("--block-seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--detectors", nargs="+", choices=sorted(DETECTORS), default=["silero", "energy"]
    )
    parser.add_argument("--one", choices=sorted(DETECTORS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(run_one(args)))
        return

    source = args.audio or f"{args.minutes:g} min of speechocean762 + {args.gap} s gaps"
    print(
        f"<!-- {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"{source}; blocks of {args.block_seconds:g} s -->"
    )
    print(
        "| detector | audio (min) | speech found (min) | spans | wall (s) | s per audio hour "
        "| x real time | peak RSS (MB) | RSS before streaming (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.detectors:
        command = [sys.executable, __file__, "--one", name] + [
            a for a in (argv if argv is not None else sys.argv[1:])
        ]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode:
            print(f"| {name} | failed: {out.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        hours = r["audio_s"] / 3600
        print(
            f"| {name} | {r['audio_s'] / 60:.1f} | {r['speech_s'] / 60:.1f} | {r['spans']} "
            f"| {r['wall_s']:.1f} | {r['wall_s'] / hours:.1f} | {r['audio_s'] / r['wall_s']:.0f} "
            f"| {r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
