"""Speed and memory of this package against the model card's reference, in one run.

Each path runs in its own subprocess (clean peak RSS), on the same checkpoint and the same
audio, one file at a time:

1. ``reference``: the model card's loop (transformers model + ``Wav2Vec2FeatureExtractor``,
   ``tests/reference.py``), file read with soundfile;
2. ``package``: ``AgeGenderClassifier.predict_file``'s path (this package's default), and,
   on request, ``package-batched``: the same in length-sorted batches of ``--batch-size``
   (for GPUs);
3. ``onnx``: ``AgeGenderClassifier(..., backend="onnx")`` (ONNX Runtime, fp32);
4. ``onnx-int8``: the same graph with int8 dynamic quantisation of its MatMul weights
   (``agegender_sb.onnx_export.quantize_onnx_dynamic``);
5. ``torch-int8``: ``torch.ao.quantization.quantize_dynamic`` on the package's Linear layers.

For each: audio seconds per wall second, real-time factor, speed-up over the reference, peak
RSS, model load time, and the largest absolute difference from the reference's outputs
(age output, gender probabilities, embedding). With ``--long``, also the long-file scaling of
the windowed long-file path (1-minute vs N-minute file) and the reference's growth with
length.

Without ``--checkpoint`` a full-size 24-layer checkpoint with random weights is built in
audEERING's layout (speed does not depend on the weight values). Audio: ``--audio DIR``
(default: ``--max-files`` spread over the speechocean762 subset beside the checkout, else
generated noise).

Usage::

    python benchmarks/speed.py --max-files 20 --long --output results.md      # CPU
    python benchmarks/speed.py --device cuda --paths reference package package-batched \
        --precision bf16 --max-files 160                                      # GPU
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

PATHS = ("reference", "package", "package-batched", "onnx", "onnx-int8", "torch-int8")
DEFAULT_PATHS = ("reference", "package", "onnx", "onnx-int8", "torch-int8")
AUDIO_EXT = (".wav", ".flac", ".ogg")


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
    if path_name == "onnx":
        kwargs = {"backend": "onnx", "onnx_path": workdir / "model.onnx"}
    elif path_name == "onnx-int8":
        kwargs = {"backend": "onnx", "onnx_path": workdir / "model-int8.onnx"}
    precision = args.precision if path_name in ("package", "package-batched") else "fp32"
    clf = AgeGenderClassifier.from_hparams(
        source=args.checkpoint, run_opts={"device": device, "precision": precision}, **kwargs)
    if path_name == "torch-int8":
        from agegender_sb.fast_linear import use_onednn_linear

        use_onednn_linear(clf.mods.model, enabled=False)  # quantize_dynamic matches nn.Linear
        clf.mods.model = torch.ao.quantization.quantize_dynamic(
            clf.mods.model, {torch.nn.Linear}, dtype=torch.qint8)
    batch_size = args.batch_size if path_name == "package-batched" else 1

    analyzer = clf.analyzer(vad=None, batch_size=batch_size)  # every sample, as the reference

    def predict(files):
        out = []
        for _, res in analyzer.analyse_many(files):
            if isinstance(res, Exception):
                raise res
            p = res.prediction
            out.append((float(p.age_raw[0]), p.gender_probs[0].numpy(), p.embedding[0].numpy()))
        return out

    return time.perf_counter() - start, predict


def setup_worker(args) -> None:
    """Heavy one-off steps, in a subprocess so that the driver stays small: Linux keeps a
    process's peak RSS across exec, so every worker would inherit the driver's."""
    if args.worker == "build":
        build_checkpoint(Path(args.checkpoint), args.layers)
        return
    from agegender_sb import AgeGenderClassifier
    from agegender_sb.onnx_export import export_onnx, quantize_onnx_dynamic

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
    """One long file through ``predict_file`` (the windowed path ``agegender predict`` uses),
    in this process: model load and analysis times, peak RSS."""
    import torch

    from agegender_sb import AgeGenderClassifier

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    clf = AgeGenderClassifier.from_hparams(source=args.checkpoint, run_opts={"device": "cpu"})
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    clf.predict_file(args.long_file)
    print(json.dumps({"load_s": load_s, "wall_s": time.perf_counter() - start,
                      "peak_rss_mb": peak_rss_mb()}))


def worker(args) -> None:
    if args.worker in ("build", "export"):
        return setup_worker(args)
    if args.worker == "long":
        return long_worker(args)
    import torch

    torch.set_num_threads(args.threads)
    files = json.loads(Path(args.files).read_text())
    load_s, predict = _load(args.worker, args)
    predict([files[0][0]])  # warm-up (not timed)
    start = time.perf_counter()
    outputs = predict([f for f, _ in files])
    wall = time.perf_counter() - start
    audio_s = sum(d for _, d in files)
    np.savez(Path(args.workdir) / f"out-{args.worker}.npz",
             age=np.array([o[0] for o in outputs]),
             probs=np.stack([o[1] for o in outputs]),
             emb=np.stack([o[2] for o in outputs]))
    print(json.dumps({"path": args.worker, "load_s": load_s, "wall_s": wall,
                      "audio_s": audio_s, "peak_rss_mb": peak_rss_mb()}))


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


def run_worker(name: str, args, files_json: Path | None, workdir: Path,
               extra: list[str] | None = None) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", name, "--checkpoint", args.checkpoint,
           "--workdir", str(workdir), "--threads", str(args.threads), "--layers",
           str(args.layers), "--device", args.device, "--precision", args.precision,
           "--batch-size", str(args.batch_size), *(extra or [])]
    if files_json is not None:
        cmd += ["--files", str(files_json)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                          "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def long_file_scaling(args, workdir: Path) -> list[dict]:
    """The package on a 1-minute and an N-minute file (analysis time, model load excluded),
    each in a subprocess; the reference on 30 s and 120 s files (one warm-up, two timed
    passes)."""
    import soundfile as sf

    rows = []
    rng = np.random.default_rng(1)
    for minutes in (1, args.long_minutes):
        path = workdir / f"long{minutes}.wav"
        if not path.is_file():
            with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as f:
                for _ in range(minutes * 6):  # 10 s blocks
                    f.write((0.1 * rng.standard_normal(160000)).astype(np.float32))
        res = run_worker("long", args, None, workdir, extra=["--long-file", str(path)])
        rows.append({"what": f"package, {minutes}-min file", "audio_s": minutes * 60,
                     "wall_s": res["wall_s"], "peak_rss_mb": res["peak_rss_mb"]})
    for seconds in (30, 120):
        path = workdir / f"ref{seconds}.wav"
        sf.write(path, (0.1 * rng.standard_normal(seconds * 16000)).astype(np.float32), 16000)
        files_json = workdir / f"ref{seconds}.json"
        files_json.write_text(json.dumps([[str(path), seconds], [str(path), seconds]]))
        res = run_worker("reference", args, files_json, workdir)
        rows.append({"what": f"reference, {seconds}-s file", "audio_s": seconds,
                     "wall_s": res["wall_s"], "peak_rss_mb": res["peak_rss_mb"]})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="audEERING-layout folder (default: random 24-layer)")
    parser.add_argument("--layers", type=int, default=24, help="layers of the random checkpoint")
    parser.add_argument("--audio", help="folder of audio files")
    parser.add_argument("--max-files", type=int, default=20)
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
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--long-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="agegender-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.checkpoint is None:
        args.checkpoint = str(workdir / f"random-{args.layers}")
        run_worker("build", args, None, workdir)
    files = collect_audio(args.audio, workdir, args.max_files)
    files_json = workdir / "files.json"
    files_json.write_text(json.dumps(files))
    if "onnx" in args.paths or "onnx-int8" in args.paths:
        run_worker("export", args, None, workdir)

    results = {}
    for name in ["reference"] + [p for p in args.paths if p != "reference"]:
        print(f"running {name} ...", file=sys.stderr)
        results[name] = run_worker(name, args, files_json, workdir)
    ref = np.load(workdir / "out-reference.npz")
    base = results["reference"]["audio_s"] / results["reference"]["wall_s"]
    total_audio = results["reference"]["audio_s"]
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads {args.threads}; device {args.device}, package precision "
        f"{args.precision}; checkpoint {Path(args.checkpoint).name}; "
        f"{len(files)} files, {total_audio:.1f} s of audio; one file at a time except "
        f"package-batched (batches of {args.batch_size}).",
        "",
        "| path | audio s / wall s | RTF | speed-up | peak RSS (MB) | load (s) "
        "| max abs diff (age / gender prob / embedding) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in results.items():
        out = np.load(workdir / f"out-{name}.npz")
        diffs = [np.abs(out[k] - ref[k]).max() for k in ("age", "probs", "emb")]
        speed = r["audio_s"] / r["wall_s"]
        lines.append(
            f"| {name} | {speed:.2f} | {r['wall_s'] / r['audio_s']:.3f} | {speed / base:.2f}x "
            f"| {r['peak_rss_mb']:.0f} | {r['load_s']:.1f} | "
            + " / ".join(f"{d:.1e}" for d in diffs) + " |"
        )
    if args.long:
        lines += ["", "| long files | audio (s) | wall (s) | wall / audio s | peak RSS (MB) |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for row in long_file_scaling(args, workdir):
            lines.append(f"| {row['what']} | {row['audio_s']} | {row['wall_s']:.1f} | "
                         f"{row['wall_s'] / row['audio_s']:.3f} | {row['peak_rss_mb']:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")


if __name__ == "__main__":
    main()
