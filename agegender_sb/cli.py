"""The ``agegender`` command: argument parsing, and writing what the package computes.

``predict`` labels files, folders, list files and speaker turns with age and gender and
writes a table (see :mod:`agegender_sb.tables` and ``docs/cli.md``); ``convert``, ``info``,
``export-onnx``. Nothing heavy is imported before the arguments are parsed, so ``--help``
answers at once. Exit status: 0 when every file was analysed (a file without speech counts
as analysed), 1 when any file failed (its row has ``error`` filled), 2 for usage errors (bad
options, unreadable inputs, an output that is an input or is locked by another process, a
model that cannot be loaded, a table that cannot be resumed).

Example
-------
>>> import contextlib, io
>>> out = io.StringIO()
>>> with contextlib.redirect_stdout(out):
...     status = main(["info", getfixture("tiny_checkpoint")])
>>> status, "labels: female, male, child" in out.getvalue()
(0, True)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from .cli_report import add_commands as _add_calibration_commands
from .cli_report import age_bands_arg
from .defaults import (
    DEFAULT_CONTEXT,
    DEFAULT_SOURCE,
    DEFAULT_VAD,
    DEFAULT_WINDOW,
    MAX_WHOLE_SECONDS,
    VAD_CHOICES,
)

__all__ = ["main", "build_parser"]

PROG = "agegender"


def _seconds(minimum: float, strict: bool):
    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(
                f"expected a number of seconds {'>' if strict else '>='} {minimum}, got {text}")
        return value
    return parse


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``agegender`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Speaker age and gender from speech (audEERING wav2vec2 model).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "predict", help="age and gender for audio files, folders, list files and turns",
        description="Write one row per file (and per speaker, turn or window when asked): "
                    "path, speaker, start, end, duration, speech, age, one probability per "
                    "gender label, gender, error. Exit status 1 if any file failed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio files, folders (searched recursively) or list files (.txt: one "
                        "path a line; .csv: a 'path' column, optionally 'start', 'end', "
                        "'speaker' for speaker turns)")
    p.add_argument("--source", default=DEFAULT_SOURCE,
                   help="model: hub id or folder, audEERING or SpeechBrain layout "
                        "(default: %(default)s)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="load a model folder whose hyperparams.yaml runs code this package "
                        "did not write (refused otherwise)")
    p.add_argument("--output", "-o", help="output table (default: stdout)")
    p.add_argument("--format", choices=("csv", "jsonl"),
                   help="table format (default: jsonl for *.jsonl outputs, else csv)")
    p.add_argument("--vad", choices=VAD_CHOICES, default=DEFAULT_VAD,
                   help="speech detector: silero (default), energy, or none (analyse every "
                        "sample, as the reference)")
    p.add_argument("--vad-threshold", type=_probability, default=None,
                   help="speech probability threshold of the silero detector (default 0.5)")
    p.add_argument("--min-speech", type=_seconds(0, False), default=None,
                   help="shortest speech region kept, seconds (default 0.25)")
    p.add_argument("--min-silence", type=_seconds(0, False), default=None,
                   help="shortest pause that splits speech, seconds (default 0.1)")
    p.add_argument("--speech-pad", type=_seconds(0, False), default=None,
                   help="seconds added on both sides of each speech region (default 0.03)")
    p.add_argument("--trim", action="store_true",
                   help="also cut spans analysed whole to their detected speech")
    p.add_argument("--speech-context", type=_seconds(0, False), default=DEFAULT_CONTEXT,
                   help="seconds of audio kept around detected speech where it is cut out "
                        "(default: %(default)s)")
    p.add_argument("--rttm", metavar="FILE",
                   help="speaker turns: an RTTM file (or a folder of them); file ids match "
                        "the audio files' stems")
    p.add_argument("--window", type=_seconds(0, True), default=DEFAULT_WINDOW,
                   help="window length in seconds for long spans (default: %(default)s)")
    p.add_argument("--hop", type=_seconds(0, True), default=None,
                   help="hop between windows in seconds (default: the window length)")
    p.add_argument("--max-whole", type=_seconds(0, False), default=MAX_WHOLE_SECONDS,
                   help="spans up to this many seconds are analysed in one pass; longer ones "
                        "in windows (default: %(default)s; 0: always windows)")
    p.add_argument("--segments", action="store_true",
                   help="also write one row per analysed window or speaker turn")
    p.add_argument("--speakers", metavar="FILE",
                   help="Kaldi utt2spk or CSV with path,speaker: add one row per speaker")
    p.add_argument("--resume", action="store_true",
                   help="skip inputs already analysed in --output and append the rest")
    p.add_argument("--device", default=None,
                   help="cpu or cuda (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=_count, default=1,
                   help="signals per forward pass; >1 pays off on GPU (default: %(default)s)")
    p.add_argument("--threads", type=_count, default=None,
                   help="CPU threads (default: the cores, shared out between torchrun ranks)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="torch (default) or onnx: ONNX Runtime, exporting the model once "
                        "(needs the 'onnx' extra)")
    p.add_argument("--onnx-path", metavar="FILE",
                   help="ONNX graph to use or create for --backend onnx (default: a cache file "
                        "named by a hash of the weights)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="autocast precision for the torch backend; fp16/bf16 trade fidelity "
                        "for speed (default: %(default)s)")
    p.add_argument("--fast-path", choices=("auto", "bf16", "int8"), default=None,
                   help="CPU only, faster and not the reference's numbers (see README): "
                        "bf16 (matrix products in bfloat16, for CPUs with AMX or "
                        "AVX512-BF16), int8 (the transformer's in int8), auto (bf16 where "
                        "the CPU has it, else int8; the table's record says which)")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration from agegender calibrate: adds age_low, age_high and "
                        "calibrated gender probabilities p_<label> (default: the model "
                        "folder's calibration.json if it has one; 'none': no calibration)")
    p.add_argument("--age-bands", type=age_bands_arg, metavar="EDGES",
                   help="with a calibration: one p_age_<lo>_<hi> probability column per band "
                        "between these edges (years), e.g. 0,13,20,40,65,120")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress report")
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("export-onnx", help="export the model to ONNX (audEERING's I/O names)")
    e.add_argument("src", help="hub id or folder (audEERING or SpeechBrain layout)")
    e.add_argument("out", help="output .onnx file")
    e.add_argument("--probabilities", action="store_true",
                   help="also output softmax probabilities, as 'probs_gender' ('logits_gender' "
                        "keeps raw logits, as in audEERING's export)")
    e.add_argument("--int8", action="store_true",
                   help="also write OUT with '-int8' before the suffix: int8 dynamic "
                        "quantisation of the MatMul weights (faster on CPU, less exact)")
    e.add_argument("--trust-remote-code", action="store_true", help=argparse.SUPPRESS)
    e.set_defaults(func=cmd_export_onnx)

    c = sub.add_parser("convert", help="audEERING-layout checkpoint -> SpeechBrain model folder")
    c.add_argument("src", help="hub id or folder of an audEERING-layout checkpoint")
    c.add_argument("dst", help="output folder")
    c.add_argument("--overwrite", action="store_true",
                   help="replace the model files of an existing, non-empty folder")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser("info", help="labels, layers, hidden size, parameters, sample rate")
    i.add_argument("src", nargs="?", default=DEFAULT_SOURCE,
                   help="hub id or folder (default: %(default)s)")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--trust-remote-code", action="store_true", help=argparse.SUPPRESS)
    i.set_defaults(func=cmd_info)
    _add_report_commands(sub)
    _add_calibration_commands(sub)  # calibrate, evaluate (agegender_sb.cli_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage error (2) or --help (0)
        return int(exc.code or 0)
    return int(args.func(args))


def _error(command: str, message) -> None:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr, flush=True)


def _load_errors():
    from .checkpoint import CheckpointError

    return (OSError, CheckpointError, ValueError)


def _load(source: str, device: str, backend: str = "torch", precision: str = "fp32",
          onnx_path: str | None = None, trust_remote_code: bool = False,
          fast_path: str | None = None):
    from .interface import AgeGenderClassifier

    return AgeGenderClassifier.from_hparams(
        source=source, run_opts={"device": device, "precision": precision}, backend=backend,
        onnx_path=onnx_path, trust_remote_code=trust_remote_code, fast_path=fast_path)


# ---------------------------------------------------------------------------- info, convert
def cmd_info(args) -> int:
    import json

    from .sources import describe

    try:
        info = describe(args.src, trust_remote_code=args.trust_remote_code)
    except _load_errors() as err:
        _error("info", err)
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    return 0


def cmd_convert(args) -> int:
    from .sources import convert

    try:
        dest = convert(args.src, args.dst, overwrite=args.overwrite)
    except _load_errors() as err:
        _error("convert", err)
        return 2
    print(f"wrote SpeechBrain model folder {dest}")
    return 0


def cmd_export_onnx(args) -> int:
    try:
        from .onnx_export import export_onnx, quantize_onnx_dynamic

        clf = _load(args.src, "cpu", trust_remote_code=args.trust_remote_code)
        out = export_onnx(clf.mods.model, args.out, clf.labels,
                          gender_probabilities=args.probabilities)
        print(f"wrote {out}")
        if args.int8:
            q = quantize_onnx_dynamic(out, out.with_name(out.stem + "-int8" + out.suffix))
            print(f"wrote {q}")
    except (ImportError, *_load_errors()) as err:
        _error("export-onnx", err)
        return 2
    return 0


# ---------------------------------------------------------------------------- predict
def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _check_output(output: Path, args, items) -> None:
    """Refuse an output that is one of the inputs (a list, audio, speaker or RTTM file)."""
    from .inputs import InputError
    from .tables import provenance_path

    named = [Path(p) for p in args.inputs if not Path(p).is_dir()]
    named += [Path(p) for p, _ in items]
    named += [Path(x) for x in (args.speakers, args.rttm) if x]
    for target in (output, provenance_path(output)):
        for path in named:
            if _same_file(target, path):
                raise InputError(f"--output {output} is an input ({path}): refusing to "
                                 "overwrite it")


def _detector(args):
    from .speech import make_detector

    options = {k: v for k, v in (("threshold", args.vad_threshold),
                                 ("min_speech_s", args.min_speech),
                                 ("min_silence_s", args.min_silence),
                                 ("speech_pad_s", args.speech_pad)) if v is not None}
    if args.vad == "none" and (options or args.trim):
        raise ValueError("--vad none takes no speech-detection options (--trim, --min-speech, "
                         "...)")
    if args.vad_threshold is not None and args.vad != "silero":
        raise ValueError("--vad-threshold is an option of --vad silero")
    return make_detector(None if args.vad == "none" else args.vad, **options)


def cmd_predict(args) -> int:
    from .distributed import Distributed, threads_per_rank
    from .inputs import InputError, collect_items, read_speakers
    from .tables import TableError, guess_format, lock_table

    dist = Distributed()
    if dist.active and not args.output:
        _error("predict", "a distributed run (torchrun) needs --output")
        return 2
    if args.resume and not args.output:
        _error("predict", "--resume needs --output")
        return 2
    try:
        from .analysis import Analyzer
        from .speech import read_rttm

        analyzer = Analyzer(None, window=args.window, hop=args.hop, max_whole=args.max_whole,
                            batch_size=args.batch_size, detector=_detector(args),
                            trim=args.trim, context=args.speech_context)
        fmt = guess_format(args.output, args.format)
        items = collect_items(args.inputs, read_rttm(args.rttm) if args.rttm else None)
        spk_map = read_speakers(args.speakers) if args.speakers else None
        if args.output:
            _check_output(Path(args.output), args, items)
    except (InputError, ValueError, OSError) as err:
        _error("predict", err)
        return 2
    import torch

    torch.set_num_threads(args.threads or threads_per_rank(dist.local_world))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        _error("predict", f"--device {device}: CUDA is not available")
        return 2
    device = dist.init(device)
    lock = None
    try:
        problem = None
        if args.output and dist.is_main:
            try:
                lock = lock_table(args.output)
            except TableError as err:
                problem = err
        if _any_rank_failed(dist, device, problem, "the output is locked (see rank 0)"):
            return 2
        return _predict(args, dist, device, fmt, items, spk_map, analyzer)
    finally:
        if lock is not None:
            lock.release()
        dist.close()


def _any_rank_failed(dist, device, problem, elsewhere: str) -> bool:
    """Whether any rank has a ``problem`` (a collective step: every rank must call it);
    reports this rank's problem, or ``elsewhere`` when another rank failed."""
    if dist.any_true(problem is not None, device):
        _error("predict", problem or elsewhere)
        return True
    return False


def _provenance(args, clf, analyzer, fmt) -> dict:
    from . import __version__

    return {"agegender_sb": __version__,
            "model": {"source": str(args.source), "fingerprint": clf.fingerprint,
                      "labels": list(clf.labels)},
            "backend": args.backend, "precision": args.precision,
            "fast_path": clf.fast_path,  # "auto" resolved
            "analysis": analyzer.settings(), "format": fmt}


def _predict(args, dist, device, fmt, items, spk_map, analyzer) -> int:
    from .rows import is_failure, iter_file_rows, speaker_rows
    from .tables import (
        TableError,
        TableWriter,
        check_provenance,
        prepare_resume,
        read_table,
        write_provenance,
    )

    # Every rank reaches each check below, so that a failure on one rank stops all of them
    # instead of leaving the others waiting at the next collective.
    problem = None
    try:
        clf = _load(args.source, device, args.backend, args.precision, args.onnx_path,
                    args.trust_remote_code, args.fast_path)
    except ImportError as err:  # --backend onnx without onnxruntime
        problem = err
    except _load_errors() as err:
        problem = f"cannot load the model {args.source}: {err}"
    if _any_rank_failed(dist, device, problem, "the model could not be loaded on another rank"):
        return 2
    analyzer.clf = clf
    labels = clf.labels
    output = Path(args.output) if args.output else None
    record = _provenance(args, clf, analyzer, fmt)
    # ---- calibration (agegender_sb.calibration): extra columns, filled as rows are written
    from .cli_report import predict_calibration

    cal = None
    try:
        cal = predict_calibration(args, clf)
    except ValueError as err:  # CalibrationError: another model's, unreadable
        problem = err
    if _any_rank_failed(dist, device, problem, "the calibration was refused on another rank"):
        return 2
    extra = cal.extra_columns() if cal is not None else ()
    record["calibration"] = cal.record() if cal is not None else None
    calibrated = cal.calibrated_row if cal is not None else None

    # ---- what is already done (--resume); the provenance of a new table
    existing: list[dict] = []
    try:
        if dist.is_main and args.resume and output.exists():
            check_provenance(output, record)
            existing = prepare_resume(output, labels, fmt, extra)
        elif dist.is_main and output is not None:
            write_provenance(output, record)
    except (TableError, OSError) as err:
        problem = err
    if _any_rank_failed(dist, device, problem, f"{output}: cannot be resumed (see rank 0)"):
        return 2
    try:
        if not dist.is_main and args.resume and output.exists():
            existing = read_table(output, labels, fmt, extra)
    except TableError as err:
        problem = err
    if _any_rank_failed(dist, device, problem, f"{output}: cannot be read (see the failing rank)"):
        return 2
    paths = [p for p, _ in items]
    input_set = set(paths)
    results: dict[str, dict] = {}  # path -> file row (for speakers)
    for rec in existing:
        if (rec["path"] in input_set and rec["speaker"] is None and rec["start"] is None
                and not is_failure(rec)):
            results[rec["path"]] = rec
    done_speakers = {rec["speaker"] for rec in existing if rec["path"] is None}
    todo = [(p, t) for p, t in items if p not in results]
    mine = todo[dist.rank :: dist.world]

    # ---- analyse this rank's files, writing each file's rows as it completes
    if dist.active:
        writer = TableWriter(_part_path(output, dist.rank, dist.world), labels, "jsonl",
                             precise=True)
    else:
        writer = TableWriter(output, labels, fmt, append=args.resume, extra=extra,
                             transform=calibrated)
    failed = False
    try:
        with _progress(mine, not args.quiet and dist.is_main) as progress:
            for path, res, rows in iter_file_rows(analyzer, mine, args.segments):
                for row in rows:
                    writer.write(row)
                if not isinstance(res, Exception):
                    results[path] = rows[-1]
                failed = failed or is_failure(rows[-1])
                progress.update(res)
        if dist.active:
            # ---- distributed: rank 0 merges the part files in input order
            writer.close()
            dist.barrier()
            merge_error = None
            if dist.is_main:
                try:
                    writer = TableWriter(output, labels, fmt, append=args.resume,
                                         extra=extra, transform=calibrated)
                    failed = _merge_parts(writer, output, dist.world, labels,
                                          [p for p, _ in todo], results) or failed
                except (RuntimeError, TableError, OSError) as err:  # part files kept
                    merge_error = err
            failed = dist.any_true(failed or merge_error is not None, device)
            if merge_error is not None:
                _error("predict", merge_error)
                return 1
            if not dist.is_main:
                return 1 if failed else 0
        # ---- speakers
        if spk_map is not None:
            for row in speaker_rows(spk_map, paths, results, labels, done_speakers):
                writer.write(row)
                failed = failed or is_failure(row)
            unmatched = [p for p in paths if spk_map.speaker(p) is None]
            if unmatched:
                print(f"{PROG} predict: warning: {len(unmatched)} input(s) have no speaker in "
                      f"{args.speakers} (first: {unmatched[0]})", file=sys.stderr)
    finally:
        writer.close()
    return 1 if failed else 0


def _part_path(output: Path, rank: int, world: int) -> Path:
    return output.with_name(f"{output.name}.part{rank}-of-{world}.jsonl")


def _merge_parts(writer, output, world, labels, todo, results) -> bool:
    """Write the ranks' rows to ``writer`` in input order; return whether any file failed."""
    from .rows import is_failure
    from .tables import is_group_end, read_table

    groups: dict[str, list[dict]] = {}
    parts = [_part_path(output, r, world) for r in range(world)]
    for part in parts:
        pending: list[dict] = []
        for rec in read_table(part, labels, "jsonl"):
            pending.append(rec)
            if is_group_end(rec):  # a file row closes its group
                groups[rec["path"]] = pending
                pending = []
    missing = [p for p in todo if p not in groups]
    if missing:
        raise RuntimeError(f"distributed merge: {len(missing)} input(s) missing from the "
                           f"part files (first: {missing[0]})")
    failed = False
    for path in todo:
        for rec in groups[path]:
            writer.write(rec)
        file_row = groups[path][-1]
        results[path] = file_row
        failed = failed or is_failure(file_row)
    for part in parts:
        part.unlink()
    return failed


class _progress:
    """Progress on stderr: a tqdm bar on a terminal; elsewhere (batch jobs, ``nohup``,
    cluster logs) a plain line at a steady pace: files done, audio hours, rate, ETA."""

    def __init__(self, items, enabled: bool, every: float = 30.0):
        import time

        self.total, self.enabled, self.every = len(items), enabled and len(items) > 1, every
        self.tty = sys.stderr.isatty()
        self.done, self.audio, self.t0 = 0, 0.0, time.monotonic()
        self.last = self.t0
        self.bar = None
        if self.enabled and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="file", file=sys.stderr, dynamic_ncols=True)

    def __enter__(self):
        return self

    def update(self, result) -> None:
        import time

        self.done += 1
        self.audio += getattr(result, "duration", 0.0) or 0.0
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.monotonic()
        if self.enabled and (now - self.last >= self.every or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            print(f"{PROG} predict: {self.done}/{self.total} files, {self.audio / 3600:.2f} h "
                  f"of audio, {rate:.2f} files/s, {self.audio / max(now - self.t0, 1e-9):.1f}x "
                  f"real time, ETA {eta / 60:.1f} min", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------- check, plot
def _add_report_commands(sub) -> None:
    """The ``check`` and ``plot`` subcommands."""
    k = sub.add_parser(
        "check", help="does the model load strictly and reproduce audEERING's numbers?",
        description="Load the model through the normal path (strict: every tensor lands) "
                    "and, for the published 6-layer model, compare its outputs on audEERING's "
                    "test signal with their published numbers (tolerance 1e-3). Exit status "
                    "0 when all holds, 1 when loading fails or a number differs.")
    k.add_argument("--source", default="audeering/wav2vec2-large-robust-6-ft-age-gender",
                   help="model: hub id or folder (default: %(default)s, the model audEERING "
                        "published numbers for)")
    k.add_argument("--published", action="store_true",
                   help="compare with the published numbers whatever the source's name (a "
                        "copy of the 6-layer model under another name)")
    k.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    k.add_argument("--trust-remote-code", action="store_true", help=argparse.SUPPRESS)
    k.set_defaults(func=cmd_check)

    g = sub.add_parser(
        "plot", help="a corpus report (PNG, PDF, SVG) from a table agegender predict wrote",
        description="Draw the age distribution per predicted gender, per-speaker ages with "
                    "the spread of their windows or turns, and with --truth the predicted "
                    "against the true age and the gender confusion matrix (MAE, UAR). "
                    "Needs matplotlib (the 'plots' extra).")
    g.add_argument("table", help="CSV or JSONL table written by agegender predict")
    g.add_argument("--output", "-o", required=True, help="image file (.png, .pdf, .svg)")
    g.add_argument("--truth", metavar="CSV",
                   help="true labels: a 'path' or 'speaker' column and 'age' and/or 'gender'")
    g.add_argument("--speakers", metavar="FILE",
                   help="the --speakers file the table was made with: draws the spread of "
                        "each speaker's files")
    g.add_argument("--title", help="title of the report (default: the table's name)")
    g.set_defaults(func=cmd_plot)


def cmd_check(args) -> int:
    from .check import PUBLISHED_SOURCE, TOLERANCE, check_published, has_published_numbers

    try:
        clf = _load(args.source, args.device, trust_remote_code=args.trust_remote_code)
    except ImportError as err:
        _error("check", err)
        return 2
    except _load_errors() as err:
        print(f"{PROG} check: {args.source}: does not load: {err}")
        return 1
    n = sum(p.numel() for p in clf.mods.model.parameters())
    loaded = f"loads strictly ({n:,} parameters, every tensor of the checkpoint in place)"
    if not (args.published or has_published_numbers(args.source)):
        print(f"{PROG} check: {args.source}: {loaded}; no published numbers exist for this "
              f"model (audEERING published them for {PUBLISHED_SOURCE} only), so only strict "
              "loading was checked")
        return 0
    checks = check_published(clf)
    worst = max(c.difference for c in checks)
    if all(c.ok for c in checks):
        print(f"{PROG} check: {args.source}: {loaded} and reproduces audEERING's published "
              f"numbers (age output, gender logits, hidden states; largest difference "
              f"{worst:.1e}, tolerance {TOLERANCE:g})")
        return 0
    bad = [c for c in checks if not c.ok]
    print(f"{PROG} check: {args.source}: {loaded} but differs from audEERING's published "
          f"numbers in {len(bad)} of {len(checks)} checks (tolerance {TOLERANCE:g}):")
    for c in bad:
        print(f"  {c.what}: expected {_numbers(c.expected)}, got {_numbers(c.got)} "
              f"(largest difference {c.difference:.2g})")
    return 1


def _numbers(values) -> str:
    return "[" + ", ".join(v if isinstance(v, str) else f"{v:.7g}" for v in values) + "]"


def cmd_plot(args) -> int:
    try:
        from .plot import PlotError, plot_report
    except ImportError as err:  # pragma: no cover - the module itself needs no extra
        _error("plot", err)
        return 2
    try:
        report = plot_report(args.table, args.output, truth=args.truth,
                             speakers=args.speakers, title=args.title)
    except ImportError as err:  # matplotlib missing
        _error("plot", err)
        return 2
    except (PlotError, OSError) as err:
        _error("plot", err)
        return 2
    print(f"wrote {report.output}")
    for line in report.summary_lines():
        print(line)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
