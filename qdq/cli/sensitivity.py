"""``qdq sensitivity``: the SQNR each layer's INT8 leaves at its own output and at the model's."""
from __future__ import annotations

import json
from pathlib import Path

from ..calib.ranges import DEFAULT_METHOD, METHODS
from ..measure.sensitivity import sensitivity
from ..modelio import atomic_write_text
from ..pipeline import quantize
from ..report.html import render_sensitivity
from ..report.text import print_sensitivity
from ..targets import TARGETS
from . import args as A


def add(sub) -> None:
    se = A.command(sub, "sensitivity", "per-layer sensitivity: the SQNR each layer's INT8 leaves at its output "
                                       "and at the model's, from one pass")
    se.add_argument("model", type=Path, help="float ONNX model")
    se.add_argument("--calib", type=Path, required=True, help="calibration data (as quantize --calib)")
    se.add_argument("--data", type=Path, required=True, help="validation data")
    se.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help=f"range method (default {DEFAULT_METHOD})")
    se.add_argument("--target", choices=tuple(TARGETS), default="trt10", help="as for quantize (default trt10)")
    se.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN", help="as for quantize")
    se.add_argument("--limit", type=int, help="calibration samples")
    se.add_argument("--val-limit", type=int, help="validation samples (at most 16 are used)")
    se.add_argument("--verify", type=int, default=0, metavar="N",
                    help="measure the N most harmful layers end to end (all INT8 but that one; default 0)")
    A.add_json_path(se)
    se.add_argument("--report", type=Path, help="self-contained HTML report")
    A.add_quiet(se)
    A.add_preprocess(se)


def run(args) -> int:
    quiet = args.quiet or args.json == "-"
    A.check_reports(args.json, args.report)
    pre = A.preprocess(args)
    first = quantize(args.model, args.calib, method=args.method, target=args.target, exclude=args.exclude,
                     preprocess=pre, limit=args.limit, quiet=quiet, mixed_precision=False)
    result = sensitivity(first, args.data, preprocess=pre, limit=args.val_limit, verify=args.verify, quiet=quiet)
    if args.json:
        A.write_json(json.dumps(result.to_dict(), indent=1), args.json)
    if args.report:
        atomic_write_text(args.report, render_sensitivity(result, args.model.name))
    if not quiet:
        print_sensitivity(result)
    return 0
