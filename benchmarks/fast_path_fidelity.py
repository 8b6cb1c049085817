"""How far the opt-in fast path (``agegender_sb.backends.fast_paths.enable_fast_path``) moves the
outputs of the default float32 path, on real speech, with its speed beside it.

Both models are loaded in one process from the same checkpoint (default: the full-size
24-layer model with random weights, built as ``benchmarks/speed.py`` builds it) and run on each
utterance in turn (float32, then the fast path: interleaved, so both see the same machine
load). Reported: the largest and median absolute deviations (age output, gender logits,
embedding), how often the age stays within 1 year and the gender label is unchanged, and the
speed ratio.

Random heads give ages bunched in a few years (their outputs barely vary between utterances), so
the age comparison is also given with the age head *rescaled* after the fact: its output
``z`` (both paths share the head) is mapped affinely so that the float32 ages of the corpus
have mean 35 and standard deviation 15 years, i.e. ``age = 35 + 15 (z - mean) / std`` years,
applied to both paths: a head spreading ages as a trained one does, and the same
embedding deviations.

Usage::

    python benchmarks/fast_path_fidelity.py                         # 440 speechocean762 files
    python benchmarks/fast_path_fidelity.py --max-files 20 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def corpus_files(root: Path) -> list[Path]:
    """The utterances of ``train/wav.scp`` and ``test/wav.scp`` (paths relative to root)."""
    files = []
    for part in ("train", "test"):
        scp = root / part / "wav.scp"
        for line in scp.read_text().splitlines():
            if line.strip():
                files.append(root / line.split(maxsplit=1)[1])
    return files


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="audEERING-layout folder (default: random 24-layer)")
    parser.add_argument("--workdir", help="where the random checkpoint is kept")
    parser.add_argument("--data", help="speechocean762 root (train/ and test/ with wav.scp)")
    parser.add_argument("--kind", default="int8", choices=("bf16", "int8", "int8-cnn"))
    parser.add_argument("--max-files", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args(argv)

    import torch
    from paths import SPEECHOCEAN
    from speed import build_checkpoint

    from agegender_sb import AgeGenderClassifier
    from agegender_sb.backends.fast_paths import enable_fast_path

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint is None:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="agegender-fidelity-"))
        args.checkpoint = str(build_checkpoint(workdir / "random-24", 24))
    files = corpus_files(Path(args.data) if args.data else SPEECHOCEAN)[: args.max_files]

    fp32 = AgeGenderClassifier.from_hparams(source=args.checkpoint)
    fast = AgeGenderClassifier.from_hparams(source=args.checkpoint)
    enable_fast_path(fast.mods.model, args.kind)
    out = {"fp32": [], "fast": []}
    wall = {"fp32": 0.0, "fast": 0.0}
    audio_s = 0.0
    fp32.predict_batch(fp32.load_audio(files[0]))  # warm-up
    fast.predict_batch(fast.load_audio(files[0]))
    for path in files:
        wav = fp32.load_audio(path)
        audio_s += wav.shape[-1] / 16000
        for name, clf in (("fp32", fp32), ("fast", fast)):
            start = time.perf_counter()
            pred = clf.predict_batch(wav)
            wall[name] += time.perf_counter() - start
            with torch.inference_mode():
                z = clf.mods.model.age_head(pred.embedding).squeeze(-1)
            out[name].append((float(pred.age_raw[0]), pred.gender_logits[0].numpy(),
                              pred.embedding[0].numpy(), float(z[0]), pred.gender[0]))

    def col(name, i):
        return np.array([o[i] for o in out[name]])

    age32, agefast = 100 * col("fp32", 0), 100 * col("fast", 0)
    logit32, logitfast = np.stack(col("fp32", 1)), np.stack(col("fast", 1))
    emb32, embfast = np.stack(col("fp32", 2)), np.stack(col("fast", 2))
    z32, zfast = col("fp32", 3), col("fast", 3)
    mean, std = z32.mean(), z32.std()
    scaled32 = 35 + 15 * (z32 - mean) / std
    scaledfast = 35 + 15 * (zfast - mean) / std
    same_gender = np.array([a[4] == b[4] for a, b in zip(out["fp32"], out["fast"])])
    res = {
        "kind": args.kind, "files": len(files), "audio_s": audio_s,
        "threads": torch.get_num_threads(),
        "rtf_fp32": wall["fp32"] / audio_s, "rtf_fast": wall["fast"] / audio_s,
        "speedup_fast_over_fp32": wall["fp32"] / wall["fast"],
        "age_years_max_dev": float(np.abs(agefast - age32).max()),
        "age_years_median_dev": float(np.median(np.abs(agefast - age32))),
        "age_years_fp32_std": float(age32.std()),
        "age_within_1y": float(np.mean(np.abs(agefast - age32) <= 1.0)),
        "scaled_age_max_dev": float(np.abs(scaledfast - scaled32).max()),
        "scaled_age_median_dev": float(np.median(np.abs(scaledfast - scaled32))),
        "scaled_age_within_1y": float(np.mean(np.abs(scaledfast - scaled32) <= 1.0)),
        "gender_logit_max_dev": float(np.abs(logitfast - logit32).max()),
        "gender_unchanged": float(same_gender.mean()),
        "embedding_max_dev": float(np.abs(embfast - emb32).max()),
        "embedding_median_dev": float(np.median(np.abs(embfast - emb32))),
        "embedding_fp32_max_abs": float(np.abs(emb32).max()),
    }
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
