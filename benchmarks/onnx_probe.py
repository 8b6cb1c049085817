"""Probe: torch vs ONNX Runtime (fp32 / int8) for the full-size age/gender model on CPU.

Builds wav2vec2-large-robust (24 layers, hidden 1024) + audEERING's heads with random
weights (speed does not depend on weight values), exports it with
``agegender_sb.onnx_export.export_onnx`` and times every backend on the same noise clips,
one utterance at a time.  Each backend runs in its own subprocess, so the peak RSS
reported is that backend's own (model load + inference), not the sum.

    PYTHONPATH=. python benchmarks/onnx_probe.py --threads 2 --clips 5 8 10 --repeats 2

Writes ``<workdir>/results.json`` and prints a table: compute seconds per audio second
(median over repeats, summed over clips), speed-up vs torch fp32, max abs difference of
each output vs torch fp32 (eager attention), peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SR = 16000
OUTS = ("hidden_states", "logits_age", "logits_gender")


def full_config():
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_dim=[512] * 7,
        conv_kernel=[10, 3, 3, 3, 3, 2, 2],
        conv_stride=[5, 2, 2, 2, 2, 2, 2],
        conv_bias=True,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        hidden_act="gelu",
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def clips(seconds: list[float]) -> list[np.ndarray]:
    rng = np.random.default_rng(1234)
    # noise with a DC offset and a non-unit scale, to exercise the in-graph normalisation
    return [(0.05 * rng.standard_normal(int(s * SR)) + 0.01).astype(np.float32) for s in seconds]


def build_torch(workdir: Path, attn: str):
    import torch

    from agegender_sb.onnx_export import OnnxExportAdapter, ReferenceAgeGenderModel

    torch.manual_seed(0)
    model = ReferenceAgeGenderModel(full_config(), attn_implementation=attn).eval()
    sd = workdir / "model_state.pt"
    if sd.exists():
        model.load_state_dict(torch.load(sd, map_location="cpu"))
    else:
        torch.save(model.state_dict(), sd)
    return OnnxExportAdapter(model).eval()


def timed(fn, wavs, repeats):
    fn(wavs[0][: SR * 2])  # warm-up (allocations, ORT arena, oneDNN primitives)
    per_clip, outs = [], []
    for w in wavs:
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            o = fn(w)
            ts.append(time.perf_counter() - t0)
        per_clip.append(statistics.median(ts))
        outs.append(o)
    return per_clip, outs


# --------------------------------------------------------------------------- workers


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    wavs = clips(args.clips)
    res: dict = {"backend": args.worker}
    kind, _, arg = args.worker.partition(":")

    if kind == "export":
        from agegender_sb.onnx_export import export_onnx

        model = build_torch(workdir, "eager")
        t0 = time.perf_counter()
        p = export_onnx(model, workdir / "fp32.onnx", dynamo=arg != "legacy")
        res["export_s"] = time.perf_counter() - t0
        res["file_mb"] = p.stat().st_size / 2**20
        res["peak_rss_mb"] = peak_rss_mb()
        return res

    if kind == "derive":  # transformer optimizer + int8 quantisation of exported files
        from agegender_sb.onnx_export import quantize_onnx_dynamic

        src = workdir / "fp32.onnx"
        try:
            from onnxruntime.transformers.optimizer import optimize_model

            t0 = time.perf_counter()
            opt = optimize_model(str(src), model_type="bert", num_heads=16, hidden_size=1024)
            opt.save_model_to_file(str(workdir / "fp32_opt.onnx"))
            res["optimizer_s"] = time.perf_counter() - t0
            res["fused_ops"] = opt.get_fused_operator_statistics()
        except Exception as err:  # probe: report and go on
            res["optimizer_error"] = f"{type(err).__name__}: {err}"
        t0 = time.perf_counter()
        q = quantize_onnx_dynamic(src, workdir / "int8.onnx")
        res["quantize_s"] = time.perf_counter() - t0
        res["int8_mb"] = q.stat().st_size / 2**20
        if (workdir / "fp32_opt.onnx").exists():
            quantize_onnx_dynamic(workdir / "fp32_opt.onnx", workdir / "int8_opt.onnx")
        res["peak_rss_mb"] = peak_rss_mb()
        return res

    if kind in ("torch", "torch_int8"):
        attn = arg or "eager"
        model = build_torch(workdir, attn)
        if kind == "torch_int8":
            from torch.ao.quantization import quantize_dynamic

            model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

        def fn(w):
            with torch.inference_mode():
                o = model(torch.from_numpy(w)[None])
            return [t.numpy().copy() for t in o]

    elif kind == "ort":
        from agegender_sb.onnx_export import OnnxAgeGender

        name, _, level = arg.partition("@")
        path = workdir / f"{name}.onnx"
        if not path.exists():
            return {"backend": args.worker, "error": f"{path.name} missing"}
        sess = OnnxAgeGender(path, threads=args.threads)
        if level == "basic":  # re-open with a lower optimisation level for comparison
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            so.intra_op_num_threads = args.threads
            sess.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        def fn(w):
            o = sess(w)
            return [o[k] for k in OUTS]

    else:
        raise SystemExit(f"unknown worker {args.worker}")

    per_clip, outs = timed(fn, wavs, args.repeats)
    np.savez(
        workdir / f"out_{args.worker.replace(':', '_').replace('@', '_')}.npz",
        **{f"{k}_{i}": o[j] for i, o in enumerate(outs) for j, k in enumerate(OUTS)},
    )
    res["compute_s"] = sum(per_clip)
    res["audio_s"] = float(sum(args.clips))
    res["s_per_audio_s"] = res["compute_s"] / res["audio_s"]
    res["peak_rss_mb"] = peak_rss_mb()
    return res


# --------------------------------------------------------------------------- driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/agegender_onnx_probe")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clips", type=float, nargs="+", default=[5.0, 8.0, 10.0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--exporter", choices=["dynamo", "legacy"], default="dynamo")
    ap.add_argument("--reuse", action="store_true", help="keep existing exported files")
    ap.add_argument(
        "--backends",
        nargs="+",
        default=[
            "torch:eager",
            "torch:sdpa",
            "torch_int8:eager",
            "ort:fp32",
            "ort:fp32@basic",
            "ort:fp32_opt",
            "ort:int8",
            "ort:int8_opt",
        ],
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    steps = []
    if not (args.reuse and (workdir / "fp32.onnx").exists()):
        steps += [f"export:{args.exporter}", "derive"]
    steps += args.backends

    results = {}
    for step in steps:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            step,
            "--workdir",
            str(workdir),
            "--threads",
            str(args.threads),
            "--repeats",
            str(args.repeats),
            "--clips",
            *map(str, args.clips),
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            res = {"backend": step, "error": (proc.stderr or proc.stdout)[-2000:]}
        else:
            res = json.loads(lines[-1][7:])
        res["wall_s"] = time.perf_counter() - t0
        results[step] = res
        print(json.dumps(res), flush=True)

    ref_name = "out_torch_eager.npz"
    if (workdir / ref_name).exists():
        ref = np.load(workdir / ref_name)
        for step, res in results.items():
            f = workdir / f"out_{step.replace(':', '_').replace('@', '_')}.npz"
            if "compute_s" in res and f.exists():
                o = np.load(f)
                res["max_abs_diff"] = {
                    k: max(
                        float(np.abs(o[f"{k}_{i}"] - ref[f"{k}_{i}"]).max())
                        for i in range(len(args.clips))
                    )
                    for k in OUTS
                }
    base = results.get("torch:eager", {}).get("s_per_audio_s")

    print(
        f"\n{len(args.clips)} clips, {sum(args.clips):.1f} s audio, threads={args.threads}, "
        f"repeats={args.repeats} (median)"
    )
    print(
        f"{'backend':18s} {'s/audio-s':>9s} {'speedup':>8s} {'RSS MB':>8s}  "
        "max|diff| hidden / age / gender"
    )
    for step, res in results.items():
        if "s_per_audio_s" not in res:
            if "error" in res:
                print(f"{step:18s} ERROR {res['error'][-300:]}")
            continue
        d = res.get("max_abs_diff", {})
        sp = base / res["s_per_audio_s"] if base else float("nan")
        print(
            f"{step:18s} {res['s_per_audio_s']:9.3f} {sp:7.2f}x {res['peak_rss_mb']:8.0f}  "
            + " / ".join(f"{d.get(k, float('nan')):.1e}" for k in OUTS)
        )
    for k in ("export:dynamo", "export:legacy", "derive"):
        if k in results:
            print(k, {a: b for a, b in results[k].items() if a != "backend"})
    (workdir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
