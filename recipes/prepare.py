#!/usr/bin/env python3
"""Data preparation for fine-tuning the age/gender model: corpus -> train/valid/test CSVs.

Usage::

    python recipes/prepare.py --corpus {kaldi,commonvoice,timit,csv} \\
        --data_folder DIR --output_folder DIR [--child_age N] [options]

or, from a SpeechBrain recipe::

    from prepare import prepare
    run_on_main(prepare, kwargs={"corpus": "kaldi", "data_folder": ..., "output_folder": ...})

Writes ``train.csv``, ``valid.csv`` and ``test.csv`` with the columns
``ID, wav, start, stop, duration, age, gender, speaker`` (see ``recipes/README.md``).
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpora import commonvoice, csv_table, kaldi, timit  # noqa: E402
from corpora.common import (  # noqa: E402
    DEFAULT_CHILD_AGE,
    SPLITS,
    PrepareError,
    Utterance,
    apply_child_rule,
    speaker_split,
    write_manifest,
)
from corpora.fingerprint import audio_files_under, describe_change, input_fingerprint  # noqa: E402

logger = logging.getLogger("prepare")

READERS = {
    "kaldi": kaldi.read_kaldi,
    "commonvoice": commonvoice.read_commonvoice,
    "timit": timit.read_timit,
    "csv": csv_table.read_csv_table,
}
#: ``corpus -> label_files(data_folder, **options)``: the files fingerprinted by content.
LABEL_FILES = {
    "kaldi": kaldi.label_files,
    "commonvoice": commonvoice.label_files,
    "timit": timit.label_files,
    "csv": csv_table.label_files,
}
#: Corpora whose carved splits are balanced by gender (TIMIT: both sexes in valid/test).
GENDER_BALANCED_CARVES = {"timit"}
OPTIONS_FILE = "prepare_options.json"


def _corpus_options(corpus: str) -> list[str]:
    params = inspect.signature(READERS[corpus]).parameters
    return [p for p in params if p not in ("data_folder", "skipped_log")]


def prepare(
    corpus: str,
    data_folder: str | Path,
    output_folder: str | Path,
    child_age: float = DEFAULT_CHILD_AGE,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 1234,
    overwrite: bool = False,
    **options,
) -> dict[str, Path]:
    """Prepare ``train.csv``, ``valid.csv`` and ``test.csv`` for one corpus.

    Parameters
    ----------
    corpus : str
        ``"kaldi"``, ``"commonvoice"``, ``"timit"`` or ``"csv"``.
    data_folder : path-like
        Corpus root (for ``csv``: the table or its folder).
    output_folder : path-like
        Where the CSVs (and ``prepare_options.json``) are written.
    child_age : float
        Utterances with ``age < child_age`` get gender ``child`` (overriding the
        corpus's male/female). Default 15: children are 0-14 years, as in aGender
        (children 7-14). ``0`` disables the rule.
    valid_fraction : float
        Fraction of speakers carved from train as ``valid`` when the corpus has no
        validation split (speaker-disjoint, seeded).
    test_fraction : float
        Fraction of speakers put in ``test`` when the corpus has no split at all
        (Common Voice ``validated.tsv``, ``csv`` without split column).
    seed : int
        Seed of the speaker-disjoint splits (deterministic for a given corpus).
    overwrite : bool
        Re-prepare even if the outputs exist. Without it, existing outputs made with
        the same options from unchanged inputs are kept (the step is skipped); outputs
        made with other options, or from inputs that changed since (label file
        contents, audio file list, sizes or mtimes; see ``corpora/fingerprint.py``),
        are re-prepared.
    **options
        Corpus-specific options (see ``recipes/README.md``), e.g. ``train_dir`` for
        Kaldi, ``path_column`` for csv, ``skip_unreadable`` for Common Voice.

    Returns
    -------
    dict
        ``split -> Path`` of the CSV files.

    Raises
    ------
    PrepareError
        Bad input (missing folder/file, malformed line), naming the file and line.
    """
    if corpus not in READERS:
        raise PrepareError(f"unknown corpus {corpus!r}; choose from {sorted(READERS)}")
    allowed = _corpus_options(corpus)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise PrepareError(f"options {unknown} do not apply to {corpus!r}; valid: {allowed}")
    data_folder = Path(data_folder).expanduser().resolve()
    output_folder = Path(output_folder).expanduser().resolve()
    if not data_folder.exists():
        raise PrepareError("data folder not found", data_folder)
    outputs = {split: output_folder / f"{split}.csv" for split in SPLITS}
    settings = {
        "corpus": corpus,
        "data_folder": str(data_folder),
        "child_age": float(child_age),
        "valid_fraction": float(valid_fraction),
        "test_fraction": float(test_fraction),
        "seed": int(seed),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(options.items())},
    }
    options_file = output_folder / OPTIONS_FILE
    if not overwrite and _up_to_date(outputs, options_file, settings, options):
        return outputs

    label_options = dict(options)
    if corpus == "commonvoice":
        options.setdefault("skipped_log", output_folder / "skipped_clips.txt")
    splits = READERS[corpus](data_folder, **options)
    balanced = corpus in GENDER_BALANCED_CARVES
    splits = _complete_splits(splits, valid_fraction, test_fraction, seed, balanced)
    _check(splits)
    wavs = {u.wav for rows in splits.values() for u in rows}
    settings["inputs"] = _fingerprint(corpus, data_folder, label_options, wavs)

    output_folder.mkdir(parents=True, exist_ok=True)
    # an interrupted run must not leave an options file that vouches for mixed manifests
    options_file.unlink(missing_ok=True)
    for split in SPLITS:
        utts = apply_child_rule(splits[split], child_age)
        write_manifest(utts, outputs[split])
        _log_summary(split, utts)
    # written last: its presence (with the same settings) marks a complete preparation
    tmp = options_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    tmp.replace(options_file)
    return outputs


def _up_to_date(outputs: dict, options_file: Path, settings: dict, options: dict) -> bool:
    """Whether existing outputs were made with ``settings`` from unchanged inputs (logged)."""
    folder = options_file.parent
    if not all(p.is_file() for p in outputs.values()):
        return False
    try:
        previous = json.loads(options_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    recorded = previous.pop("inputs", None) if isinstance(previous, dict) else None
    if previous != settings:
        logger.warning("%s: outputs exist but were made with other options; redoing", folder)
        return False
    try:
        wavs = _manifest_wavs(outputs.values())
        now = _fingerprint(settings["corpus"], Path(settings["data_folder"]), options, wavs)
    except (PrepareError, OSError, ValueError, KeyError) as err:  # the reader will say more
        why = f"cannot fingerprint the inputs ({err})"
    else:
        why = describe_change(recorded, now)
    if why is None:
        logger.info("%s: outputs exist, inputs unchanged; skipping preparation", folder)
        return True
    logger.warning("%s: the corpus changed since the outputs were made (%s); redoing", folder, why)
    return False


def _fingerprint(corpus: str, data_folder: Path, options: dict, wavs) -> dict:
    """Fingerprint of the corpus's label files and audio (manifest files + folder walk)."""
    audio = set(map(str, wavs)).union(audio_files_under(data_folder))
    return input_fingerprint(LABEL_FILES[corpus](data_folder, **options), audio)


def _manifest_wavs(paths) -> set[str]:
    """The ``wav`` column of existing manifests."""
    wavs: set[str] = set()
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            wavs.update(row["wav"] for row in csv.DictReader(f))
    return wavs


def _gender_strata(utts: list[Utterance]) -> dict[str, str | None]:
    return {u.speaker: u.gender for u in utts}


def _complete_splits(splits, valid_fraction, test_fraction, seed, balanced=False):
    """Carve the missing splits speaker-disjointly (balanced by gender if ``balanced``)."""
    splits = dict(splits)
    if "all" in splits:
        rows = splits.pop("all")
        strata = _gender_strata(rows) if balanced else None
        carved = speaker_split(
            rows, {"valid": valid_fraction, "test": test_fraction}, seed, strata
        )
        for split, utts in carved.items():
            splits.setdefault(split, []).extend(utts)
    if "valid" not in splits:
        if not splits.get("train"):
            raise PrepareError("no train utterances to carve a valid split from")
        strata = _gender_strata(splits["train"]) if balanced else None
        carved = speaker_split(splits["train"], {"valid": valid_fraction}, seed, strata)
        splits["train"], splits["valid"] = carved["train"], carved["valid"]
    for split in SPLITS:
        splits.setdefault(split, [])
    return splits


def _check(splits: dict[str, list[Utterance]]) -> None:
    seen: dict[str, str] = {}
    for split in SPLITS:
        for utt in splits[split]:
            if utt.id in seen:
                raise PrepareError(f"utterance ID {utt.id!r} in both {seen[utt.id]} and {split}")
            seen[utt.id] = split
        if not splits[split]:
            logger.warning("%s split is empty", split)
    speakers = {s: {u.speaker for u in splits[s]} for s in SPLITS}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        shared = speakers[a] & speakers[b]
        if shared:
            logger.warning("%d speakers appear in both %s and %s", len(shared), a, b)


def _log_summary(split: str, utts: list[Utterance]) -> None:
    counts = {g: sum(u.gender == g for u in utts) for g in ("female", "male", "child", None)}
    hours = sum(u.duration for u in utts) / 3600
    logger.info(
        "%s: %d utterances, %d speakers, %.2f h, with age %d, gender %s",
        split,
        len(utts),
        len({u.speaker for u in utts}),
        hours,
        sum(u.age is not None for u in utts),
        {("unknown" if k is None else k): v for k, v in counts.items()},
    )


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``prepare.py``.

    Returns
    -------
    argparse.ArgumentParser
        The parser; corpus-specific options not given on the command line are absent
        from the parsed namespace.
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", required=True, choices=sorted(READERS))
    p.add_argument("--data_folder", required=True, type=Path)
    p.add_argument("--output_folder", required=True, type=Path)
    p.add_argument(
        "--child_age",
        type=float,
        default=DEFAULT_CHILD_AGE,
        help="age < CHILD_AGE -> gender 'child' (default 15; 0 disables)",
    )
    p.add_argument("--valid_fraction", type=float, default=0.1)
    p.add_argument("--test_fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    s = argparse.SUPPRESS
    g = p.add_argument_group("kaldi")
    g.add_argument("--train_dir", default=s, help="default: train")
    g.add_argument("--valid_dir", default=s, help="default: valid if present, else carved")
    g.add_argument("--test_dir", default=s, help="default: test")
    g = p.add_argument_group("commonvoice")
    g.add_argument("--use_validated", action="store_true", default=s)
    g.add_argument("--keep_unlabelled", action="store_true", default=s)
    g.add_argument("--skip_unreadable", action="store_true", default=s)
    g = p.add_argument_group("csv")
    for name in (
        "table",
        "path_column",
        "age_column",
        "gender_column",
        "speaker_column",
        "split_column",
        "id_column",
        "start_column",
        "stop_column",
        "delimiter",
    ):
        g.add_argument(f"--{name}", default=s)
    return p  # fmt: skip


def main(argv=None) -> int:
    """Command-line entry point.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status (0 on success, 2 on bad input).
    """
    args = vars(build_parser().parse_args(argv))
    logging.basicConfig(
        level=logging.DEBUG if args.pop("verbose") else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        outputs = prepare(**args)
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for split, path in outputs.items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
