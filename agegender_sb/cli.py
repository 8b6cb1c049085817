"""The ``agegender`` command: ``predict``, ``convert``, ``info`` and ``export-onnx``.

``agegender predict`` labels files, folders and list files with age and gender and writes one
row per file (and per window with ``--segments``, per speaker with ``--speakers``) as each
file completes; see ``docs/cli.md`` for the table, the long-file defaults, ``--resume`` and
``torchrun``. Exit status: 0 when every file was analysed, 1 when any file failed (its row
has ``error`` filled), 2 for usage errors (bad options, unreadable list or speaker file,
model that cannot be loaded, output table that cannot be resumed).

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
import json
import math
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .inputs import InputError, SpeakerMap, expand_inputs, read_speakers
from .tables import TableError, TableWriter, guess_format, prepare_resume, read_table
from .windows import DEFAULT_WINDOW, MAX_WHOLE_SECONDS, analyse_files, plan_windows

__all__ = ["main", "build_parser"]

PROG = "agegender"
#: How long ranks of a distributed run wait for each other at the final barrier.
DIST_TIMEOUT = timedelta(days=7)
# Smallest probability used when pooling log-probabilities read back from a rounded table.
_ROUNDED_PROB_FLOOR = 5e-5
_PRECISE_PROB_FLOOR = 1e-30


def _positive(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text}")
    return value


def _batch_size(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a batch size >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``agegender`` command."""
    from .interface import DEFAULT_SOURCE

    parser = argparse.ArgumentParser(
        prog=PROG, description="Speaker age and gender from speech (audEERING wav2vec2 model).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "predict", help="age and gender for audio files, folders and list files",
        description="Write one row per file: path, start, end, duration, age, one probability "
                    "per gender label, gender, error. Exit status 1 if any file failed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio files, folders (searched recursively) or list files (.txt: one "
                        "path a line; .csv: a 'path' column)")
    p.add_argument("--source", default=DEFAULT_SOURCE,
                   help="model: hub id or folder, audEERING or SpeechBrain layout "
                        "(default: %(default)s)")
    p.add_argument("--output", "-o", help="output table (default: stdout)")
    p.add_argument("--format", choices=("csv", "jsonl"),
                   help="table format (default: jsonl for *.jsonl outputs, else csv)")
    p.add_argument("--window", type=_positive, default=DEFAULT_WINDOW,
                   help="window length in seconds for long files (default: %(default)s)")
    p.add_argument("--hop", type=_positive, default=None,
                   help="hop between windows in seconds (default: the window length)")
    p.add_argument("--max-whole", type=_non_negative, default=MAX_WHOLE_SECONDS,
                   help="files up to this many seconds are analysed in one pass; longer ones "
                        "in windows (default: %(default)s; 0: always windows)")
    p.add_argument("--segments", action="store_true",
                   help="also write one row per analysed window")
    p.add_argument("--speakers", metavar="FILE",
                   help="Kaldi utt2spk or CSV with path,speaker: add one row per speaker")
    p.add_argument("--resume", action="store_true",
                   help="skip inputs already analysed in --output and append the rest")
    p.add_argument("--device", default=None,
                   help="cpu or cuda (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=_batch_size, default=1,
                   help="files (or windows) per forward pass; >1 pays off on GPU "
                        "(default: %(default)s)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="torch (default) or onnx: ONNX Runtime, exporting the model once "
                        "(needs the 'onnx' extra)")
    p.add_argument("--onnx-path", metavar="FILE",
                   help="ONNX graph to use or create for --backend onnx (default: a cache file "
                        "named by a hash of the weights)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="autocast precision for the torch backend; fp16/bf16 trade fidelity "
                        "for speed on GPU (default: %(default)s)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("export-onnx", help="export the model to ONNX (audEERING's I/O names)")
    e.add_argument("src", help="hub id or folder (audEERING or SpeechBrain layout)")
    e.add_argument("out", help="output .onnx file")
    e.add_argument("--logits", action="store_true",
                   help="raw gender logits in 'logits_gender' (default: probabilities, as "
                        "audEERING's export)")
    e.add_argument("--int8", action="store_true",
                   help="also write OUT with '-int8' before the suffix: int8 dynamic "
                        "quantisation of the MatMul weights (faster on CPU, less exact)")
    e.set_defaults(func=cmd_export_onnx)

    c = sub.add_parser("convert", help="audEERING-layout checkpoint -> SpeechBrain model folder")
    c.add_argument("src", help="hub id or folder of an audEERING-layout checkpoint")
    c.add_argument("dst", help="output folder")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser("info", help="labels, layers, hidden size, parameters, sample rate")
    i.add_argument("src", nargs="?", default=DEFAULT_SOURCE,
                   help="hub id or folder (default: %(default)s)")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)
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


def _load(source: str, device: str, backend: str = "torch", precision: str = "fp32",
          onnx_path: str | None = None):
    from .interface import AgeGenderClassifier

    return AgeGenderClassifier.from_hparams(
        source=source, run_opts={"device": device, "precision": precision}, backend=backend,
        onnx_path=onnx_path)


# ---------------------------------------------------------------------------- info, convert
def model_info(clf, source: str) -> dict:
    """What ``agegender info`` prints, as a dict."""
    hp = clf.hparams
    return {
        "source": str(source),
        "layout": clf.source_layout,
        "labels": list(clf.labels),
        "layers": int(hp.num_hidden_layers),
        "hidden_size": int(hp.hidden_size),
        "attention_heads": int(hp.num_attention_heads),
        "parameters": int(sum(p.numel() for p in clf.mods.model.parameters())),
        "sample_rate": int(hp.sample_rate),
    }


def cmd_info(args) -> int:
    try:
        clf = _load(args.src, "cpu")
    except (OSError, CheckpointError, ValueError) as err:
        _error("info", err)
        return 1
    info = model_info(clf, args.src)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            if key == "labels":
                value = ", ".join(value)
            print(f"{key}: {value}")
    return 0


def cmd_convert(args) -> int:
    from .checkpoint import convert_audeering_checkpoint

    try:
        dest = convert_audeering_checkpoint(args.src, args.dst)
    except (OSError, CheckpointError, ValueError) as err:
        _error("convert", err)
        return 1
    print(f"wrote SpeechBrain model folder {dest}")
    return 0


def cmd_export_onnx(args) -> int:
    try:
        from .onnx_export import export_onnx, quantize_onnx_dynamic

        clf = _load(args.src, "cpu")
        out = export_onnx(clf.mods.model, args.out, clf.labels,
                          gender_probabilities=not args.logits)
        print(f"wrote {out}")
        if args.int8:
            q = quantize_onnx_dynamic(out, out.with_name(out.stem + "-int8" + out.suffix))
            print(f"wrote {q}")
    except ImportError as err:
        _error("export-onnx", err)
        return 2
    except (OSError, CheckpointError, ValueError) as err:
        _error("export-onnx", err)
        return 1
    return 0


# ---------------------------------------------------------------------------- predict
class _Dist:
    """Rank and world size of a torchrun launch (world 1 when not distributed)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = self.world > 1

    def init(self, device: str) -> str:
        if not self.active:
            return device
        import torch.distributed as dist

        if device.startswith("cuda"):
            device = f"cuda:{self.local_rank}"
            torch.cuda.set_device(self.local_rank)
            backend = "nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend=backend, timeout=DIST_TIMEOUT)
        return device

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def any_true(self, flag: bool, device: str) -> bool:
        if not self.active:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.destroy_process_group()


def _file_record(path, analysis) -> dict:
    return {"path": path, "start": None, "end": None, "duration": analysis.duration,
            "error": None, **analysis.prediction.to_records()[0]}


def _segment_records(path, analysis) -> list[dict]:
    return [{"path": path, "start": start, "end": end, "duration": end - start, "error": None,
             **rec}
            for (start, end), rec in zip(analysis.segments,
                                         analysis.segment_predictions.to_records())]


def _error_record(path, err) -> dict:
    return {"path": path, "error": str(err) or type(err).__name__}


def _pool(rows: list[dict], labels) -> dict:
    """Duration-weighted pooling of file rows (age; log-probabilities → softmax)."""
    weights = torch.tensor([r["duration"] for r in rows], dtype=torch.float64)
    w = weights / weights.sum()
    ages = torch.tensor([r["age"] for r in rows], dtype=torch.float64)
    logp = torch.tensor(
        [[math.log(max(r[lab], _floor(r))) for lab in labels] for r in rows],
        dtype=torch.float64)
    probs = torch.softmax((w[:, None] * logp).sum(dim=0), dim=-1)
    rec = {"start": None, "end": None, "duration": float(weights.sum()),
           "age": float((w * ages).sum()), "gender": labels[int(probs.argmax())], "error": None}
    rec.update({lab: float(probs[j]) for j, lab in enumerate(labels)})
    return rec


def _floor(row: dict) -> float:
    return _ROUNDED_PROB_FLOOR if row.get("_rounded") else _PRECISE_PROB_FLOOR


def _speaker_records(spk_map: SpeakerMap, inputs, results: dict, labels,
                     skip: set) -> list[dict]:
    out = []
    for spk, paths in spk_map.speakers_of(inputs).items():
        if spk in skip:
            continue
        rows = [results[p] for p in paths
                if p in results and results[p].get("error") is None
                and results[p].get("duration")]
        if rows:
            rec = _pool(rows, labels)
            rec["path"] = spk
        else:
            rec = {"path": spk, "error": f"speaker {spk}: none of its {len(paths)} file(s) "
                                         "was analysed successfully"}
        out.append(rec)
    return out


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="file", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True)


def _part_path(output: Path, rank: int, world: int) -> Path:
    return output.with_name(f"{output.name}.part{rank}-of-{world}.jsonl")


def cmd_predict(args) -> int:
    dist = _Dist()
    if dist.active and not args.output:
        _error("predict", "a distributed run (torchrun) needs --output")
        return 2
    if args.resume and not args.output:
        _error("predict", "--resume needs --output")
        return 2
    try:
        plan_windows(1, args.window, args.hop)
        fmt = guess_format(args.output, args.format)
        inputs = expand_inputs(args.inputs)
        spk_map = read_speakers(args.speakers) if args.speakers else None
    except (InputError, ValueError) as err:
        _error("predict", err)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        _error("predict", f"--device {device}: CUDA is not available")
        return 2
    device = dist.init(device)
    try:
        return _predict(args, dist, device, fmt, inputs, spk_map)
    finally:
        dist.close()


def _any_rank_failed(dist, device, problem, elsewhere: str) -> bool:
    """Whether any rank has a ``problem`` (a collective step: every rank must call it);
    reports this rank's problem, or ``elsewhere`` when another rank failed."""
    if dist.any_true(problem is not None, device):
        _error("predict", problem or elsewhere)
        return True
    return False


def _predict(args, dist, device, fmt, inputs, spk_map) -> int:
    # Every rank reaches each check below, so that a failure on one rank stops all of them
    # instead of leaving the others waiting at the next collective.
    problem = None
    try:
        clf = _load(args.source, device, args.backend, args.precision, args.onnx_path)
    except ImportError as err:  # --backend onnx without onnxruntime
        problem = err
    except (OSError, CheckpointError, ValueError) as err:
        problem = f"cannot load the model {args.source}: {err}"
    if _any_rank_failed(dist, device, problem, "the model could not be loaded on another rank"):
        return 2
    labels = clf.labels
    output = Path(args.output) if args.output else None

    # ---- what is already done (--resume)
    existing: list[dict] = []
    if args.resume:
        try:
            if dist.rank == 0:
                existing = prepare_resume(output, labels, fmt)
        except TableError as err:
            problem = err
        if _any_rank_failed(dist, device, problem, f"{output}: cannot be resumed (see rank 0)"):
            return 2
        try:
            if dist.rank != 0 and output.exists():
                existing = read_table(output, labels, fmt)
        except TableError as err:
            problem = err
        if _any_rank_failed(dist, device, problem,
                            f"{output}: cannot be read (see the failing rank)"):
            return 2
    input_set = set(inputs)
    results: dict[str, dict] = {}  # path -> file row (for speakers)
    for rec in existing:
        if rec["start"] is None and rec["path"] in input_set and rec["error"] is None:
            rec["_rounded"] = True  # probabilities read back with 4 decimals
            results[rec["path"]] = rec
    done_speakers = {rec["path"] for rec in existing
                     if rec["start"] is None and rec["path"] not in input_set}
    todo = [p for p in inputs if p not in results]
    mine = todo[dist.rank :: dist.world]

    # ---- analyse this rank's files, writing each file's rows as it completes
    if dist.active:
        writer = TableWriter(_part_path(output, dist.rank, dist.world), labels, "jsonl",
                             precise=True)
    else:
        writer = TableWriter(output, labels, fmt, append=args.resume)
    show = (not args.quiet and dist.rank == 0 and len(inputs) > 1 and sys.stderr.isatty())
    failed = False
    try:
        with _progress(len(mine), show) as bar:
            for path, res in analyse_files(clf, mine, window=args.window, hop=args.hop,
                                           max_whole=args.max_whole,
                                           batch_size=args.batch_size):
                if isinstance(res, Exception):
                    rec = _error_record(path, res)
                    failed = True
                else:
                    if args.segments:
                        for seg in _segment_records(path, res):
                            writer.write(seg)
                    rec = _file_record(path, res)
                    results[path] = rec
                writer.write(rec)
                bar.update(1)
        if dist.active:
            # ---- distributed: rank 0 merges the part files in input order
            writer.close()
            dist.barrier()
            merge_error = None
            if dist.rank == 0:
                try:
                    writer = TableWriter(output, labels, fmt, append=args.resume)
                    failed = _merge_parts(writer, output, dist.world, labels, todo,
                                          results) or failed
                except (RuntimeError, TableError, OSError) as err:  # part files kept
                    merge_error = err
            failed = dist.any_true(failed or merge_error is not None, device)
            if merge_error is not None:
                _error("predict", merge_error)
                return 1
            if dist.rank != 0:
                return 1 if failed else 0
        # ---- speakers
        if spk_map is not None:
            for rec in _speaker_records(spk_map, inputs, results, labels, done_speakers):
                writer.write(rec)
                failed = failed or rec.get("error") is not None
            unmatched = [p for p in inputs if spk_map.speaker(p) is None]
            if unmatched:
                print(f"{PROG} predict: warning: {len(unmatched)} input(s) have no speaker in "
                      f"{args.speakers} (first: {unmatched[0]})", file=sys.stderr)
    finally:
        writer.close()
    return 1 if failed else 0


def _merge_parts(writer, output, world, labels, todo, results) -> bool:
    """Write the ranks' rows to ``writer`` in input order; return whether any file failed."""
    groups: dict[str, list[dict]] = {}
    parts = [_part_path(output, r, world) for r in range(world)]
    for part in parts:
        pending: list[dict] = []
        for rec in read_table(part, labels, "jsonl"):
            pending.append(rec)
            if rec["start"] is None:  # a file row closes its group
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
        if file_row["error"] is None:
            results[path] = file_row
        else:
            failed = True
    for part in parts:
        part.unlink()
    return failed


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
