"""Speed and memory of this package against the model card's reference: one command, one
run, interleaved.

Each path runs in its own subprocess (its own peak RSS) that loads its model once and then
serves files on request; the driver sends every file to every path in turn (rotating the
order per file), for ``--rounds`` passes over the files. So all paths see the same machine
load (other jobs on shared cores), and each round gives a ratio to the reference; the table
shows the median ratio and its spread over rounds. Paths, on the same checkpoint and audio,
one file at a time:

1. ``reference``: the model card's loop (transformers model + ``Wav2Vec2FeatureExtractor``,
   ``tests/reference.py``), file read with soundfile;
2. ``package``: ``AgeGenderClassifier.predict_file(path, vad=None)`` (the default float32
   path, every sample analysed as the reference does);
3. ``package-bf16``, ``package-int8`` and ``package-int8-cnn``: the same after
   ``agegender_sb.backends.fast_paths.enable_fast_path(model, kind)`` (opt-in, approximate);
4. ``onnx``: ``AgeGenderClassifier(..., backend="onnx")`` (ONNX Runtime, fp32);
5. ``onnx-int8``: the same graph with int8 dynamic quantisation of its MatMul weights
   (``agegender_sb.export.onnx.quantize_onnx_dynamic``);
6. on request ``package-batched``: ``predict_batch`` on length-sorted batches of
   ``--batch-size`` (for GPUs); ``--precision`` sets the package paths' autocast.

For each: audio seconds per wall second, real-time factor, speed-up over the reference (median
of the per-round ratios, with min-max), peak RSS, model load time, and the largest absolute
difference from the reference's outputs (age output, gender probabilities, embedding). With
``--long``, also the long-file scaling of the windowed long-file path (1-minute vs N-minute
file) and the reference's growth with length.

Without ``--checkpoint`` a full-size 24-layer checkpoint with random weights is built in
audEERING's layout (speed does not depend on the weight values). Audio: ``--audio DIR``
(default: ``--max-files`` spread over the speechocean762 subset beside the checkout, else
generated noise).

Usage::

    python benchmarks/speed.py --output benchmarks/RESULTS.md          # CPU, the README table
    python benchmarks/speed.py --max-files 20 --rounds 3 --threads 1 --long
    python benchmarks/speed.py --device cuda --paths reference package package-batched \
        --precision bf16 --max-files 160                               # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PATHS = ("reference", "package", "package-bf16", "package-int8", "package-int8-cnn",
         "package-batched", "onnx", "onnx-int8")
DEFAULT_PATHS = ("reference", "package", "package-bf16", "package-int8", "package-int8-cnn",
                 "onnx", "onnx-int8")
AUDIO_EXT = (".wav", ".flac", ".ogg")
LABELS = {"reference": "model card's reference", "package": "**package (default, fp32)**",
          "package-bf16": "package, fast path `bf16` (opt-in)",
          "package-int8": "package, fast path `int8` (opt-in)",
          "package-int8-cnn": "package, fast path `int8-cnn` (opt-in)", "onnx": "ONNX Runtime fp32",
          "onnx-int8": "ONNX Runtime int8", "package-batched": "package, batched"}


def cpu_name() -> str:
    """The CPU's model name and the instruction sets that matter here (Linux), else the
    platform's name."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), platform.machine())
    flags = next((set(line.split(":", 1)[1].split()) for line in info.splitlines()
                  if line.startswith("flags")), set())
    have = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(have) or 'no AVX-512'})"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- worker side
def _load(path_name: str, args):
    """Return (load seconds, predict(files) -> [(age_raw, probs[n], embedding[H]), ...])."""
    import soundfile as sf
    import torch

    device, workdir = args.device, Path(args.workdir)
    start = time.perf_counter()
    if path_name == "reference":
        from reference import CardModel
        from transformers import Wav2Vec2FeatureExtractor

        model = CardModel.from_pretrained(args.checkpoint).eval().to(device)
        fe = Wav2Vec2FeatureExtractor.from_pretrained(args.checkpoint)

        def predict_one(file):
            signal, sr = sf.read(file, dtype="float32")
            y = fe(signal, sampling_rate=sr)["input_values"][0]
            y = torch.from_numpy(np.asarray(y, dtype=np.float32).reshape(1, -1)).to(device)
            with torch.no_grad():
                hidden, age, probs = model(y)
            return float(age[0, 0]), probs[0].cpu().numpy(), hidden[0].cpu().numpy()

        return time.perf_counter() - start, lambda files: [predict_one(f) for f in files]

    from agegender_sb import AgeGenderClassifier

    kwargs = {}
    if path_name in ("onnx", "onnx-int8"):  # as many threads as every other path
        graph = "model.onnx" if path_name == "onnx" else "model-int8.onnx"
        kwargs = {"backend": "onnx", "onnx_path": workdir / graph, "onnx_threads": args.threads}
    precision = args.precision if path_name in ("package", "package-batched") else "fp32"
    clf = AgeGenderClassifier.from_hparams(
        source=args.checkpoint, run_opts={"device": device, "precision": precision}, **kwargs)
    if path_name in ("package-bf16", "package-int8", "package-int8-cnn"):
        from agegender_sb.backends.fast_paths import enable_fast_path

        enable_fast_path(clf.mods.model, path_name[len("package-"):])

    def row(p):
        return float(p.age_raw[0]), p.gender_probs[0].numpy(), p.embedding[0].numpy()

    def predict(files):
        if path_name != "package-batched":
            return [row(clf.predict_file(f, vad=None)) for f in files]
        wavs = [clf.load_audio(f) for f in files]
        order = sorted(range(len(wavs)), key=lambda i: -wavs[i].shape[-1])
        out = [None] * len(wavs)
        for lo in range(0, len(order), args.batch_size):
            idx = order[lo:lo + args.batch_size]
            n = max(wavs[i].shape[-1] for i in idx)
            batch = torch.zeros(len(idx), n, device=wavs[idx[0]].device)
            for j, i in enumerate(idx):
                batch[j, : wavs[i].shape[-1]] = wavs[i]
            lens = torch.tensor([wavs[i].shape[-1] / n for i in idx])
            pred = clf.predict_batch(batch, lens)
            for j, i in enumerate(idx):
                out[i] = (float(pred.age_raw[j]), pred.gender_probs[j].cpu().numpy(),
                          pred.embedding[j].cpu().numpy())
        return out

    return time.perf_counter() - start, predict


def setup_worker(args) -> None:
    """Heavy one-off steps, in a subprocess so that the driver stays small: Linux keeps a
    process's peak RSS across exec, so every worker would inherit the driver's."""
    if args.worker == "build":
        build_checkpoint(Path(args.checkpoint), args.layers)
        return
    from agegender_sb import AgeGenderClassifier
    from agegender_sb.export.onnx import export_onnx, quantize_onnx_dynamic

    workdir = Path(args.workdir)
    if not (workdir / "model.onnx").is_file():
        clf = AgeGenderClassifier.from_hparams(source=args.checkpoint)
        t = time.perf_counter()
        export_onnx(clf.mods.model, workdir / "model.onnx", clf.labels,
                    gender_probabilities=False)
        print(f"export: {time.perf_counter() - t:.1f} s, peak RSS {peak_rss_mb():.0f} MB",
              file=sys.stderr)
    if not (workdir / "model-int8.onnx").is_file():
        quantize_onnx_dynamic(workdir / "model.onnx", workdir / "model-int8.onnx")


def long_worker(args) -> None:
    """One long file through ``predict_file`` (the windowed path ``agegender predict`` uses,
    every sample analysed), in this process: model load and analysis times, peak RSS."""
    import torch

    from agegender_sb import AgeGenderClassifier

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    clf = AgeGenderClassifier.from_hparams(source=args.checkpoint, run_opts={"device": "cpu"})
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    clf.predict_file(args.long_file, vad=None)
    print(json.dumps({"load_s": load_s, "wall_s": time.perf_counter() - start,
                      "peak_rss_mb": peak_rss_mb()}))


def serve(args) -> None:
    """Load one path's model, warm it up, then answer requests on stdin: a JSON list of files
    → one JSON line with the wall time and the outputs; an empty line → peak RSS, exit."""
    import torch

    torch.set_num_threads(args.threads)
    load_s, predict = _load(args.worker, args)
    predict([args.warmup])  # not timed
    print(json.dumps({"load_s": load_s}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        files = json.loads(line)
        start = time.perf_counter()
        outputs = predict(files)
        wall = time.perf_counter() - start
        print(json.dumps({"wall_s": wall, "out": [[o[0], o[1].tolist(), o[2].tolist()]
                                                  for o in outputs]}), flush=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)


def worker(args) -> None:
    if args.worker in ("build", "export"):
        return setup_worker(args)
    if args.worker == "long":
        return long_worker(args)
    return serve(args)


# ---------------------------------------------------------------- driver side
def build_checkpoint(folder: Path, layers: int) -> Path:
    if (folder / "model.safetensors").is_file():
        return folder
    from reference import audeering_config, build_card_model, write_audeering_checkpoint

    config = audeering_config(hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16,
                              intermediate_size=4096, conv_dim=512, num_conv_pos_embeddings=128,
                              num_conv_pos_embedding_groups=16)
    write_audeering_checkpoint(build_card_model(config), config, folder)
    return folder


def collect_audio(audio: str | None, workdir: Path, max_files: int) -> list[tuple[str, float]]:
    import soundfile as sf

    if audio is None:
        from paths import SPEECHOCEAN

        candidate = SPEECHOCEAN / "WAVE"
        audio = str(candidate) if candidate.is_dir() else None
    if audio is None:  # generated: 5 s of modulated noise each
        rng = np.random.default_rng(0)
        out = []
        for i in range(max_files):
            path = workdir / f"gen{i:03d}.wav"
            x = 0.1 * rng.standard_normal(80000) * np.sin(np.linspace(0, 30, 80000)) ** 2
            sf.write(path, x.astype(np.float32), 16000)
            out.append((str(path), 5.0))
        return out
    files = sorted(p for p in Path(audio).rglob("*") if p.suffix.lower() in AUDIO_EXT)
    step = max(1, len(files) // max_files)
    chosen = files[::step][:max_files]
    return [(str(p), sf.info(str(p)).duration) for p in chosen]


def _cmd(name: str, args, workdir: Path, extra: list[str] | None = None) -> list[str]:
    return [sys.executable, __file__, "--worker", name, "--checkpoint", args.checkpoint,
            "--workdir", str(workdir), "--threads", str(args.threads), "--layers",
            str(args.layers), "--device", args.device, "--precision", args.precision,
            "--batch-size", str(args.batch_size), *(extra or [])]


def _env() -> dict:
    return {**os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def run_worker(name: str, args, workdir: Path, extra: list[str] | None = None) -> dict | None:
    """A one-off worker (build, export, long): its last stdout line as JSON."""
    proc = subprocess.run(_cmd(name, args, workdir, extra), capture_output=True, text=True,
                          env=_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


class Server:
    """A path's worker process, loaded once, timing the files it is sent."""

    def __init__(self, name: str, args, workdir: Path, warmup: str):
        self.name = name
        self.errors = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(_cmd(name, args, workdir, ["--warmup", warmup]),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errors, text=True, env=_env())
        self.load_s = self._reply()["load_s"]

    def _reply(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.errors.seek(0)
                raise RuntimeError(f"{self.name} failed:\n{self.errors.read()[-3000:]}")
            if line.startswith("{"):
                return json.loads(line)

    def run(self, files: list[str]) -> dict:
        self.proc.stdin.write(json.dumps(files) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> float:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        rss = self._reply()["peak_rss_mb"]
        self.proc.wait()
        return rss


def interleaved(args, files: list[tuple[str, float]], workdir: Path) -> dict:
    """Every file through every path in turn (the order rotating per file), ``args.rounds``
    times. Per path: load time, peak RSS, wall time per round, outputs of the last round."""
    names = ["reference"] + [p for p in args.paths if p != "reference"]
    unit = args.batch_size if "package-batched" in names else 1
    groups = [list(range(i, min(i + unit, len(files)))) for i in range(0, len(files), unit)]
    servers = {}
    try:
        for name in names:  # loaded one after the other (clean load times)
            print(f"loading {name} ...", file=sys.stderr)
            servers[name] = Server(name, args, workdir, files[0][0])
        walls = {n: [0.0] * args.rounds for n in names}
        outs = {n: [None] * len(files) for n in names}
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds} ...", file=sys.stderr)
            for g, group in enumerate(groups):
                k = (g + r) % len(names)
                for name in names[k:] + names[:k]:  # rotate who goes first
                    chunks = [group] if name == "package-batched" else [[i] for i in group]
                    for chunk in chunks:
                        res = servers[name].run([files[i][0] for i in chunk])
                        walls[name][r] += res["wall_s"]
                        for i, o in zip(chunk, res["out"]):
                            outs[name][i] = o
        rss = {n: s.close() for n, s in servers.items()}
    finally:
        for s in servers.values():
            if s.proc.poll() is None:
                s.proc.kill()
    return {n: {"load_s": servers[n].load_s, "peak_rss_mb": rss[n], "walls": walls[n],
                "out": outs[n]} for n in names}


def long_file_scaling(args, workdir: Path) -> list[dict]:
    """The package on a 1-minute and an N-minute file (analysis time, model load excluded),
    each in a subprocess; the reference on 30 s and 120 s files (one warm-up, one timed
    pass)."""
    import soundfile as sf

    rows = []
    rng = np.random.default_rng(1)
    for minutes in (1, args.long_minutes):
        path = workdir / f"long{minutes}.wav"
        if not path.is_file():
            with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as f:
                for _ in range(minutes * 6):  # 10 s blocks
                    f.write((0.1 * rng.standard_normal(160000)).astype(np.float32))
        res = run_worker("long", args, workdir, extra=["--long-file", str(path)])
        rows.append({"what": f"package, {minutes}-min file", "audio_s": minutes * 60,
                     "wall_s": res["wall_s"], "peak_rss_mb": res["peak_rss_mb"]})
    for seconds in (30, 120):
        path = workdir / f"ref{seconds}.wav"
        sf.write(path, (0.1 * rng.standard_normal(seconds * 16000)).astype(np.float32), 16000)
        server = Server("reference", args, workdir, str(path))
        res = server.run([str(path)])
        rss = server.close()
        rows.append({"what": f"reference, {seconds}-s file", "audio_s": seconds,
                     "wall_s": res["wall_s"], "peak_rss_mb": rss})
    return rows


def table(args, files, results) -> str:
    """The Markdown table: speeds, median per-round ratios to the reference, memory, and the
    largest deviations from the reference's outputs."""
    keys = ("age", "probs", "emb")

    def arrays(out):
        return {k: np.array([o[i] for o in out]) for i, k in enumerate(keys)}

    ref = arrays(results["reference"]["out"])
    ref_walls = np.array(results["reference"]["walls"])
    total_audio = sum(d for _, d in files)
    lines = [
        f"Machine: {cpu_name()}, {os.cpu_count()} CPUs, "
        f"torch threads {args.threads}; device {args.device}, package precision "
        f"{args.precision}; checkpoint {Path(args.checkpoint).name}; {len(files)} files, "
        f"{total_audio:.1f} s of audio, {args.rounds} interleaved rounds; one file at a time "
        f"except package-batched (batches of {args.batch_size}). Speed-up: median of the "
        "per-round ratios to the reference [min-max].",
        "",
        "| path | audio s / wall s | RTF | speed-up [min-max] | peak RSS (MB) | load (s) "
        "| max abs diff from the reference (age output / gender prob. / embedding) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in results.items():
        walls = np.array(r["walls"])
        ratios = ref_walls / walls
        wall = float(np.median(walls))
        out = arrays(r["out"])
        diffs = ("—" if name == "reference" else
                 " / ".join(f"{np.abs(out[k] - ref[k]).max():.1e}" for k in keys))
        lines.append(
            f"| {LABELS.get(name, name)} | {total_audio / wall:.2f} | {wall / total_audio:.3f} "
            f"| {np.median(ratios):.2f}× [{ratios.min():.2f}-{ratios.max():.2f}] "
            f"| {r['peak_rss_mb']:.0f} | {r['load_s']:.1f} | {diffs} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="audEERING-layout folder (default: random 24-layer)")
    parser.add_argument("--layers", type=int, default=24, help="layers of the random checkpoint")
    parser.add_argument("--audio", help="folder of audio files")
    parser.add_argument("--max-files", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved passes over the files")
    parser.add_argument("--paths", nargs="+", default=list(DEFAULT_PATHS), choices=PATHS,
                        help="package-batched: length-sorted batches of --batch-size (GPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (reference and package)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                        help="autocast precision of the package paths")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--workdir", help="keeps the checkpoint and ONNX files between runs")
    parser.add_argument("--long", action="store_true", help="also measure long-file scaling")
    parser.add_argument("--long-minutes", type=int, default=60)
    parser.add_argument("--output", help="write the Markdown table here too")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", help=argparse.SUPPRESS)
    parser.add_argument("--long-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="agegender-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.checkpoint is None:
        args.checkpoint = str(workdir / f"random-{args.layers}")
        run_worker("build", args, workdir)
    files = collect_audio(args.audio, workdir, args.max_files)
    if "onnx" in args.paths or "onnx-int8" in args.paths:
        run_worker("export", args, workdir)
    results = interleaved(args, files, workdir)
    text = table(args, files, results)
    if args.long:
        text += ("\n\n| long files | audio (s) | wall (s) | wall / audio s | peak RSS (MB) |\n"
                 "| --- | ---: | ---: | ---: | ---: |")
        for row in long_file_scaling(args, workdir):
            text += (f"\n| {row['what']} | {row['audio_s']} | {row['wall_s']:.1f} | "
                     f"{row['wall_s'] / row['audio_s']:.3f} | {row['peak_rss_mb']:.0f} |")
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
