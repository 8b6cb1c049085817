"""Does every real recording get an answer with default settings? Any corpus, any rate.

Runs ``agegender predict`` (default settings: Silero with its second look, whole files) over
the audio files under ``DIR`` with a random tiny model from
:func:`agegender_sb.testing.write_checkpoint` (which files are answered depends on the speech
detector, not on the weights), then counts the file rows: answered (an age and a gender),
refused as "no speech", errors (read with the package's own table reader and row kinds).
Prints every file that is not answered.

``--rate R`` first writes a copy of every file resampled to R Hz (soxr, 16-bit PCM) into a
temporary folder, ``--gain-db G`` scales that copy (clipped to [-1, 1], the clipped count
printed): the same speech at another sampling rate or level, e.g. 22050 Hz as many TTS and
acted-emotion corpora ship. ``--whisper`` makes the copy a whisper-like proxy first: each
25 ms frame's order-16 LPC envelope excited by white noise instead of the voice (no pitch, the
same formants and level; a proxy, not whispered speech), scaled to half the original peak.

    python benchmarks/answered.py DIR [--rate 22050] [--gain-db -20] [--whisper] [--source M]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agegender_sb.batch.tables import read_table, row_kind, row_status  # noqa: E402
from agegender_sb.defaults import AUDIO_EXTENSIONS  # noqa: E402
from agegender_sb.inference.results import Status  # noqa: E402
from agegender_sb.testing import write_checkpoint  # noqa: E402


def whisper(x: np.ndarray, rng: np.random.Generator, order: int = 16) -> np.ndarray:
    """``x`` (mono) with its voice replaced by noise through each frame's LPC envelope."""
    from scipy.linalg import solve_toeplitz
    from scipy.signal import lfilter

    n, hop = 400, 200
    out, window = np.zeros(len(x) + n), np.hanning(n)
    for start in range(0, len(x) - n, hop):
        frame = x[start:start + n] * window
        r = np.correlate(frame, frame, "full")[n - 1:n + order]
        if r[0] < 1e-10:
            continue
        r[0] *= 1.0001  # a little white noise: a stable, solvable system
        lpc = np.concatenate([[1.0], solve_toeplitz(r[:order], -r[1:order + 1])])
        gain = np.sqrt(np.mean(lfilter(lpc, [1.0], frame) ** 2))
        out[start:start + n] += lfilter([gain], lpc, rng.standard_normal(n)) * window
    out = out[:len(x)]
    return out * 0.5 * np.abs(x).max() / max(np.abs(out).max(), 1e-12)


def copy_corpus(files: list[Path], root: Path, out: Path, rate: int | None,
                gain_db: float, whispered: bool = False) -> int:
    """Resampled / scaled (/ whispered) copies under ``out`` (same relative paths); returns
    how many samples were clipped."""
    clipped = 0
    rng = np.random.default_rng(0)
    for f in files:
        x, sr = sf.read(str(f), dtype="float64", always_2d=True)
        if whispered:
            x = whisper(x.mean(axis=1), rng)[:, None]
        if rate and rate != sr:
            x = soxr.resample(x, sr, rate)
        x = x * 10 ** (gain_db / 20)
        clipped += int((np.abs(x) > 1).sum())
        target = out / f.relative_to(root).with_suffix(".wav")
        target.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(target), np.clip(x, -1, 1), rate or sr, subtype="PCM_16")
    return clipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a folder of audio files (searched recursively)")
    parser.add_argument("--rate", type=int, help="resample copies to this rate first")
    parser.add_argument("--gain-db", type=float, default=0.0, help="scale the copies")
    parser.add_argument("--whisper", action="store_true", help="whisper-like copies")
    parser.add_argument("--source", help="a model (default: a random tiny one)")
    args = parser.parse_args()
    root = Path(args.data)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = args.source or str(write_checkpoint(tmp / "model", size="tiny"))
        corpus = root
        if args.rate or args.gain_db or args.whisper:
            corpus = tmp / "corpus"
            clipped = copy_corpus(files, root, corpus, args.rate, args.gain_db, args.whisper)
            print(f"{'whispered ' * args.whisper}copies at {args.rate or 'the original'} Hz, "
                  f"{args.gain_db:+.1f} dB ({clipped} samples clipped)")
        table = tmp / "out.csv"
        subprocess.run([sys.executable, "-m", "agegender_sb", "predict", str(corpus),
                        "--source", source, "-o", str(table), "--quiet"], check=False)
        with table.open(newline="") as f:
            header = next(csv.reader(f))
        labels = header[header.index("age") + 1:header.index("gender")]  # the model's
        rows = [r for r in read_table(table, labels) if row_kind(r) == "file"]
    status = [row_status(r) for r in rows]
    print(f"{len(files)} files, {len(rows)} file rows: {status.count(Status.OK)} answered, "
          f"{status.count(Status.NO_SPEECH)} refused as no speech, "
          f"{len(rows) - status.count(Status.OK) - status.count(Status.NO_SPEECH)} errors")
    for r, s in zip(rows, status):
        if s is not Status.OK:
            print(f"  {r['path']}: {r['error']}")


if __name__ == "__main__":
    main()
