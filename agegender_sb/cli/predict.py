"""``agegender predict``: label files, folders, list files and speaker turns with age and
gender, and write a table (see :mod:`agegender_sb.batch.tables` and ``docs/cli.md``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from agegender_sb.cli.common import (
    PROG,
    count,
    error,
    load_classifier,
    load_errors,
    probability,
    seconds,
)
from agegender_sb.defaults import (
    DEFAULT_CONTEXT,
    DEFAULT_SOURCE,
    DEFAULT_VAD,
    DEFAULT_WINDOW,
    MAX_WHOLE_SECONDS,
    VAD_CHOICES,
)

__all__ = ["add_parser", "cmd_predict"]


def add_parser(sub) -> None:
    """The ``predict`` subcommand."""
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
    p.add_argument("--vad-threshold", type=probability, default=None,
                   help="speech probability threshold of the silero detector (default 0.5)")
    p.add_argument("--min-speech", type=seconds(0, False), default=None,
                   help="shortest speech region kept, seconds (default 0.25)")
    p.add_argument("--min-silence", type=seconds(0, False), default=None,
                   help="shortest pause that splits speech, seconds (default 0.1)")
    p.add_argument("--speech-pad", type=seconds(0, False), default=None,
                   help="seconds added on both sides of each speech region (default 0.03)")
    p.add_argument("--trim", action="store_true",
                   help="also cut spans analysed whole to their detected speech")
    p.add_argument("--speech-context", type=seconds(0, False), default=DEFAULT_CONTEXT,
                   help="seconds of audio kept around detected speech where it is cut out "
                        "(default: %(default)s)")
    p.add_argument("--rttm", metavar="FILE",
                   help="speaker turns: an RTTM file (or a folder of them); file ids match "
                        "the audio files' stems")
    p.add_argument("--window", type=seconds(0, True), default=DEFAULT_WINDOW,
                   help="window length in seconds for long spans (default: %(default)s)")
    p.add_argument("--hop", type=seconds(0, True), default=None,
                   help="hop between windows in seconds (default: the window length)")
    p.add_argument("--max-whole", type=seconds(0, False), default=MAX_WHOLE_SECONDS,
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
    p.add_argument("--batch-size", type=count, default=1,
                   help="signals per forward pass; >1 pays off on GPU (default: %(default)s)")
    p.add_argument("--threads", type=count, default=None,
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
    p.add_argument("--quiet", "-q", action="store_true", help="no progress report")
    p.set_defaults(func=cmd_predict)


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
    from agegender_sb.batch.inputs import InputError
    from agegender_sb.batch.tables import provenance_path

    named = [Path(p) for p in args.inputs if not Path(p).is_dir()]
    named += [Path(p) for p, _ in items]
    named += [Path(x) for x in (args.speakers, args.rttm) if x]
    for target in (output, provenance_path(output)):
        for path in named:
            if _same_file(target, path):
                raise InputError(f"--output {output} is an input ({path}): refusing to "
                                 "overwrite it")


def _detector(args):
    from agegender_sb.speech.detectors import make_detector

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
    from agegender_sb.batch.distributed import Distributed, threads_per_rank
    from agegender_sb.batch.inputs import InputError, collect_items, read_speakers
    from agegender_sb.batch.tables import TableError, guess_format, lock_table

    dist = Distributed()
    if dist.active and not args.output:
        error("predict", "a distributed run (torchrun) needs --output")
        return 2
    if args.resume and not args.output:
        error("predict", "--resume needs --output")
        return 2
    try:
        from agegender_sb.inference.analysis import Analyzer
        from agegender_sb.speech.turns import read_rttm

        analyzer = Analyzer(None, window=args.window, hop=args.hop, max_whole=args.max_whole,
                            batch_size=args.batch_size, detector=_detector(args),
                            trim=args.trim, context=args.speech_context)
        fmt = guess_format(args.output, args.format)
        items = collect_items(args.inputs, read_rttm(args.rttm) if args.rttm else None)
        spk_map = read_speakers(args.speakers) if args.speakers else None
        if args.output:
            _check_output(Path(args.output), args, items)
    except (InputError, ValueError, OSError) as err:
        error("predict", err)
        return 2
    import torch

    torch.set_num_threads(args.threads or threads_per_rank(dist.local_world))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        error("predict", f"--device {device}: CUDA is not available")
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
        error("predict", problem or elsewhere)
        return True
    return False


def _provenance(args, clf, analyzer, fmt) -> dict:
    from agegender_sb import __version__

    return {"agegender_sb": __version__,
            "model": {"source": str(args.source), "fingerprint": clf.fingerprint,
                      "labels": list(clf.labels)},
            "backend": args.backend, "precision": args.precision,
            "fast_path": clf.fast_path,  # "auto" resolved
            "analysis": analyzer.settings(), "format": fmt}


def _predict(args, dist, device, fmt, items, spk_map, analyzer) -> int:
    from agegender_sb.batch.rows import is_failure, iter_file_rows, speaker_rows
    from agegender_sb.batch.tables import (
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
        clf = load_classifier(args.source, device, args.backend, args.precision, args.onnx_path,
                    args.trust_remote_code, args.fast_path)
    except ImportError as err:  # --backend onnx without onnxruntime
        problem = err
    except load_errors() as err:
        problem = f"cannot load the model {args.source}: {err}"
    if _any_rank_failed(dist, device, problem, "the model could not be loaded on another rank"):
        return 2
    analyzer.clf = clf
    labels = clf.labels
    output = Path(args.output) if args.output else None
    record = _provenance(args, clf, analyzer, fmt)

    # ---- what is already done (--resume); the provenance of a new table
    existing: list[dict] = []
    try:
        if dist.is_main and args.resume and output.exists():
            check_provenance(output, record)
            existing = prepare_resume(output, labels, fmt)
        elif dist.is_main and output is not None:
            write_provenance(output, record)
    except (TableError, OSError) as err:
        problem = err
    if _any_rank_failed(dist, device, problem, f"{output}: cannot be resumed (see rank 0)"):
        return 2
    try:
        if not dist.is_main and args.resume and output.exists():
            existing = read_table(output, labels, fmt)
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
        writer = TableWriter(output, labels, fmt, append=args.resume)
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
                    writer = TableWriter(output, labels, fmt, append=args.resume)
                    failed = _merge_parts(writer, output, dist.world, labels,
                                          [p for p, _ in todo], results) or failed
                except (RuntimeError, TableError, OSError) as err:  # part files kept
                    merge_error = err
            failed = dist.any_true(failed or merge_error is not None, device)
            if merge_error is not None:
                error("predict", merge_error)
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
    from agegender_sb.batch.rows import is_failure
    from agegender_sb.batch.tables import is_group_end, read_table

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

