"""Where the time goes: the model card's reference, the package's default float32 path and
its bf16 and int8 fast paths, part by part and op by op, on one utterance.

Each part of the network (CNN feature encoder, feature projection, positional convolution,
attention blocks, feed-forward blocks, layer norms, pooling and heads) is wrapped in a
``torch.profiler.record_function`` range by forward hooks; the table gives each part's
inclusive time per forward pass (median over ``--repeats`` profiled passes, after a warm-up),
and the top operators by self time. Paths run alternately, in one process, on the same
checkpoint (default: the full-size 24-layer random one, as ``benchmarks/speed.py`` builds it).

A last table puts the passes against the **floor** of each precision: the matrix products'
floating-point operations (counted by ``torch.utils.flop_counter`` on the reference, plus
attention's two T×T products) at the rate this CPU runs the model's largest product
(``[T, 1024]·[1024, 4096]``; float32 through MKL or oneDNN, whichever is faster, bfloat16
through oneDNN's packed product as the bf16 path calls it): no implementation of that
precision runs a pass faster on this core. Passes and products are timed twice, by the wall
clock and by the process's CPU time (with one thread, the time it ran: on a shared machine the
wall clock also counts the time other processes held the core); the share of the floor
(floor / pass) is given per round, floor and pass measured in the same round.

Two more paths undo one speed-up of the default float32 path each, to measure what it gives
in the same run: ``"package fp32 unpacked"`` (plain Linear weights, reordered by oneDNN on
every call) and ``"package fp32 conv"`` (the feature encoder's convolutions as oneDNN
convolutions, each layer norm over the whole layer).

Usage::

    python benchmarks/profile_ops.py --seconds 6 --threads 1 --output ops.md
    python benchmarks/profile_ops.py --paths reference "package fp32" --repeats 5
    python benchmarks/profile_ops.py --audio speech.wav --paths "package fp32"  # real speech

The signal is 0.1-scaled Gaussian noise of ``--seconds``, or, with ``--audio FILE``, that
file's first ``--seconds`` (read with soundfile, 16 kHz mono; the time a pass takes does not
depend on what the signal holds, which a real utterance shows).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

CLOCKS = {"wall": time.perf_counter, "CPU time": time.process_time}
PATHS = ("reference", "package fp32", "package fp32 unpacked", "package fp32 conv",
         "package bf16", "package int8", "package int8-cnn")
#: the default float32 path with one of its speed-ups undone, to measure what it gives
ABLATIONS = ("package fp32 unpacked", "package fp32 conv")
PARTS = ("CNN feature encoder", "feature projection", "positional conv", "attention",
         "feed-forward", "layer norms (transformer)", "pooling + heads")


def _wav2vec2(model):
    # transformers' class in the reference, agegender_sb.model.wav2vec2's in the package
    return next(m for m in model.modules() if type(m).__name__ == "Wav2Vec2Model")


def annotate(model) -> None:
    """Forward hooks opening a ``record_function`` range per part."""
    import torch

    w2v = _wav2vec2(model)
    parts = {"CNN feature encoder": [w2v.feature_extractor],
             "feature projection": [w2v.feature_projection],
             "positional conv": [w2v.encoder.pos_conv_embed],
             "attention": [layer.attention for layer in w2v.encoder.layers],
             "feed-forward": [layer.feed_forward for layer in w2v.encoder.layers],
             "layer norms (transformer)": [w2v.encoder.layer_norm]
             + [ln for layer in w2v.encoder.layers
                for ln in (layer.layer_norm, layer.final_layer_norm)]}
    heads = [m for name, m in model.named_children() if name in ("age", "gender", "pooling",
                                                                 "age_head", "gender_head")]
    parts["pooling + heads"] = heads
    for label, modules in parts.items():
        for m in modules:
            def pre(mod, args, label=label):
                mod.__dict__["_range"] = torch.profiler.record_function(f"part: {label}")
                mod.__dict__["_range"].__enter__()

            def post(mod, args, out):
                mod.__dict__.pop("_range").__exit__(None, None, None)

            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post)


def product_flops(model, x, frames: int) -> float:
    """Floating-point operations of the matrix products of one pass of the reference model
    on ``x`` (``frames`` transformer frames): Linear layers and convolutions as counted by
    ``FlopCounterMode``, plus attention's ``Q·Kᵀ`` and ``P·V`` (4·heads·T²·head_dim per
    layer, which it does not count on CPU)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # no_grad, not inference_mode: the positional conv's weight-norm parametrisation
    # cannot run under FlopCounterMode in inference mode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    counted = counter.get_flop_counts()["Global"]
    config = model.config
    attention = 4 * config.num_hidden_layers * frames ** 2 * config.hidden_size
    return float(sum(v for k, v in counted.items()
                     if "attention" not in str(k))) + attention


def gemm_rates(frames: int, hidden: int = 1024, inner: int = 4096, repeats: int = 10,
               clock=time.perf_counter) -> dict:
    """GFLOP/s of ``[frames, hidden]·[hidden, inner]`` with bias, best of ``repeats``: float32
    the faster of ``F.linear`` (MKL) and oneDNN's packed product, and, where oneDNN runs
    bfloat16, its packed bfloat16 product on a bfloat16 input (as the bf16 fast path calls
    it, without the path's float32 ↔ bfloat16 conversions), timed by ``clock``."""
    import torch

    from agegender_sb.backends.fast_paths import bf16_available

    mkldnn = torch.ops.mkldnn
    x = torch.randn(1, frames, hidden)
    weight, bias = torch.randn(inner, hidden) / hidden ** 0.5, torch.randn(inner)
    packed = mkldnn._reorder_linear_weight(weight)
    runs = {"fp32": [lambda: torch.nn.functional.linear(x, weight, bias),
                     lambda: mkldnn._linear_pointwise(x, packed, bias, "none", [], "none")]}
    if bf16_available():
        xb, bb = x.bfloat16(), bias.bfloat16()
        packed_bf16 = mkldnn._reorder_linear_weight(weight.bfloat16())
        runs["bf16"] = [lambda: mkldnn._linear_pointwise(xb, packed_bf16, bb, "none", [],
                                                         "none")]
    rates = {}
    with torch.inference_mode():
        for name, candidates in runs.items():
            best = float("inf")
            for run in candidates:
                run()
                for _ in range(repeats):
                    start = clock()
                    run()
                    best = min(best, clock() - start)
            rates[name] = 2 * frames * hidden * inner / best / 1e9
    return rates


def read_signal(audio: str | None, seconds: float) -> np.ndarray:
    """``seconds`` of 0.1-scaled Gaussian noise, or ``audio``'s first ``seconds`` (a 16 kHz
    mono file; an error names the file where it is not, or is shorter)."""
    n = int(seconds * 16000)
    if audio is None:
        return (0.1 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    import soundfile as sf

    signal, rate = sf.read(audio, dtype="float32", always_2d=True)
    if rate != 16000 or signal.shape[1] != 1:
        raise SystemExit(f"error: {audio}: {rate} Hz, {signal.shape[1]} channel(s); "
                         "profile_ops.py takes 16 kHz mono")
    if len(signal) < n:
        raise SystemExit(f"error: {audio}: {len(signal) / rate:g} s, shorter than "
                         f"--seconds {seconds:g}")
    return np.ascontiguousarray(signal[:n, 0])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="audEERING-layout folder (default: random 24-layer)")
    parser.add_argument("--workdir")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--audio", help="a 16 kHz mono file: its first --seconds instead of "
                                        "noise")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS,
                        help="paths to profile (default: all; the bf16 path is slow on CPUs "
                             "without bfloat16 arithmetic)")
    args = parser.parse_args(argv)

    import torch
    from reference import CardModel
    from speed import build_checkpoint
    from torch.profiler import ProfilerActivity, profile
    from transformers import Wav2Vec2FeatureExtractor

    from agegender_sb import AgeGenderClassifier
    from agegender_sb.backends.cpu_speed import FastFeatureEncoder
    from agegender_sb.backends.fast_linear import unpack_linear_weights
    from agegender_sb.backends.fast_paths import enable_fast_path

    torch.set_num_threads(args.threads)
    if args.checkpoint is None:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="agegender-prof-"))
        args.checkpoint = str(build_checkpoint(workdir / "random-24", 24))
    ref = CardModel.from_pretrained(args.checkpoint).eval()
    fe = Wav2Vec2FeatureExtractor.from_pretrained(args.checkpoint)
    fp32 = AgeGenderClassifier.from_hparams(source=args.checkpoint).mods.model.eval()
    unpacked = None  # the default path with plain Linear weights (reordered on every call)
    if "package fp32 unpacked" in args.paths:
        unpacked = AgeGenderClassifier.from_hparams(source=args.checkpoint).mods.model.eval()
        unpack_linear_weights(unpacked)
    conv = None  # the default path with the feature encoder's oneDNN convolutions, unblocked
    if "package fp32 conv" in args.paths:
        conv = AgeGenderClassifier.from_hparams(source=args.checkpoint).mods.model.eval()
        for cnn in conv.modules():
            if isinstance(cnn, FastFeatureEncoder):
                cnn.frame_products = False
                cnn.first_block_frames = cnn.block_frames = 2 ** 62
    fast = {kind: enable_fast_path(
        AgeGenderClassifier.from_hparams(source=args.checkpoint).mods.model.eval(), kind)
        for kind in ("bf16", "int8", "int8-cnn") if f"package {kind}" in args.paths}
    signal = read_signal(args.audio, args.seconds)
    y = torch.from_numpy(np.asarray(fe(signal, sampling_rate=16000)["input_values"][0],
                                    dtype=np.float32)).reshape(1, -1)
    x = torch.from_numpy(signal).reshape(1, -1)
    runs = {"reference": (ref, y), "package fp32": (fp32, x),
            "package fp32 unpacked": (unpacked, x), "package fp32 conv": (conv, x)}
    runs.update({f"package {kind}": (model, x) for kind, model in fast.items()})
    runs = {name: run for name, run in runs.items() if name in args.paths}
    for model, _ in runs.values():
        annotate(model)
    parts = {n: defaultdict(list) for n in runs}
    ops = {n: defaultdict(list) for n in runs}
    totals = {n: [] for n in runs}
    with torch.inference_mode():
        for model, inp in runs.values():
            model(inp)  # warm-up (caches, oneDNN primitives)
        frames = int(ref.wav2vec2._get_feat_extract_output_lengths(y.shape[-1]))
        # each pass and each GEMM timed twice: wall clock, and this process's CPU time (one
        # thread: the time it ran, not the time another process held the core)
        walls = {clock: {n: [] for n in runs} for clock in CLOCKS}
        rates = {clock: defaultdict(list) for clock in CLOCKS}
        for _ in range(args.repeats):
            for name, (model, inp) in runs.items():  # unprofiled, for the floor table
                start = {clock: f() for clock, f in CLOCKS.items()}
                model(inp)
                for clock, f in CLOCKS.items():
                    walls[clock][name].append((f() - start[clock]) * 1e3)
            for clock, f in CLOCKS.items():  # in the same minute
                for precision, rate in gemm_rates(frames, clock=f).items():
                    rates[clock][precision].append(rate)
            for name, (model, inp) in runs.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    model(inp)
                events = prof.key_averages()
                total = 0.0
                for ev in events:
                    if ev.key.startswith("part: "):
                        parts[name][ev.key[6:]].append(ev.cpu_time_total / 1e3)
                    else:
                        ops[name][ev.key].append(ev.self_cpu_time_total / 1e3)
                        total += ev.self_cpu_time_total / 1e3
                totals[name].append(total)

    names = list(runs)
    med = {n: {k: float(np.median(v)) for k, v in parts[n].items()} for n in names}
    tot = {n: float(np.median(totals[n])) for n in names}
    source = f"of {Path(args.audio).name}" if args.audio else "of noise"
    lines = [f"One {len(signal) / 16000:g} s utterance ({source}), {args.threads} thread(s), "
             "checkpoint "
             f"{Path(args.checkpoint).name}; median of {args.repeats} profiled passes "
             "(ms, inclusive; share of the pass).", "",
             "| part | " + " | ".join(names) + " |",
             "| --- |" + " ---: |" * len(names)]
    for part in PARTS:
        cells = []
        for n in names:
            v = med[n].get(part, 0.0)
            cells.append(f"{v:.0f} ({100 * v / tot[n]:.0f} %)")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines.append("| **whole pass** | " + " | ".join(f"**{tot[n]:.0f}**" for n in names) + " |")
    lines += ["", "Top operators by self time (ms per pass):", "",
              "| operator | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    op_med = {n: {k: float(np.median(v)) for k, v in ops[n].items()} for n in names}
    top = sorted({k for n in names for k in op_med[n]},
                 key=lambda k: -max(op_med[n].get(k, 0.0) for n in names))[:14]
    for k in top:
        lines.append(f"| `{k}` | " + " | ".join(f"{op_med[n].get(k, 0.0):.1f}" for n in names)
                     + " |")
    flops = product_flops(ref, y, frames)
    wall = {n: float(np.median(v)) for n, v in walls["wall"].items()}
    lines += ["", f"Floor: {flops / 1e9:.0f} GFLOP of matrix products per pass, at this core's "
              f"rate for the model's largest product ([{frames}, 1024]·[1024, 4096]; median "
              "of one best-of-10 measurement per round, between the passes). Unprofiled "
              "passes (median ms, wall clock): " + ", ".join(f"{n} {wall[n]:.0f}" for n in names)
              + ". Each row twice: timed by the wall clock, and by the process's CPU time "
              "(with one thread, the time it ran; on a shared machine the wall clock also "
              "counts the time other processes held the core).", "",
              "| precision, clock | package path | GEMM rate (GFLOP/s) | floor (ms) | "
              "reference / floor | package path / floor | share of the floor (floor / path; "
              "median of the rounds [min-max]) |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for clock in CLOCKS:
        for precision, values in rates[clock].items():
            rate = float(np.median(values))
            floor_ms = flops / rate / 1e6
            passes = walls[clock]
            paths = (["package bf16"] if precision == "bf16" else
                     [n for n in ("package fp32", *ABLATIONS) if n in passes])
            for path in paths or ["—"]:
                cells = [f"{np.median(passes[n]) / floor_ms:.2f}×" if n in passes else "—"
                         for n in ("reference", path)]
                if path in passes:  # floor and pass measured in the same round
                    shares = [flops / r / 1e6 / w
                              for r, w in zip(values, passes[path], strict=True)]
                    cells.append(f"{np.median(shares):.2f} "
                                 f"[{min(shares):.2f}-{max(shares):.2f}]")
                else:
                    cells.append("—")
                lines.append(f"| {precision}, {clock} | {path} | {rate:.0f} | {floor_ms:.0f} | "
                             + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
