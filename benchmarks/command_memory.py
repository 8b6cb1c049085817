"""Peak memory (RSS) of the ``agegender predict`` command itself, torch backend against ONNX.

Each run is the real command (``python -m agegender_sb predict FILES --source CKPT ...``) in a
fresh process started by this small, torch-free driver; its peak RSS is the child's own
``ru_maxrss`` as ``os.wait4`` returns it (the kernel's high-water mark of that process, from
start to exit: model loading, ONNX Runtime's session creation and the analysis included, no
sampling gaps). The backends alternate, ``--rounds`` times, on the same files, and the two
tables are compared value by value (largest absolute difference of every numeric column).

Steps: a 24-layer checkpoint with random weights in audEERING's layout (built once in
``--workdir``, as ``benchmarks/speed.py`` builds it), its ONNX export through the command
(``agegender export-onnx``, once), ``--files`` of speechocean762's WAVE folder (real speech,
so that the default voice activity detection finds some), else generated 16 kHz files of
3-8 s (then pass ``--extra --vad none``). The tables are compared at the precision they are
written with (4 significant digits).

Usage::

    python benchmarks/command_memory.py --workdir /tmp/agegender-cmd-mem --rounds 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(root: Path = ROOT) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}


def run_measured(cmd: list[str], root: Path = ROOT) -> tuple[float, float]:
    """Run ``cmd`` with the package at ``root``; return (its peak RSS in MB, wall seconds).
    Raises on a non-zero exit."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        # cwd outside any source tree: `python -m` puts the cwd first on sys.path
        proc = subprocess.Popen(cmd, env=_env(root), cwd=tempfile.gettempdir(),
                                stdout=subprocess.DEVNULL, stderr=err)
        # wait4 reaps the child and gives its own rusage (not the sum over all children)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-3000:]
            raise SystemExit(f"{' '.join(cmd)}\nfailed (exit {proc.returncode}):\n{tail}")
    return usage.ru_maxrss / 1024, wall


def prepare(workdir: Path, n_files: int) -> tuple[Path, Path, list[Path]]:
    checkpoint = workdir / "random-24"
    code = ("import sys; sys.path[:0] = [sys.argv[1] + '/benchmarks', sys.argv[1] + '/tests'];"
            "from pathlib import Path; from speed import build_checkpoint;"
            "build_checkpoint(Path(sys.argv[2]), 24)")
    subprocess.run([sys.executable, "-c", code, str(ROOT), str(checkpoint)], check=True,
                   env=_env())
    onnx = workdir / "m.onnx"
    if not onnx.is_file():
        subprocess.run([sys.executable, "-m", "agegender_sb", "export-onnx", str(checkpoint),
                        str(onnx)], check=True, env=_env(), stdout=subprocess.DEVNULL,
                       cwd=tempfile.gettempdir())
    sys.path.insert(0, str(ROOT / "tests"))
    from paths import SPEECHOCEAN

    wave = SPEECHOCEAN / "WAVE"
    if wave.is_dir():  # real speech, so that the default voice activity detection finds some
        files = sorted(wave.rglob("*.WAV"))
        return checkpoint, onnx, files[:: max(1, len(files) // n_files)][:n_files]
    code = ("import sys, numpy as np, soundfile as sf\n"
            "rng = np.random.default_rng(0)\n"
            "for i in range(int(sys.argv[2])):\n"
            "    n = int(16000 * (3 + 5 * rng.random()))\n"
            "    x = 0.1 * rng.standard_normal(n) * np.sin(np.linspace(0, 30, n)) ** 2\n"
            "    sf.write(f'{sys.argv[1]}/cmd{i:02d}.wav', x.astype(np.float32), 16000)\n")
    audio = workdir / "audio"
    audio.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-c", code, str(audio), str(n_files)], check=True)
    return checkpoint, onnx, sorted(audio.glob("cmd*.wav"))[:n_files]


def max_abs_diff(a: Path, b: Path) -> float:
    with open(a, newline="") as fa, open(b, newline="") as fb:
        rows_a = [r for r in csv.reader(fa) if r and not r[0].startswith("#")]
        rows_b = [r for r in csv.reader(fb) if r and not r[0].startswith("#")]
    if len(rows_a) != len(rows_b):
        raise SystemExit(f"{a} and {b}: {len(rows_a)} against {len(rows_b)} rows")
    worst = 0.0
    for ra, rb in zip(rows_a[1:], rows_b[1:], strict=True):
        for x, y in zip(ra, rb, strict=True):
            try:
                worst = max(worst, abs(float(x) - float(y)))
            except ValueError:
                if x != y:
                    raise SystemExit(f"{a} and {b} differ: {x!r} against {y!r}") from None
    return worst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/agegender-cmd-mem")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="more options for both commands, e.g. --extra --vad none")
    parser.add_argument("--baseline", metavar="ROOT",
                        help="also run the ONNX backend with the package of this source tree "
                             "(e.g. a checkout of main), in the same rounds")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint, onnx, files = prepare(workdir, args.files)
    base = [sys.executable, "-m", "agegender_sb", "predict", *map(str, files), "--source",
            str(checkpoint), "--threads", str(args.threads), "--quiet", *args.extra]
    backends = {"torch": (["--backend", "torch"], ROOT),
                "onnx": (["--backend", "onnx", "--onnx-path", str(onnx)], ROOT)}
    if args.baseline:
        backends["onnx (baseline code)"] = (backends["onnx"][0], Path(args.baseline))
    results: dict = {name: {"peak_rss_mb": [], "wall_s": []} for name in backends}
    for r in range(args.rounds):
        order = list(backends) if r % 2 == 0 else list(backends)[::-1]
        for name in order:
            out = workdir / (re.sub(r"\W+", "-", name).strip("-") + ".csv")
            out.unlink(missing_ok=True)
            options, root = backends[name]
            peak, wall = run_measured([*base, *options, "--output", str(out)], root)
            results[name]["peak_rss_mb"].append(round(peak))
            results[name]["wall_s"].append(round(wall, 1))
    results["onnx_minus_torch_peak_mb"] = [
        o - t for o, t in zip(results["onnx"]["peak_rss_mb"], results["torch"]["peak_rss_mb"],
                              strict=True)]
    results["max_abs_diff_tables"] = max_abs_diff(workdir / "torch.csv", workdir / "onnx.csv")
    results["files"] = len(files)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
