"""Corpus throughput on the CPU: one file at a time against length-sorted batches.

What ``agegender predict --batch-size N`` runs
(:class:`agegender_sb.inference.analysis.Analyzer`, no voice activity detection, each file
analysed whole): for each batch size the same files go through the same classifier, in
interleaved rounds (the batch sizes' order rotates from round to round), and each pass over
the corpus is timed by the wall clock and by the process's CPU time (with one thread the
time it ran; on a shared machine the wall clock also counts the time other processes held
the core). Throughput is audio seconds per second; the speed-up is the median of the per-
round ratios to batch size 1. Every batch size's predictions are compared with batch size
1's (largest absolute difference of the age output ``age_raw``, the head's value before the
x100 to years, of the gender probabilities and of the embedding: batching pads, and the
model masks the padding, so they should agree to float rounding).

Files: ``--files`` of speechocean762's WAVE folder spread over its length range (real
speech, 2-20 s), else generated 2-12 s signals. Model: the full-size 24-layer checkpoint
with random weights (as ``benchmarks/speed.py`` builds it) unless ``--checkpoint``.

Usage::

python benchmarks/batch_throughput.py --files 24 --batch-sizes 1 4 8 --rounds 3"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

FIELDS = ("age_raw", "gender_probs", "embedding")


def corpus(n: int, workdir: Path) -> list[Path]:
    from paths import SPEECHOCEAN

    wave = SPEECHOCEAN / "WAVE"
    if wave.is_dir():
        import soundfile as sf

        files = sorted(wave.rglob("*.WAV"), key=lambda p: sf.info(p).frames)
        step = max(1, len(files) // n)
        return files[::step][:n]
    import soundfile as sf

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        m = int(16000 * (2 + 10 * rng.random()))
        x = 0.1 * rng.standard_normal(m) * np.sin(np.linspace(0, 30, m)) ** 2
        out.append(workdir / f"gen{i:03d}.wav")
        sf.write(out[-1], x.astype(np.float32), 16000)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="audEERING-layout folder (default: random 24-layer)")
    parser.add_argument("--workdir")
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    if args.batch_sizes[0] != 1:
        args.batch_sizes.insert(0, 1)

    import platform

    import torch
    from speed import build_checkpoint

    from agegender_sb import AgeGenderClassifier
    from agegender_sb.audio import load_audio
    from agegender_sb.inference.analysis import Analyzer

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="agegender-batch-"))
    if args.checkpoint is None:
        args.checkpoint = str(build_checkpoint(workdir / "random-24", 24))
    files = corpus(args.files, workdir)
    durations = [load_audio(f).shape[-1] / 16000 for f in files]
    seconds = sum(durations)
    clf = AgeGenderClassifier.from_hparams(source=args.checkpoint)
    analyzers = {b: Analyzer(clf, batch_size=b, detector=None) for b in args.batch_sizes}
    with torch.inference_mode():
        next(analyzers[1].analyse_many(files[:1]))  # warm-up
    walls = {b: [] for b in args.batch_sizes}
    cpus = {b: [] for b in args.batch_sizes}
    preds: dict = {}
    for r in range(args.rounds):
        k = r % len(args.batch_sizes)
        for b in args.batch_sizes[k:] + args.batch_sizes[:k]:
            w0, c0 = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                results = [res for _, res in analyzers[b].analyse_many(files)]
            walls[b].append(time.perf_counter() - w0)
            cpus[b].append(time.process_time() - c0)
            bad = [res for res in results if not hasattr(res, "prediction")]
            if bad:
                raise SystemExit(f"batch size {b}: {bad[0]}")
            preds[b] = results
    diffs = {}
    for b in args.batch_sizes:
        diffs[b] = {f: max(float((getattr(x.prediction, f) - getattr(y.prediction, f))
                                 .abs().max()) for x, y in zip(preds[b], preds[1], strict=True))
                    for f in FIELDS}
    cpu_name = next((line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.processor())
    lines = [f"{len(files)} files, {seconds:.1f} s of audio ({min(durations):.1f}-"
             f"{max(durations):.1f} s each), checkpoint "
             f"{Path(args.checkpoint).name}, {args.threads} thread(s), {cpu_name}; "
             f"{args.rounds} interleaved rounds. Speed-up: median of the per-round ratios to "
             "batch size 1 [min-max].", "",
             "| batch size | audio s / wall s | speed-up (wall) | audio s / CPU s | "
             "speed-up (CPU time) | max abs diff from batch size 1 (age output / gender prob. / "
             "embedding) |", "| ---: | ---: | ---: | ---: | ---: | --- |"]
    for b in args.batch_sizes:
        cells = []
        for times in (walls, cpus):
            ratio = [t1 / tb for t1, tb in zip(times[1], times[b], strict=True)]
            cells += [f"{seconds / float(np.median(times[b])):.2f}",
                      f"{np.median(ratio):.2f}× [{min(ratio):.2f}-{max(ratio):.2f}]"]
        cells.append(" / ".join(f"{diffs[b][f]:.1e}" for f in FIELDS))
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
