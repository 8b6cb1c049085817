"""Peak memory (RSS) and time of the full-size ONNX export, each step in its own subprocess.

Steps, each a fresh Python process started by this (small, torch-free) driver, so that one
step's peak cannot leak into another's (Linux keeps a process's peak RSS across ``exec``):

1. ``build``: a 24-layer checkpoint with random weights in audEERING's layout (once, cached in
   ``--workdir``; the export's memory does not depend on the weight values);
2. ``load``: ``AgeGenderClassifier.from_hparams`` alone (the floor the export adds to);
3. ``export-<exporter>``: load + :func:`agegender_sb.export.onnx.export_onnx` with the
   ``dynamo`` and/or ``torchscript`` exporter. The peak RSS is the process's
   ``getrusage(RUSAGE_SELF).ru_maxrss`` read right after the export returns (what the driver's
   ``RUSAGE_CHILDREN`` would report for that child alone). With ``--compare`` the step then
   runs the exported file with ONNX Runtime against the torch model on a few signals and
   reports the largest absolute differences (after the peak is read, so it does not count);
4. ``run-torch`` / ``run-onnx`` (``--backends``): the torch model, or
   :class:`agegender_sb.backends.onnx_runtime.OnnxModel` alone (no torch model), on 4 s of audio:
   peak RSS and the RSS held afterwards.

Usage::

    python benchmarks/onnx_export_memory.py                          # both exporters, 24 layers
    python benchmarks/onnx_export_memory.py --exporters dynamo --compare
    python benchmarks/onnx_export_memory.py --layers 6 --workdir /tmp/onnx-mem-6
    python benchmarks/onnx_export_memory.py --exporters dynamo --backends torch onnx
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- worker side
def build(args) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "tests"))
    from speed import build_checkpoint

    build_checkpoint(Path(args.checkpoint), args.layers)


def load(args) -> dict:
    from agegender_sb import AgeGenderClassifier

    start = time.perf_counter()
    AgeGenderClassifier.from_hparams(source=args.checkpoint, pack_weights=False)  # as export-onnx
    return {"load_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def export(args, exporter: str) -> dict:
    import numpy as np
    import torch

    from agegender_sb import AgeGenderClassifier
    from agegender_sb.export.onnx import export_onnx

    torch.set_num_threads(args.threads)
    clf = AgeGenderClassifier.from_hparams(source=args.checkpoint, pack_weights=False)
    after_load = peak_rss_mb()
    out = Path(args.workdir) / f"model-{exporter}.onnx"
    start = time.perf_counter()
    export_onnx(clf.mods.model, out, clf.labels, dynamo=exporter == "dynamo")
    result = {"export_s": time.perf_counter() - start, "peak_rss_after_load_mb": after_load,
              "peak_rss_mb": peak_rss_mb(), "file_mb": out.stat().st_size / 2**20}
    if args.compare:
        from agegender_sb.backends.onnx_runtime import OnnxModel

        rng = np.random.default_rng(0)
        lengths = (400, 16000, 37000)
        wavs = torch.zeros(len(lengths), max(lengths))
        for i, n in enumerate(lengths):
            wavs[i, :n] = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
        lens = torch.tensor([n / max(lengths) for n in lengths])
        with torch.inference_mode():
            ref = clf.mods.model(wavs, lens)
        got = OnnxModel(out, threads=args.threads)(wavs, lens)
        result["max_abs_diff"] = {k: float((getattr(ref, k) - getattr(got, k)).abs().max())
                                  for k in ref._fields}
    if not args.keep:
        out.unlink()
    return result


def run_backend(args, backend: str) -> dict:
    """Open one backend, analyse 4 s of audio: peak RSS, and RSS held afterwards."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    wav = torch.from_numpy(np.random.default_rng(0).standard_normal(64000).astype(np.float32))
    start = time.perf_counter()
    if backend == "torch":
        from agegender_sb import AgeGenderClassifier

        model = AgeGenderClassifier.from_hparams(source=args.checkpoint).mods.model
    else:
        from agegender_sb.backends.onnx_runtime import OnnxModel

        model = OnnxModel(Path(args.workdir) / "model-dynamo.onnx", threads=args.threads)
    load_s = time.perf_counter() - start
    with torch.inference_mode():
        model(wav[None])
    with open("/proc/self/statm") as fin:
        rss_now = int(fin.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return {"load_s": load_s, "peak_rss_mb": peak_rss_mb(), "rss_after_run_mb": rss_now}


def worker(args) -> None:
    if args.worker == "build":
        return build(args)
    if args.worker.startswith("run-"):
        print(json.dumps(run_backend(args, args.worker.split("-", 1)[1])))
        return
    result = load(args) if args.worker == "load" else export(args, args.worker.split("-", 1)[1])
    print(json.dumps(result))


# ---------------------------------------------------------------- driver side
def run_step(args, step: str) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", step, "--checkpoint", args.checkpoint,
           "--workdir", args.workdir, "--layers", str(args.layers),
           "--threads", str(args.threads)]
    cmd += ["--compare"] * args.compare + ["--keep"] * args.keep
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"step {step} failed (exit {proc.returncode})")
    if proc.stderr.strip():
        sys.stderr.write(f"[{step} stderr]\n{proc.stderr}")
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--workdir", default=None,
                        help="checkpoint and export folder (default: /tmp/agegender-onnx-mem-L)")
    parser.add_argument("--checkpoint", default=None,
                        help="an existing audEERING-layout folder (default: built in workdir)")
    parser.add_argument("--exporters", nargs="*", choices=("dynamo", "torchscript"),
                        default=("dynamo", "torchscript"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare", action="store_true",
                        help="check the exported file against the torch model")
    parser.add_argument("--keep", action="store_true", help="keep the exported files")
    parser.add_argument("--backends", nargs="*", choices=("torch", "onnx"), default=(),
                        help="also measure running each backend on 4 s of audio (onnx: with "
                             "OnnxModel alone, on the dynamo export; implies --keep)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.workdir = args.workdir or f"/tmp/agegender-onnx-mem-{args.layers}"
    args.checkpoint = args.checkpoint or str(Path(args.workdir) / "checkpoint")
    args.keep = args.keep or "onnx" in args.backends
    if args.worker:
        return worker(args)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    run_step(args, "build")
    results = {"load": run_step(args, "load")}
    for exporter in args.exporters:
        results[f"export-{exporter}"] = run_step(args, f"export-{exporter}")
    for backend in args.backends:
        results[f"run-{backend}"] = run_step(args, f"run-{backend}")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
