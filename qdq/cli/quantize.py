"""``qdq quantize``: calibrate with ONNX Runtime and write a Q/DQ ONNX."""
from __future__ import annotations

from pathlib import Path

from ..calib.ranges import DEFAULT_METHOD, METHODS
from ..modelio import check_output, save_model
from ..pipeline import quantize
from ..report.summary import write_ranges
from ..report.text import print_summary, summary_json
from ..targets import TARGETS
from ..trt.backend import built_view
from . import args as A


def add(sub) -> None:
    q = A.command(sub, "quantize", "calibrate with ONNX Runtime and write a Q/DQ ONNX")
    io = q.add_argument_group("input and output")
    io.add_argument("model", type=Path, help="float ONNX model (never modified)")
    io.add_argument("-o", "--output", type=Path, required=True, help="Q/DQ ONNX to write")
    io.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    io.add_argument("--ranges-out", type=Path, help="write tensor → amax/method/clipped JSON here")
    cal = q.add_argument_group("calibration")
    cal.add_argument("--calib", type=Path, help="folder of .npz or images, a .npz (stacked on axis 0) or a .npy")
    cal.add_argument("--ranges", type=Path, metavar="FILE",
                     help="your ranges: JSON, a TensorRT calibration cache or an ONNX Runtime calibration table; "
                          "they win over calibration, which covers the rest")
    cal.add_argument("--force-ranges", action="store_true",
                     help="apply --ranges also to tensors the placement rules would leave in float")
    cal.add_argument("--method", choices=METHODS + ("auto",), default=DEFAULT_METHOD,
                     help="range method: mse (least squared error), percentile, entropy (TensorRT's KL), max, or auto "
                          "(of mse, percentile and max, the best on the held-back samples and on them ×1.25)")
    cal.add_argument("--percentile", type=float, default=99.99, help="for --method percentile (default 99.99)")
    cal.add_argument("--batch-size", type=int, default=1, help="samples per ONNX Runtime run (ranges do not depend on it)")
    cal.add_argument("--limit", type=int, help="use at most this many samples")
    cal.add_argument("--cuda", action="store_true", help="run calibration on the CUDA execution provider if present")
    _add_accuracy(q)
    pl = q.add_argument_group("placement and target")
    pl.add_argument("--target", choices=tuple(TARGETS), default="trt10",
                    help="trt10: opset 17, FP32 scales; trt8: opset 13–17 for TensorRT 8.5/8.6 (Jetson); "
                         "trt11: strongly typed, FP16 remainder, opset 19")
    pl.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN",
                    help="keep these in float: op types, node names, regexes over node names, or \"depthwise\"")
    pl.add_argument("--int8-deconv", action="store_true",
                    help="quantize ungrouped ConvTranspose too (TensorRT 8.x/10.x; TensorRT-RTX builds them in FP32)")
    out = q.add_argument_group("reporting")
    out.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    A.add_quiet(out)
    out.add_argument("--no-engine-check", action="store_true",
                     help="skip the TensorRT build that reports what the engine runs in INT8 (done when TensorRT-RTX "
                          "or TensorRT is installed)")
    A.add_task(q)
    A.add_preprocess(q)


def _add_accuracy(q) -> None:
    mp = q.add_argument_group("accuracy (on by default with --calib)",
                              "a seeded random fifth of the calibration samples (up to 32) is held back: half choose, half measure the file")
    mp.add_argument("--max-loss-db", type=float, default=2.0,
                    help="keep layers in float until the output SQNR is within this of the weights-only figure (default 2)")
    mp.add_argument("--min-int8-share", type=float, default=0.85,
                    help="never let the INT8 share of multiply-accumulates fall below this (default 0.85)")
    mp.add_argument("--no-fallback", action="store_true", help="write the all-INT8 file: no layer kept in float")
    mp.add_argument("--fallback-imported", action="store_true", help="let mixed precision keep layers that read "
                    "imported ranges in float (by default your ranges are applied and the diagnosis says what they cost)")
    mp.add_argument("--device-profile", metavar="DIR", help="a qdq bundle folder holding the device's trtexec "
                    "profiles (int8_profile.json, fp16_profile.json; *_layers.json): layers no faster in INT8 there are "
                    "the first kept in float")
    mp.add_argument("--no-bias-correction", action="store_true",
                    help="do not fold the mean INT8 error into the biases (default: folded where it helps)")
    mp.add_argument("--smoothquant", nargs="?", const="all", default="auto", choices=("auto", "all", "off"),
                    help="move activation channel ranges into MatMul/Gemm weights, and centre one-sided inputs "
                         "(their offset into the bias), chosen per tensor: auto (default) scales where a LayerNorm's "
                         "scale and bias take it exactly, all (a Mul elsewhere), off (neither)")
    mp.add_argument("--equalize", action="store_true",
                    help="cross-layer equalization of Conv→ReLU→Conv pairs (off by default)")
    mp.add_argument("--max-task-loss", type=float, metavar="X",
                    help="then keep more layers in float until the held-back task agreement is within X of FP32 "
                         "(0.01: 1 %% of boxes, strings or classes)")
    A.add_remainder(mp)


def run(args) -> int:
    # refuse before a long calibration, not after it (save_model checks again when writing)
    check_output(args.output, args.overwrite, protect=[args.model])
    A.check_reports(args.ranges_out)
    result = quantize(args.model, args.calib, method=args.method, percentile=args.percentile,
                      batch_size=args.batch_size, target=args.target, preprocess=A.preprocess(args), limit=args.limit,
                      ranges=args.ranges, force_ranges=args.force_ranges, exclude=args.exclude,
                      providers=["CUDAExecutionProvider", "CPUExecutionProvider"] if args.cuda else None,
                      quiet=args.quiet or args.json, mixed_precision=not args.no_fallback, max_loss_db=args.max_loss_db,
                      min_int8_share=args.min_int8_share, bias_correction=not args.no_bias_correction,
                      smoothquant=args.smoothquant, equalize=args.equalize, remainder=args.remainder,
                      task=A.task_options(args), max_task_loss=args.max_task_loss, int8_deconv=args.int8_deconv,
                      fallback_imported=args.fallback_imported, device_profile=args.device_profile)
    save_model(result.model, args.output, overwrite=args.overwrite, protect=[args.model])
    result.summary.output = str(args.output)
    if not args.no_engine_check:
        view, problem = built_view(result.model)
        if problem:
            result.summary.warnings.append(f"no engine view: {problem[:300]} (qdq check {args.output} says more)")
        if view is not None:
            result.summary.engine = {"int8_layers": view.int8_layers, "weighted_layers": len(view.weighted),
                                     "int8_mac_share": view.int8_mac_share, "findings": view.findings,
                                     "size": view.size_note()}
    if args.ranges_out:
        write_ranges(result.summary, args.ranges_out)
    if args.json:
        print(summary_json(result.summary))
    elif not args.quiet:
        print_summary(result.summary)
    return 0
