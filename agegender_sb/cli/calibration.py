"""The ``calibrate`` and ``evaluate`` commands, and the calibration of ``predict``.

``agegender calibrate TABLE --truth CSV -o calibration.json`` fits a
:class:`~agegender_sb.report.calibration.Calibration`; ``agegender predict --calibration FILE
[--age-bands EDGES]`` applies it (:func:`predict_calibration`); ``agegender evaluate TABLE
--truth CSV [--json]`` reports metrics with bootstrap intervals
(:mod:`agegender_sb.report.evaluation`). Nothing heavy is imported before the arguments are
parsed. Exit status 2, with one line naming the file and the problem, for bad input.

Example
-------
>>> import argparse
>>> sub = argparse.ArgumentParser().add_subparsers()
>>> add_commands(sub)
>>> sorted(sub.choices)
['calibrate', 'evaluate']
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agegender_sb.cli.common import count, error

__all__ = ["add_commands", "cmd_calibrate", "cmd_evaluate", "predict_calibration",
           "age_bands_arg"]

GROUPINGS = ("gender", "age_band")


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a coverage between 0 and 1, got {text}")
    return value


def age_bands_arg(text: str) -> tuple[float, ...]:
    """``--age-bands``: increasing edges in years, e.g. ``0,13,20,40,65,120``."""
    from agegender_sb.report.calibration import parse_age_bands

    try:
        return parse_age_bands(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _groupings(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip() and x.strip() != "none")
    bad = [x for x in names if x not in GROUPINGS]
    if bad:
        raise argparse.ArgumentTypeError(f"--by: {', '.join(bad)} unknown; use "
                                         f"{', '.join(GROUPINGS)} or none")
    return names


def add_commands(sub) -> None:
    """Add ``calibrate`` and ``evaluate`` to the ``agegender`` subcommands ``sub``."""
    c = sub.add_parser(
        "calibrate", help="fit calibrated age intervals and gender probabilities on a "
                          "labelled table",
        description="Fit split-conformal age intervals (per row kind and predicted gender, "
                    "pooled where a gender has too few rows), a gender temperature and the "
                    "residual distribution for age-band probabilities, from a table "
                    "agegender predict -o wrote and the true labels. Apply with agegender "
                    "predict --calibration FILE. See docs/calibration.md.")
    c.add_argument("table", help="CSV or JSONL table written by agegender predict -o")
    c.add_argument("--truth", required=True, metavar="CSV",
                   help="true labels: a 'path' or 'speaker' column and 'age' (and 'gender')")
    c.add_argument("--output", "-o", required=True, help="calibration file to write (.json)")
    c.add_argument("--coverage", type=_level, nargs="+", default=[0.9], metavar="LEVEL",
                   help="coverage levels of the intervals; predict applies the first "
                        "(default: 0.9)")
    c.add_argument("--min-group", type=count, default=30, metavar="N",
                   help="fewest rows a predicted gender needs for intervals of its own "
                        "(default: %(default)s)")
    c.set_defaults(func=cmd_calibrate)

    e = sub.add_parser(
        "evaluate", help="metrics with bootstrap confidence intervals, overall and per group",
        description="MAE, RMSE, bias, interval coverage and width, gender accuracy, UAR, "
                    "calibration error (ECE), Brier score and log loss of a table against "
                    "true labels, overall and per group, each with a bootstrap interval "
                    "that resamples speakers where they are known.")
    e.add_argument("table", help="CSV or JSONL table written by agegender predict")
    e.add_argument("--truth", required=True, metavar="CSV",
                   help="true labels: a 'path' or 'speaker' column, 'age' and/or 'gender', "
                        "and (with 'path') optionally 'speaker'")
    e.add_argument("--json", action="store_true", help="print JSON (docs/calibration.md)")
    e.add_argument("--by", type=_groupings, default=GROUPINGS, metavar="GROUPS",
                   help="groups: gender, age_band (both crossed too), or none (default: "
                        "gender,age_band)")
    e.add_argument("--age-bands", type=age_bands_arg, default=None, metavar="EDGES",
                   help="age band edges (default: 0,15,30,45,60 and an open last band)")
    e.add_argument("--kind", choices=("file", "segment", "file-speaker", "speaker"),
                   help="rows to score (default: file rows for a truth by path; speaker "
                        "rows, else turn speakers, for a truth by speaker)")
    e.add_argument("--speakers", metavar="FILE",
                   help="Kaldi utt2spk or CSV path,speaker: resample the files' speakers")
    e.add_argument("--replicates", type=count, default=1000,
                   help="bootstrap resamples (default: %(default)s)")
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    e.set_defaults(func=cmd_evaluate)


def _input_errors():
    from agegender_sb.batch.inputs import InputError
    from agegender_sb.report.calibration import CalibrationError
    from agegender_sb.report.scoring import PlotError

    return (CalibrationError, PlotError, InputError, OSError)


# ---------------------------------------------------------------------------- calibrate
def cmd_calibrate(args) -> int:
    from agegender_sb.report.calibration import calibrate_table

    out = Path(args.output)
    try:
        for given in (args.table, args.truth):
            if out.resolve() == Path(given).resolve():
                raise OSError(f"--output {out} is an input ({given}): refusing to "
                              "overwrite it")
        cal = calibrate_table(args.table, args.truth, levels=args.coverage,
                              min_group=args.min_group)
        cal.save(out)
    except _input_errors() as err:
        error("calibrate", err)
        return 2
    print(f"wrote {out} (model {cal.fingerprint})")
    for kind, k in cal.kinds.items():
        widths = ", ".join(
            f"{name} {float(g['half_width'][f'{cal.level:g}']):.2f} (n={g['n']})"
            for name, g in k["groups"].items())
        temp = "" if k["temperature"] is None else (f"; gender temperature "
                                                    f"{k['temperature']:.3f} (n={k['n_gender']})")
        print(f"{kind} rows: {cal.level:.0%} interval half-width in years: {widths}{temp}")
    return 0


# ---------------------------------------------------------------------------- evaluate
def evaluation_of(table, truth, kind=None, speakers=None, **options) -> dict:
    """What ``agegender evaluate`` reports, as a dict (``options``: of
    :func:`agegender_sb.report.evaluation.evaluate`).

    Raises
    ------
    CalibrationError, PlotError, InputError
        Naming the file and the problem.
    """
    from agegender_sb.batch.inputs import read_speakers
    from agegender_sb.report.calibration import CalibrationError
    from agegender_sb.report.evaluation import evaluate_pairs
    from agegender_sb.report.matching import match_by_kind, primary_kind, speaker_of
    from agegender_sb.report.scoring import read_predictions, read_truth

    rows, labels = read_predictions(table)
    key, entries = read_truth(truth, labels)
    matched = match_by_kind(rows, key, entries, Path(truth).resolve().parent)
    kind = kind or primary_kind(matched)
    if kind is None or not matched.get(kind):
        what = f"{kind} row" if kind else "row"
        raise CalibrationError(f"{truth}: no {key} of the truth table matches a {what} of "
                               f"{table}")
    pairs = matched[kind]
    spk_map = read_speakers(speakers) if speakers else None
    result = evaluate_pairs(pairs, labels, [speaker_of(r, e, spk_map) for r, e in pairs],
                            **options)
    if not result["overall"]:
        raise CalibrationError(f"{truth}: none of the {len(pairs)} matched {kind} row(s) "
                               "has a prediction and a true age or gender")
    return {"table": str(table), "truth": str(truth), "kind": kind,
            "matched": {k: len(v) for k, v in matched.items()}, **result}


def cmd_evaluate(args) -> int:
    import json

    from agegender_sb.report.evaluation import DEFAULT_EDGES, summary_lines

    bands = DEFAULT_EDGES if args.age_bands is None else args.age_bands
    try:
        result = evaluation_of(args.table, args.truth, args.kind, args.speakers, by=args.by,
                               age_bands=bands, replicates=args.replicates, seed=args.seed)
    except _input_errors() as err:
        error("evaluate", err)
        return 2
    if args.json:
        from agegender_sb.report.evaluation import json_safe

        print(json.dumps(json_safe(result), indent=2))
        return 0
    print(f"{result['table']}: {result['n']} {result['kind']} row(s) matched by "
          f"{args.truth} ({result['n_without_prediction']} without a prediction); gender "
          f"probabilities: {result['probabilities']}")
    for line in summary_lines(result):
        print(line)
    return 0


# ---------------------------------------------------------------------------- predict
def predict_calibration(args, clf):
    """The calibration ``agegender predict`` applies: ``--calibration FILE`` (``none``: not
    even the model folder's), else the model folder's ``calibration.json``; with
    ``--age-bands``, adding their probabilities. None without one.

    Raises
    ------
    CalibrationError
        Another model's calibration, an unreadable file, ``--age-bands`` without one.
    """
    from agegender_sb.report.calibration import Calibration, CalibrationError

    choice = getattr(args, "calibration", None)
    if choice is not None and choice.lower() == "none":
        cal = None
    elif choice:
        cal = Calibration.load(choice)
        cal.check_model(clf.fingerprint, clf.labels)
    else:
        cal = getattr(clf, "calibration", None)
    if getattr(args, "age_bands", None):
        if cal is None:
            raise CalibrationError("--age-bands needs a calibration (--calibration FILE, or "
                                   "a model folder with calibration.json)")
        cal = cal.with_options(bands=args.age_bands)
    return cal
