"""``qdq compare``: the quantized model against the float or FP16 model, output by output and layer by layer."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import QdqError
from ..measure.comparison import compare
from ..measure.device import compare_device
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
    dev = c.add_argument_group("the device in the loop (qdq bundle; Polygraphy's --save-outputs files)")
    dev.add_argument("--outputs", metavar="FILE[:RUNNER]", help="the quantized engine's outputs saved on the device "
                     "(polygraphy run … --load-inputs DATA --save-outputs FILE) in place of running the file here; "
                     "printed beside qdq's prediction for the same samples")
    dev.add_argument("--reference-outputs", metavar="FILE[:RUNNER]", help="the reference's outputs saved on the "
                     "device (the FP16 engine: add --reference fp16 so the prediction uses the same reference)")
    dev.add_argument("--layer-info", type=Path, help="the INT8 engine's trtexec --exportLayerInfo: a disagreement "
                     "names the layers it runs in another precision than the file plans")
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
    if (args.reference_outputs or args.layer_info) and not args.outputs:
        raise QdqError("--reference-outputs and --layer-info go with --outputs (the quantized engine's saved outputs)")
    if args.outputs:
        return _device(args)
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
    return _fail_below(result, args.fail_below_db)


def _fail_below(result, floor) -> int:
    if floor is not None:
        low = [o.name for o in result.outputs if o.metrics["sqnr_db"] < floor]
        if low:
            print(f"qdq: outputs below {floor:g} dB: {', '.join(low)}", file=sys.stderr)
            return 1
    return 0


def _device(args) -> int:
    """--outputs: the device's figures, qdq's prediction for the same samples, and whether they agree."""
    if args.layerwise or args.report or args.batch_size != 1:
        raise QdqError("--outputs compares saved outputs sample by sample: drop --layerwise, --report and --batch-size")
    res = compare_device(args.float_model, args.quant_model, args.data, args.outputs, args.reference_outputs,
                         args.layer_info, reference=args.reference, preprocess=A.preprocess(args), limit=args.limit,
                         quiet=args.quiet or args.json == "-", task=A.task_options(args), remainder=args.remainder)
    if args.json:
        A.write_json(json.dumps(res.to_dict(), indent=1), args.json)
    if args.json != "-" and not args.quiet:
        print_compare(res.device)
    if args.json != "-":
        print(res.agreement.text)
    return _fail_below(res.device, args.fail_below_db)
