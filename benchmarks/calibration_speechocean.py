#!/usr/bin/env python3
"""Worked example and check of the calibration on speechocean762: do 90 % intervals hold 90 %?

Not a CI test. Steps:

1. ``agegender predict`` (``--vad none``) of all 440 utterances with the model ``--source``
   (once; the table and a truth CSV ``path,speaker,age,gender`` go to ``--output_folder``);
2. for each of ``--splits`` random halves of the utterances (seeded): ``agegender
   calibrate`` on one half (:func:`agegender_sb.report.calibration.calibrate_table` with a truth
   CSV naming that half only), the calibration applied to the other half's rows, and
   their coverage and mean width (:func:`agegender_sb.report.evaluation.evaluate_pairs`, bootstrap
   over speakers);
3. a summary: the first split's numbers with their 95 % interval, and the coverage over all
   splits (mean, min, max). Split-conformal intervals promise at least the level on data
   exchangeable with the calibration half; here both halves come from the same corpus.
   ``--by-speaker`` splits speakers instead of utterances (no speaker in both halves).

Usage::

    python benchmarks/calibration_speechocean.py --source MODEL [--data DIR]
        [--output_folder /tmp/agegender_calibration] [--coverage 0.9] [--splits 20]
        [--by-speaker] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "speechocean762"


def read_kaldi(data: Path) -> list[dict]:
    """``[{"path", "speaker", "age", "gender"}]`` for every utterance of train/ and test/."""
    out = []
    for split in ("train", "test"):
        d = data / split

        def table(name, d=d):
            return dict(line.split(maxsplit=1) for line in
                        (d / name).read_text().splitlines() if line.strip())

        wavs, u2s = table("wav.scp"), table("utt2spk")
        ages, genders = table("spk2age"), table("spk2gender")
        for utt, rel in sorted(wavs.items()):
            spk = u2s[utt].strip()
            out.append({"path": str((data / rel.strip()).resolve()), "speaker": spk,
                        "age": ages[spk].strip(), "gender": genders[spk].strip()})
    return out


def write_truth(path: Path, entries: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "speaker", "age", "gender"])
        writer.writeheader()
        writer.writerows(entries)
    return path


def halves(entries, rng, by_speaker: bool):
    if by_speaker:
        speakers = sorted({e["speaker"] for e in entries})
        rng.shuffle(speakers)
        first = set(speakers[:len(speakers) // 2])
        return ([e for e in entries if e["speaker"] in first],
                [e for e in entries if e["speaker"] not in first])
    order = list(entries)
    rng.shuffle(order)
    return order[:len(order) // 2], order[len(order) // 2:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="model: hub id or folder")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output_folder", type=Path,
                        default=Path("/tmp/agegender_calibration"))
    parser.add_argument("--coverage", type=float, default=0.9)
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--by-speaker", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from agegender_sb.cli import main as agegender
    from agegender_sb.report.calibration import calibrate_table
    from agegender_sb.report.evaluation import evaluate_pairs
    from agegender_sb.report.matching import match_by_kind
    from agegender_sb.report.scoring import read_predictions, read_truth

    out = args.output_folder
    out.mkdir(parents=True, exist_ok=True)
    entries = read_kaldi(args.data)
    write_truth(out / "truth.csv", entries)
    table = out / "predictions.csv"
    if not table.exists():
        listing = out / "files.txt"
        listing.write_text("".join(e["path"] + "\n" for e in entries))
        status = agegender(["predict", str(listing), "--source", args.source, "--vad", "none",
                            "--device", args.device, "-o", str(table)])
        if status != 0:
            print(f"agegender predict failed ({status})", file=sys.stderr)
            return status
    rows, labels = read_predictions(table)
    rng = random.Random(args.seed)
    results = []
    for split in range(args.splits):
        fit, held = halves(entries, rng, args.by_speaker)
        fit_truth = write_truth(out / "fit_truth.csv", fit)
        cal = calibrate_table(table, fit_truth, levels=(args.coverage,))
        held_truth = write_truth(out / "held_truth.csv", held)
        key, truth = read_truth(held_truth, labels)
        pairs = match_by_kind(rows, key, truth)["file"]
        calibrated = [(cal.calibrated_row(r), t) for r, t in pairs]
        speakers = [t["speaker"] for _, t in pairs]
        ev = evaluate_pairs(calibrated, labels, speakers, by=(),
                            replicates=1000 if split == 0 else 200)
        results.append({"n_fit": cal.kinds["file"]["n"], "n_held": len(pairs),
                        "half_width": cal.kinds["file"]["groups"]["all"]["half_width"],
                        "groups": sorted(cal.kinds["file"]["groups"]),
                        **{k: ev["overall"][k] for k in ("coverage", "width", "mae", "ece")
                           if k in ev["overall"]}})
        if split == 0:
            cal.save(out / "calibration.json")
    covers = [r["coverage"]["value"] for r in results]
    first = results[0]
    summary = {"source": args.source, "level": args.coverage, "splits": args.splits,
               "split_by": "speaker" if args.by_speaker else "utterance",
               "first_split": first,
               "coverage_over_splits": {"mean": sum(covers) / len(covers),
                                        "min": min(covers), "max": max(covers)}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    c, w = first["coverage"], first["width"]
    print(f"{args.source}: calibrated on {first['n_fit']} utterances (groups: "
          f"{', '.join(first['groups'])}), {args.coverage:.0%} intervals on the other "
          f"{first['n_held']}: coverage {c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}], "
          f"mean width {w['value']:.1f} years")
    s = summary["coverage_over_splits"]
    print(f"over {args.splits} random halves ({summary['split_by']}s): coverage mean "
          f"{s['mean']:.3f}, min {s['min']:.3f}, max {s['max']:.3f}")
    print(f"wrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
