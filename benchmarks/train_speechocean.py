#!/usr/bin/env python3
"""Proof that the recipe learns: a small wav2vec2 trained on speechocean762, CPU, bounded time.

Not a CI test. Steps:

1. ``recipes/prepare.py --corpus kaldi`` on the speechocean762 subset (its ``train`` split;
   3 of its 28 speakers become valid; ``test`` is the corpus's own 16 test speakers);
2. a *plain* wav2vec2 checkpoint with random weights and no heads (a small architecture,
   ``--hidden_size``, 2 layers) written as a transformers folder, so the recipe's
   plain-wav2vec2 init path is used;
3. ``recipes/train.py hparams/train.yaml`` with ``freeze: none`` for ``--epochs`` epochs;
4. its ``results.json`` next to the baselines computed from the manifests: the majority
   gender class of train, and the mean train age, predicted for every test utterance.

Usage::

    python benchmarks/train_speechocean.py [--data /work/shared/data/speechocean762]
        [--output_folder /tmp/agegender_speechocean] [--epochs 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "speechocean762"


def write_plain_wav2vec2(folder: Path, hidden_size: int, seed: int = 0) -> Path:
    """A random-weight ``Wav2Vec2Model`` saved as a transformers folder (no labels, no heads)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=2 * hidden_size, conv_dim=[hidden_size] * 7,
        num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
        layerdrop=0.0, mask_time_prob=0.05,
    )
    Wav2Vec2Model(config).save_pretrained(folder)
    return folder


def baselines(train_csv: Path, test_csv: Path) -> dict:
    """Majority gender class and mean age of train, scored on test."""
    def rows(path):
        with open(path, encoding="utf-8") as fin:
            return list(csv.DictReader(fin))

    train, test = rows(train_csv), rows(test_csv)
    genders = [r["gender"] for r in train if r["gender"]]
    majority = max(sorted(set(genders)), key=genders.count)
    mean_age = sum(float(r["age"]) for r in train if r["age"]) / sum(1 for r in train if r["age"])
    test_ages = [float(r["age"]) for r in test if r["age"]]
    test_g = [r["gender"] for r in test if r["gender"]]
    classes = sorted(set(test_g))
    return {
        "majority_class": majority,
        "mean_train_age": mean_age,
        "mae": sum(abs(a - mean_age) for a in test_ages) / len(test_ages),
        "acc": sum(g == majority for g in test_g) / len(test_g),
        # UAR of a constant prediction: recall 1 for its class, 0 for the others
        "uar": (1.0 if majority in classes else 0.0) / len(classes),
        "test_class_counts": {c: test_g.count(c) for c in classes},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output_folder", type=Path,
                        default=Path("/tmp/agegender_speechocean"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not (args.data / "train" / "wav.scp").is_file():
        print(f"error: {args.data}: not the speechocean762 subset", file=sys.stderr)
        return 2
    out = args.output_folder
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "recipes"))
    from prepare import prepare

    manifests = prepare("kaldi", args.data, out / "manifests")
    init = write_plain_wav2vec2(out / "init", args.hidden_size)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable, str(ROOT / "recipes" / "train.py"), str(ROOT / "hparams" / "train.yaml"),
        "--init_from", str(init), "--output_folder", str(out / "run"),
        "--train_csv", str(manifests["train"]), "--valid_csv", str(manifests["valid"]),
        "--test_csv", str(manifests["test"]), "--number_of_epochs", str(args.epochs),
        "--freeze", "none", "--lr_encoder", "0.001", "--lr_heads", "0.001",
        "--max_train_seconds", "3.0", "--max_batch_seconds", "24.0", "--max_batch_ex", "8",
        "--eval_batch_size", "8", "--age_loss", "!name:torch.nn.functional.l1_loss",
        "--noprogressbar",
    ]
    start = time.time()
    subprocess.run(cmd, env=env, check=True)
    minutes = (time.time() - start) / 60
    results = json.loads((out / "run" / "results.json").read_text(encoding="utf-8"))
    base = baselines(manifests["train"], manifests["test"])
    report = {"train_minutes": minutes, "epochs": args.epochs, "hidden_size": args.hidden_size,
              "model": results, "baseline": base}
    (out / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nspeechocean762 test split ({results['n_utterances']} utterances, "
          f"classes {base['test_class_counts']}); training {minutes:.1f} min, "
          f"{args.epochs} epochs, {args.threads} threads")
    print("| | age MAE (years) | gender accuracy | gender UAR |")
    print("| --- | --- | --- | --- |")
    print(f"| recipe, wav2vec2 hidden {args.hidden_size} x 2 layers, random init | "
          f"{results['mae']:.2f} | {results['acc']:.3f} | {results['uar']:.3f} |")
    print(f"| baseline: mean train age {base['mean_train_age']:.1f}, majority "
          f"'{base['majority_class']}' | {base['mae']:.2f} | {base['acc']:.3f} | "
          f"{base['uar']:.3f} |")
    print("MAE per band:", {k: (None if v is None else round(v, 2))
                            for k, v in results["mae_per_band"].items()})
    print("confusion (rows true, columns predicted,", results["labels"], "):",
          results["confusion"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
