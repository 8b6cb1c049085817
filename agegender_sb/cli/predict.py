"""``agegender predict``: label files, folders, list files and speaker turns with age and
gender, and write a table (see :mod:`agegender_sb.batch.tables` and ``docs/cli.md``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from agegender_sb.cli.calibration import age_bands_arg, predict_calibration
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
    p.add_argument("--no-vad-fallback", action="store_true",
                   help="with --vad silero: take Silero's verdict alone (by default, where "
                        "Silero finds no speech, a second look at the file's own level "
                        "decides; docs/reliability.md)")
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
    p.add_argument("--allow-other-onnx", action="store_true",
                   help="run an --onnx-path graph that records another model than --source "
                        "(refused otherwise; the table's record names the graph)")
    p.add_argument("--onnx-path", metavar="FILE",
                   help="ONNX graph to use or create for --backend onnx (default: a cache file "
                        "named by a hash of the weights)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="autocast precision for the torch backend; fp16/bf16 trade fidelity "
                        "for speed (default: %(default)s)")
    p.add_argument("--fast-path", choices=("auto", "bf16", "int8"), default=None,
                   help="CPU only, faster and not the reference's numbers (docs/speed.md): "
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


# ---------------------------------------------------------------------------- predict
def _detector(args):
    from agegender_sb.speech.detectors import make_detector

    options = {k: v for k, v in (("threshold", args.vad_threshold),
                                 ("min_speech_s", args.min_speech),
                                 ("min_silence_s", args.min_silence),
                                 ("speech_pad_s", args.speech_pad)) if v is not None}
    if args.no_vad_fallback:
        if args.vad != "silero":
            raise ValueError("--no-vad-fallback is an option of --vad silero")
        options["fallback"] = False
    if args.vad == "none" and (options or args.trim):
        raise ValueError("--vad none takes no speech-detection options (--trim, --min-speech, "
                         "...)")
    if args.vad_threshold is not None and args.vad != "silero":
        raise ValueError("--vad-threshold is an option of --vad silero")
    return make_detector(None if args.vad == "none" else args.vad, **options)


def _prepare(args):
    """Everything checked before the model loads: settings, inputs, the output guard."""
    from agegender_sb.batch.guard import check_output, model_files
    from agegender_sb.batch.inputs import resolve_inputs
    from agegender_sb.batch.provenance import provenance_path
    from agegender_sb.batch.tables import guess_format
    from agegender_sb.inference.analysis import AnalysisSettings

    settings = AnalysisSettings(window=args.window, hop=args.hop, max_whole=args.max_whole,
                                batch_size=args.batch_size, detector=_detector(args),
                                trim=args.trim, context=args.speech_context)
    fmt = guess_format(args.output, args.format)
    inputs = resolve_inputs(args.inputs, args.rttm, args.speakers)
    if args.output:
        out = Path(args.output)
        reads = inputs.reads + [str(f) for f in model_files(args.source, args.onnx_path)]
        check_output(out, reads, beside=[provenance_path(out), out.with_name(out.name + ".lock")])
    return settings, fmt, inputs


def _record(args, clf, settings, fmt, cal) -> dict:
    """The provenance record of this analysis (compared on ``--resume``)."""
    from agegender_sb import __version__

    return {"agegender_sb": __version__,
            "model": {"source": str(args.source), "fingerprint": clf.fingerprint,
                      "labels": list(clf.labels)},
            "backend": args.backend, "precision": args.precision,
            "fast_path": clf.fast_path,  # "auto" resolved
            "onnx": clf.onnx_record, "analysis": settings.record(), "format": fmt,
            "calibration": None if cal is None else cal.record()}


class _Collective:
    """Problems met by one rank stop every rank: each check is a collective step."""

    def __init__(self, dist, device):
        self.dist, self.device = dist, device

    def failed(self, problem, elsewhere: str) -> bool:
        """Whether any rank has a ``problem``; reports this rank's, or ``elsewhere``."""
        if self.dist.any_true(problem is not None, self.device):
            error("predict", problem or elsewhere)
            return True
        return False


def cmd_predict(args) -> int:
    from agegender_sb.batch.distributed import Distributed, exit_rank, threads_per_rank
    from agegender_sb.errors import AgeGenderError

    dist = Distributed()
    if dist.active and not args.output:
        error("predict", "a distributed run (torchrun) needs --output")
        return 2
    if args.resume and not args.output:
        error("predict", "--resume needs --output")
        return 2
    try:
        settings, fmt, inputs = _prepare(args)
    except (AgeGenderError, ValueError, OSError) as err:
        error("predict", err)
        return 2
    if dist.is_main:
        for note in inputs.notes:
            print(f"{PROG} predict: note: {note}", file=sys.stderr, flush=True)
    import torch

    torch.set_num_threads(args.threads or threads_per_rank(dist.local_world))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        error("predict", f"--device {device}: CUDA is not available")
        return 2
    device = dist.init(device)
    try:
        status = _run(args, dist, device, settings, fmt, inputs)
    except BaseException:
        dist.close()
        raise
    if dist.active:  # every file written: meet the other ranks, then leave without gloo's
        dist.barrier()  # teardown, which can abort a process whose work is complete
        exit_rank(status)
    return status


def _run(args, dist, device, settings, fmt, inputs) -> int:
    import contextlib

    from agegender_sb.batch.provenance import TableLock
    from agegender_sb.batch.runner import BatchRunner
    from agegender_sb.batch.tables import TableWriter
    from agegender_sb.errors import AgeGenderError
    from agegender_sb.inference.analysis import Analyzer

    check = _Collective(dist, device)
    with contextlib.ExitStack() as stack:
        problem = None
        if args.output and dist.is_main:
            try:
                stack.enter_context(TableLock(args.output))
            except AgeGenderError as err:
                problem = err
        if check.failed(problem, "the output is locked (see rank 0)"):
            return 2
        problem = None
        try:
            clf = load_classifier(args.source, device, args.backend, args.precision,
                                  args.onnx_path, args.trust_remote_code, args.fast_path,
                                  args.allow_other_onnx)
        except ImportError as err:  # --backend onnx without onnxruntime
            problem = err
        except load_errors() as err:
            problem = f"cannot load the model {args.source}: {err}"
        if check.failed(problem, "the model could not be loaded on another rank"):
            return 2
        cal = None
        try:
            cal = predict_calibration(args, clf)
        except (AgeGenderError, ValueError, OSError) as err:  # another model's, unreadable
            problem = err
        if check.failed(problem, "the calibration was refused on another rank"):
            return 2
        record = _record(args, clf, settings, fmt, cal)
        with _progress(inputs.items, not args.quiet and dist.is_main) as progress:
            runner = BatchRunner(Analyzer(clf, settings), inputs, record, args.segments,
                                 progress.update, dist, calibration=cal)
            if not args.output:
                summary = runner.run_to_stream(TableWriter(None, clf.labels, fmt,
                                                           extra=runner.extra))
                return 1 if summary.failed else 0
            try:
                summary = runner.run_to_table(args.output, fmt, resume=args.resume)
            except (AgeGenderError, OSError) as err:
                error("predict", err)
                return 2
    if dist.is_main and not args.quiet:
        _say_done(args, summary)
    return 1 if summary.failed else 0


def _say_done(args, summary) -> None:
    kept = (f", {summary.n_kept} kept from before" if args.resume else "")
    if args.resume and summary.n_analysed == 0:
        print(f"{PROG} predict: nothing left to analyse: all {summary.n_inputs} file(s) were "
              f"in {args.output}; its speaker rows and order were brought up to date",
              file=sys.stderr, flush=True)
        return
    failed = f", {summary.n_failed} failed (see the error column)" if summary.failed else ""
    print(f"{PROG} predict: {args.output}: {summary.n_analysed} file(s) analysed{kept}"
          f"{failed}", file=sys.stderr, flush=True)


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

    def update(self, result=None) -> None:
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

