"""``qdq compare``: the quantized model against the float or FP16 model, output by output and layer by layer."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..measure.comparison import compare
from ..modelio import atomic_write_text, load_model
from ..report.html import render
from ..report.text import print_compare
from ..trt.backend import built_view
from . import args as A


def add(sub) -> None:
    c = A.command(sub, "compare", "measure the quantized model against the float or FP16 model, layer by layer")
    io = c.add_argument_group("models and data")
    io.add_argument("float_model", type=Path, help="the float ONNX model")
    io.add_argument("quant_model", type=Path, help="its Q/DQ version")
    io.add_argument("--data", type=Path, required=True, help="inputs, as for quantize --calib")
    io.add_argument("--limit", type=int, help="use at most this many samples")
    io.add_argument("--batch-size", type=int, default=1, help="samples per ONNX Runtime run")
    an = c.add_argument_group("analysis")
    an.add_argument("--reference", choices=("fp32", "fp16"), default="fp32",
                    help="fp16: the FP16 cast of the float model (what a TensorRT FP16 engine computes)")
    an.add_argument("--layerwise", action="store_true", help="compare every tensor that carries a Q/DQ and diagnose "
                    "the loss (implied by --report)")
    an.add_argument("--threshold-db", type=float, default=20.0, help="name the first tensor below this accumulated SQNR")
    an.add_argument("--no-budget", action="store_true", help="skip the weights-only / activations-only runs")
    an.add_argument("--fail-below-db", type=float, help="exit code 1 when an output's SQNR is below this")
    A.add_remainder(an)
    rep = c.add_argument_group("reporting")
    A.add_json_path(rep)
    rep.add_argument("--report", type=Path, help="write a self-contained HTML report here (with the precision each "
                     "layer gets in TensorRT when TensorRT-RTX is installed)")
    rep.add_argument("--no-engine-check", action="store_true", help="leave the TensorRT build out of the report")
    A.add_quiet(rep, "no progress bar, no tables")
    A.add_task(c)
    A.add_preprocess(c)


def run(args) -> int:
    A.check_reports(args.json, args.report)
    result = compare(args.float_model, args.quant_model, args.data, reference=args.reference,
                     layerwise=args.layerwise or bool(args.report), threshold_db=args.threshold_db, budget=not args.no_budget,
                     preprocess=A.preprocess(args), limit=args.limit, batch_size=args.batch_size,
                     quiet=args.quiet or args.json == "-", task=A.task_options(args), remainder=args.remainder)
    if args.json:
        A.write_json(json.dumps(result.to_dict(), indent=1), args.json)
    if args.report:
        engine, problem = (None, None) if args.no_engine_check else built_view(load_model(args.quant_model))
        if problem and not args.quiet:
            print(f"qdq: the report has no engine view: {problem[:300]}", file=sys.stderr)
        atomic_write_text(args.report, render(result, args.float_model.name, args.quant_model.name, engine=engine))
    if args.json != "-" and not args.quiet:
        print_compare(result)
    if args.fail_below_db is not None:
        low = [o.name for o in result.outputs if o.metrics["sqnr_db"] < args.fail_below_db]
        if low:
            print(f"qdq: outputs below {args.fail_below_db:g} dB: {', '.join(low)}", file=sys.stderr)
            return 1
    return 0
