"""Alternatives to the default float32 path's operators, timed against them on this CPU.

One layer's worth of each operator at the full-size model's shapes for a 6 s utterance
(T = 299 frames, 16 heads of 64, hidden 1024, feed-forward 4096; the CNN's first layer on
96000 samples), one thread, the candidates of each group interleaved over ``--repeats``
rounds; the median time per call by the process's CPU time (the time it ran, not the time
another process held the core) and the largest absolute difference from the default's output.
The default path keeps a candidate only where it is faster here *and* within 1e-5.

- attention (after the projections): PyTorch's flash kernel for CPU (``F.scaled_dot_product_
  attention``, the default) against the explicit products ``bmm`` + ``softmax`` + ``bmm``
  (views of the projections, or contiguous copies), and a loop of per-head ``mm``;
- feed-forward up-projection and GELU: oneDNN Linear with the packed weight then in-place
  GELU (the default, ``backends.fast_linear.pack_linear_weights``) against the plain weight
  (oneDNN reorders it on every call), oneDNN's fused GELU post-op, and MKL (``F.linear``);
- q/k/v projections: three oneDNN Linear (the default) against one over the stacked weights;
- the CNN's first layer (a product over strided frames, layer norm, GELU): whole against
  blocks of 256 frames kept in cache (the default where the second layer runs as a
  convolution, on AVX2; where it runs as products over frames, on AVX-512, the first
  layer's frames are computed in ranges of 2049 as the second reads them, which this
  script does not time: ``cpu_speed._Rows.framed``, measured in whole passes);
- the CNN's second layer (kernel 3, stride 2, 512 → 512 channels over 19199 frames): oneDNN's
  channels-last convolution (the default where PyTorch runs AVX2 kernels) against one oneDNN
  product over the overlapping frames (a strided view, or copied contiguous first), with a
  packed weight (the default where it runs AVX-512 kernels, there in blocks of 1024 frames
  with their layer norm and GELU: ``cpu_speed.frame_products_faster``).

The first candidate of each group is the reference of the "vs" column.

Usage::

    python benchmarks/cpu_alternatives.py --repeats 15
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def groups():
    import torch
    import torch.nn.functional as F

    from agegender_sb.backends.cpu_speed import frames

    mk = torch.ops.mkldnn
    g = torch.Generator().manual_seed(0)
    T, H, hd, D, FF = 299, 16, 64, 1024, 4096
    qkv = torch.randn(T, 3, H, hd, generator=g)
    q, k, v = (qkv[:, i].transpose(0, 1) for i in range(3))  # [H, T, hd] views

    def explicit(q, k, v):
        s = torch.bmm(q, k.transpose(1, 2)).mul_(hd ** -0.5)
        return torch.bmm(torch.softmax(s, -1), v)

    def per_head():
        out = torch.empty(H, T, hd)
        for h in range(H):
            torch.mm(torch.softmax(torch.mm(q[h], k[h].t()).mul_(hd ** -0.5), -1), v[h],
                     out=out[h])
        return out

    attention = {
        "SDPA flash kernel (default)": lambda: F.scaled_dot_product_attention(
            q[None], k[None], v[None])[0],
        "bmm + softmax + bmm (views)": lambda: explicit(q, k, v),
        "bmm + softmax + bmm (contiguous)": lambda: explicit(q.contiguous(), k.contiguous(),
                                                             v.contiguous()),
        "per-head mm loop": per_head,
    }
    x = torch.randn(1, T, D, generator=g)
    w, b = torch.randn(FF, D, generator=g) / 32, torch.randn(FF, generator=g) * 0.1
    packed = mk._reorder_linear_weight(w)
    up = {
        "oneDNN packed weight + gelu_ (default)": lambda: torch.ops.aten.gelu_(
            mk._linear_pointwise(x, packed, b, "none", [], "")),
        "oneDNN plain weight + gelu_": lambda: torch.ops.aten.gelu_(
            mk._linear_pointwise(x, w, b, "none", [], "")),
        "oneDNN fused GELU post-op": lambda: mk._linear_pointwise(x, packed, b, "gelu", [],
                                                                  "none"),
        "MKL F.linear + gelu_": lambda: torch.ops.aten.gelu_(F.linear(x, w, b)),
    }
    ws = [(mk._reorder_linear_weight(torch.randn(D, D, generator=g) / 32),
           torch.randn(D, generator=g)) for _ in range(3)]
    w3 = mk._reorder_linear_weight(torch.cat([a.to_dense() for a, _ in ws]))
    b3 = torch.cat([c for _, c in ws])
    projections = {
        "three oneDNN Linear (default)": lambda: [
            mk._linear_pointwise(x, a, c, "none", [], "") for a, c in ws],
        "one oneDNN Linear, stacked q/k/v": lambda: mk._linear_pointwise(x, w3, b3, "none",
                                                                         [], ""),
    }
    wav = torch.randn(1, 96000, generator=g)
    w0, b0 = torch.randn(512, 10, generator=g), torch.randn(512, generator=g) * 0.1
    gamma, beta = 1 + 0.1 * torch.randn(512, generator=g), 0.1 * torch.randn(512, generator=g)

    def cnn_whole():
        y = F.linear(frames(wav.unsqueeze(-1), 10, 5), w0, b0)
        return torch.ops.aten.gelu_(F.layer_norm(y, (512,), gamma, beta, 1e-5))

    def cnn_blocks(rows=256):
        fr = frames(wav.unsqueeze(-1), 10, 5)[0]
        out = torch.empty(1, fr.shape[0], 512)
        for s in range(0, fr.shape[0], rows):
            y = F.layer_norm(torch.addmm(b0, fr[s:s + rows], w0.t()), (512,), gamma, beta, 1e-5)
            out[0, s:s + rows] = torch.ops.aten.gelu_(y)
        return out

    cnn = {"whole": cnn_whole, "blocks of 256 frames (default)": cnn_blocks}
    h1 = torch.randn(1, 19199, 512, generator=g)  # [B, T, C] after the first layer
    wk = torch.randn(512, 512, 3, generator=g) / 40  # [out, in, kernel]
    bk = torch.randn(512, generator=g) * 0.1
    wcl = wk.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    wfr = mk._reorder_linear_weight(wk.permute(0, 2, 1).reshape(512, 3 * 512).contiguous())

    def conv_channels_last():  # FastFeatureEncoder._convolution
        y = F.conv2d(h1.transpose(1, 2).unsqueeze(2), wcl, bk, stride=(1, 2))
        return y.squeeze(2).transpose(1, 2).contiguous()

    conv = {
        "channels-last convolution (default on AVX2)": conv_channels_last,
        "one product over frames (view; AVX-512)": lambda: mk._linear_pointwise(
            frames(h1, 3, 2), wfr, bk, "none", [], ""),
        "one product over frames (contiguous)": lambda: mk._linear_pointwise(
            frames(h1, 3, 2).contiguous(), wfr, bk, "none", [], ""),
    }
    return {"attention, one layer": attention, "feed-forward up + GELU, one layer": up,
            "q/k/v projections, one layer": projections, "CNN first layer + LN + GELU": cnn,
            "CNN second layer (k=3, stride 2)": conv}


def _tensor(out):
    import torch

    return torch.cat(out, -1) if isinstance(out, list) else out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               "?")
    lines = [f"{cpu}, {args.threads} thread(s), torch {torch.__version__}; median CPU time "
             f"per call over {args.repeats} interleaved rounds [min-max]; \"vs\": against the "
             "first candidate of each group.", "",
             "| operator | candidate | ms per call | vs first | max abs diff from first |",
             "| --- | --- | ---: | ---: | ---: |"]
    with torch.inference_mode():
        for group, runs in groups().items():
            ref = _tensor(next(iter(runs.values()))())
            diffs = {n: float((_tensor(f()) - ref).abs().max()) for n, f in runs.items()}
            times = {n: [] for n in runs}
            for r in range(args.repeats):
                names = list(runs)
                for n in names[r % len(names):] + names[:r % len(names)]:
                    start = time.process_time()
                    runs[n]()
                    times[n].append((time.process_time() - start) * 1e3)
            base = float(np.median(next(iter(times.values()))))
            for n, t in times.items():
                med = float(np.median(t))
                lines.append(f"| {group} | {n} | {med:.2f} [{min(t):.2f}-{max(t):.2f}] | "
                             f"{med / base:.2f}× | {diffs[n]:.1e} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
