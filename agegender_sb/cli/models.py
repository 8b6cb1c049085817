"""``agegender info``, ``convert``, ``export-onnx`` and ``check``: commands about the model
itself.
"""

from __future__ import annotations

import argparse

from agegender_sb.cli.common import PROG, error, load_classifier, load_errors
from agegender_sb.defaults import DEFAULT_SOURCE

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    """The ``export-onnx``, ``convert``, ``info`` and ``check`` subcommands."""
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


def cmd_info(args) -> int:
    import json

    from agegender_sb.loading.folders import describe

    try:
        info = describe(args.src, trust_remote_code=args.trust_remote_code)
    except load_errors() as err:
        error("info", err)
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    return 0


def cmd_convert(args) -> int:
    from agegender_sb.loading.folders import convert

    try:
        dest = convert(args.src, args.dst, overwrite=args.overwrite)
    except load_errors() as err:
        error("convert", err)
        return 2
    print(f"wrote SpeechBrain model folder {dest}")
    return 0


def cmd_export_onnx(args) -> int:
    from pathlib import Path

    from agegender_sb.batch.guard import check_output, model_files
    from agegender_sb.errors import AgeGenderError

    out = Path(args.out)
    int8 = out.with_name(out.stem + "-int8" + out.suffix)
    try:  # before the model loads: never write over the model's own files
        check_output(out, model_files(args.src),
                     beside=[out.with_name(out.name + ".data"), *([int8] if args.int8 else [])],
                     what="OUT")
    except AgeGenderError as err:
        error("export-onnx", err)
        return 2
    try:
        from agegender_sb.export.onnx import export_onnx, quantize_onnx_dynamic

        clf = load_classifier(args.src, "cpu", trust_remote_code=args.trust_remote_code,
                              pack_weights=False)  # exported at once: no pack/unpack
        out = export_onnx(clf.mods.model, out, clf.labels,
                          gender_probabilities=args.probabilities, fingerprint=clf.fingerprint)
        print(f"wrote {out}")
        if args.int8:
            q = quantize_onnx_dynamic(out, int8)
            print(f"wrote {q}")
    except (ImportError, *load_errors()) as err:
        error("export-onnx", err)
        return 2
    return 0


def cmd_check(args) -> int:
    from agegender_sb.report.check import (
        PUBLISHED_SOURCE,
        TOLERANCE,
        check_published,
        has_published_numbers,
    )

    try:
        clf = load_classifier(args.source, args.device, trust_remote_code=args.trust_remote_code)
    except ImportError as err:
        error("check", err)
        return 2
    except load_errors() as err:
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


