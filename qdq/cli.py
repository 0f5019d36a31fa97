"""Command line: a thin layer over :func:`qdq.quantize` and friends.

Exit codes: 0 ok, 1 a check the user asked for failed, 2 bad input or environment
(one line on stderr, no traceback unless --debug).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import QdqError
from .modelio import check_output


def _floats(text: str) -> tuple:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _size(text: str) -> tuple:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        return h, w
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 224x224), got {text!r}") from None


def _add_preprocess(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("image preprocessing (when DATA is a folder of images)",
                             "x = (pixel·scale − mean) / std per channel; defaults from the model's input shape")
    g.add_argument("--size", type=_size, help="HxW to resize to (default: the model's input dims; 640 if dynamic)")
    g.add_argument("--resize", choices=("stretch", "letterbox"), default="stretch",
                   help="stretch to the size, or keep the aspect ratio and pad (letterbox)")
    g.add_argument("--mean", type=_floats, default=(0.0, 0.0, 0.0), help="per-channel mean, after scaling (default 0)")
    g.add_argument("--std", type=_floats, default=(1.0, 1.0, 1.0), help="per-channel std, after scaling (default 1)")
    g.add_argument("--scale", type=float, default=1 / 255, help="pixel multiplier applied first (default 1/255)")
    g.add_argument("--color", choices=("RGB", "BGR"), default="RGB", help="channel order the model expects")
    g.add_argument("--layout", choices=("NCHW", "NHWC"), help="default: read from the model's input shape")


def _preprocess(args):
    from .data import Preprocess

    return Preprocess(size=args.size, resize=args.resize, mean=args.mean, std=args.std, scale=args.scale,
                      color=args.color, layout=args.layout)


def _check_reports(*paths) -> None:
    """Before any work: each report path given (None: not asked for, "-": stdout) can be written;
    reports replace an earlier one of the same name."""
    for p in paths:
        if p not in (None, "-"):
            check_output(p, overwrite=True)


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless it has none or says it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    from .pipeline import TARGETS
    from .ranges import DEFAULT_METHOD, METHODS
    from .trt_cache import ALGORITHMS

    ap = argparse.ArgumentParser(prog="qdq", description="Float ONNX → TensorRT-ready INT8 Q/DQ ONNX.", formatter_class=_Help)
    ap.add_argument("--version", action="version", version=f"qdq {__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)
    add = sub.add_parser

    def parser(name, **kw):
        return add(name, formatter_class=_Help, **kw)

    sub.add_parser = parser

    q = sub.add_parser("quantize", help="calibrate with ONNX Runtime and write a Q/DQ ONNX")
    io = q.add_argument_group("input and output")
    io.add_argument("model", type=Path, help="float ONNX model (never modified)")
    io.add_argument("-o", "--output", type=Path, required=True, help="Q/DQ ONNX to write")
    io.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    io.add_argument("--ranges-out", type=Path, help="write tensor → amax/method/clipped JSON here")
    cal = q.add_argument_group("calibration")
    cal.add_argument("--calib", type=Path,
                     help="folder of .npz or images, a .npz (stacked on axis 0) or a .npy")
    cal.add_argument("--ranges", type=Path, metavar="FILE",
                     help="your ranges: JSON, a TensorRT calibration cache or an ONNX Runtime calibration table; "
                          "they win over calibration, which covers the rest")
    cal.add_argument("--force-ranges", action="store_true",
                     help="apply --ranges also to tensors the placement rules would leave in float")
    cal.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                     help="range method: mse (least squared error), percentile, entropy (TensorRT's KL), max")
    cal.add_argument("--percentile", type=float, default=99.99, help="for --method percentile (default 99.99)")
    cal.add_argument("--batch-size", type=int, default=1, help="samples per ONNX Runtime run (ranges do not depend on it)")
    cal.add_argument("--limit", type=int, help="use at most this many samples")
    cal.add_argument("--cuda", action="store_true", help="run calibration on the CUDA execution provider if present")
    mp = q.add_argument_group("accuracy (on by default with --calib)",
                              "every 5th calibration sample (up to 16) is held back to measure the file")
    mp.add_argument("--max-loss-db", type=float, default=2.0,
                    help="keep layers in float until the output SQNR is within this of the weights-only figure (default 2)")
    mp.add_argument("--min-int8-share", type=float, default=0.85,
                    help="never let the INT8 share of multiply-accumulates fall below this (default 0.85)")
    mp.add_argument("--no-fallback", action="store_true", help="write the all-INT8 file: no layer kept in float")
    mp.add_argument("--no-bias-correction", action="store_true",
                    help="do not fold the mean INT8 error into the biases (default: folded where it helps)")
    mp.add_argument("--smoothquant", action="store_true",
                    help="SmoothQuant: move activation channel ranges into MatMul/Gemm weights (off by default)")
    mp.add_argument("--equalize", action="store_true",
                    help="cross-layer equalization of Conv→ReLU→Conv pairs (off by default)")
    pl = q.add_argument_group("placement and target")
    pl.add_argument("--target", choices=tuple(TARGETS), default="trt10",
                    help="trt10: opset 17, FP32 scales; trt8: opset 13–17 for TensorRT 8.5/8.6 (Jetson); "
                         "trt11: strongly typed, FP16 remainder, opset 19")
    pl.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN",
                    help="keep these in float: op types, node names, regexes over node names, or \"depthwise\"")
    out = q.add_argument_group("reporting")
    out.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no table")
    out.add_argument("--no-engine-check", action="store_true",
                     help="skip the TensorRT build that reports what the engine runs in INT8 (done when TensorRT-RTX "
                          "or TensorRT is installed)")
    _add_preprocess(q)

    c = sub.add_parser("compare", help="measure the quantized model against the float or FP16 model, layer by layer")
    io = c.add_argument_group("models and data")
    io.add_argument("float_model", type=Path, help="the float ONNX model")
    io.add_argument("quant_model", type=Path, help="its Q/DQ version")
    io.add_argument("--data", type=Path, required=True, help="inputs, as for quantize --calib")
    io.add_argument("--limit", type=int, help="use at most this many samples")
    io.add_argument("--batch-size", type=int, default=1, help="samples per ONNX Runtime run")
    an = c.add_argument_group("analysis")
    an.add_argument("--reference", choices=("fp32", "fp16"), default="fp32",
                    help="fp16: the FP16 cast of the float model (what a TensorRT FP16 engine computes)")
    an.add_argument("--layerwise", action="store_true", help="compare every tensor that carries a Q/DQ")
    an.add_argument("--threshold-db", type=float, default=20.0, help="name the first tensor below this accumulated SQNR")
    an.add_argument("--no-budget", action="store_true", help="skip the weights-only / activations-only runs")
    an.add_argument("--fail-below-db", type=float, help="exit code 1 when an output's SQNR is below this")
    rep = c.add_argument_group("reporting")
    rep.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write the result as JSON (stdout if no path)")
    rep.add_argument("--report", type=Path, help="write a self-contained HTML report here (with the precision each "
                     "layer gets in TensorRT when TensorRT-RTX is installed)")
    rep.add_argument("--no-engine-check", action="store_true", help="leave the TensorRT build out of the report")
    rep.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no tables")
    _add_preprocess(c)

    r = sub.add_parser("ranges", help="export a model's ranges (TensorRT cache or JSON), or diff two")
    r.add_argument("sources", type=Path, nargs="+", metavar="FILE",
                   help="one model to export (Q/DQ or float), or two (Q/DQ models or ranges files) to diff")
    r.add_argument("--to", choices=("trt-cache", "json"), help="export format: a TensorRT calibration cache or qdq's JSON")
    r.add_argument("-o", "--output", type=Path, help="file to write (stdout if omitted)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    ex = r.add_argument_group("TensorRT cache (implicit INT8 on TensorRT 8.x/10.x)",
                              "a complete cache has a range for every tensor an INT8 layer reads or writes: "
                              "the model's Q/DQ ranges, the other tensors calibrated on --calib")
    ex.add_argument("--calib", type=Path, help="data to calibrate the tensors without Q/DQ (as quantize --calib)")
    ex.add_argument("--method", choices=METHODS,
                    help="range method for those tensors (default: the Q/DQ model's own, else entropy)")
    ex.add_argument("--percentile", type=float, default=99.99, help="for --method percentile (default 99.99)")
    ex.add_argument("--limit", type=int, help="use at most this many samples")
    ex.add_argument("--trt-version", type=int, default=8601, help="version in the cache header (default 8601 = 8.6.1)")
    ex.add_argument("--trt-algorithm", choices=ALGORITHMS,
                    help="calibrator named in the header (default: EntropyCalibration2, MinMaxCalibration for max)")
    r.add_argument("--ratio", type=float, default=1.1, help="diff: list tensors whose amax differ by more than this ratio "
                   "(default 1.1)")
    r.add_argument("--json", action="store_true", help="diff as JSON")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no notes")
    _add_preprocess(r)

    i = sub.add_parser("inspect", help="list a Q/DQ model's pairs, its INT8 coverage and TensorRT lint")
    i.add_argument("model", type=Path, help="a Q/DQ ONNX model")
    i.add_argument("--target", choices=tuple(TARGETS), help="also check opset and scale dtype for this TensorRT")
    i.add_argument("--json", action="store_true", help="print as JSON")
    i.add_argument("--netron", action="store_true", help="serve the file in Netron on localhost (pip install netron)")
    i.add_argument("--port", type=int, default=8080, help="Netron's port")

    se = sub.add_parser("sensitivity", help="per-layer sensitivity: the SQNR each layer's INT8 leaves at its output "
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
    se.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write JSON (stdout if no path)")
    se.add_argument("--report", type=Path, help="self-contained HTML report")
    se.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no table")
    _add_preprocess(se)

    ck = sub.add_parser("check", help="will TensorRT accept this file? parse + build ahead of time, no GPU needed")
    ck.add_argument("model", type=Path, help="the ONNX file to build")
    ck.add_argument("--target", choices=tuple(TARGETS), help="also lint opset and scale dtype for this TensorRT")
    ck.add_argument("--shapes", nargs="+", default=[], metavar="NAME:DIMS",
                    help="e.g. x:1x3x640x640 for dynamic inputs (default: batch 1, other dynamic dims 640)")
    ck.add_argument("--layers", action="store_true",
                    help="what TensorRT built: each weighted layer's engine layer and precision, reformats, and "
                         "Q/DQ that did not fuse")
    ck.add_argument("--json", action="store_true", help="print as JSON")

    trt = sub.add_parser("trt", help="build and compare FP16 and INT8 TensorRT engines")
    trt_sub = trt.add_subparsers(dest="trt_command", required=True)
    trt_add = trt_sub.add_parser
    trt_sub.add_parser = lambda name, **kw: trt_add(name, formatter_class=_Help, **kw)
    for name, help_text in (("build", "build the FP16 and INT8 engines and print trtexec lines"),
                            ("compare", "run both engines (GPU) and compare INT8 with FP16")):
        t = trt_sub.add_parser(name, help=help_text)
        t.add_argument("float_model", type=Path, help="the float ONNX model")
        t.add_argument("quant_model", type=Path, help="its Q/DQ version")
        t.add_argument("--data", type=Path, required=True, help="inputs (as quantize --calib); the first fixes the shapes")
        t.add_argument("--workdir", type=Path, default=Path("qdq-engines"), help="engines and timing cache go here")
        t.add_argument("--shapes", nargs="+", default=[], metavar="NAME:DIMS", help="e.g. x:1x3x640x640 for dynamic inputs")
        t.add_argument("--limit", type=int, help="use at most this many samples")
        t.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write JSON (stdout if no path)")
        t.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no lines")
        if name == "compare":
            t.add_argument("--runs", type=int, default=50, help="timed runs per engine")
        _add_preprocess(t)

    d = sub.add_parser("demo", help="quantize PP-OCRv4's text detector on real text images (no arguments needed)")
    d.add_argument("--out-dir", type=Path, help="where to write (default: the qdq cache folder)")
    d.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="range method")
    d.add_argument("--json", action="store_true", help="print the summary and the check as JSON")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no table")
    return ap


def cmd_quantize(args) -> int:
    from .modelio import save_model
    from .pipeline import quantize, write_ranges
    from .report import print_summary, summary_json

    # refuse before a long calibration, not after it (save_model checks again when writing)
    check_output(args.output, args.overwrite, protect=[args.model])
    _check_reports(args.ranges_out)
    result = quantize(args.model, args.calib, method=args.method, percentile=args.percentile,
                      batch_size=args.batch_size, target=args.target, preprocess=_preprocess(args), limit=args.limit,
                      ranges=args.ranges, force_ranges=args.force_ranges, exclude=args.exclude,
                      providers=["CUDAExecutionProvider", "CPUExecutionProvider"] if args.cuda else None,
                      quiet=args.quiet or args.json, mixed_precision=not args.no_fallback, max_loss_db=args.max_loss_db,
                      min_int8_share=args.min_int8_share, bias_correction=not args.no_bias_correction,
                      smoothquant=args.smoothquant, equalize=args.equalize)
    save_model(result.model, args.output, overwrite=args.overwrite, protect=[args.model])
    result.summary.output = str(args.output)
    if not args.no_engine_check:
        from .engine_layers import built_view

        view = built_view(result.model)
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


def cmd_compare(args) -> int:
    import json

    from .comparison import compare
    from .modelio import atomic_write_text
    from .report import print_compare

    _check_reports(args.json, args.report)

    result = compare(args.float_model, args.quant_model, args.data, reference=args.reference,
                     layerwise=args.layerwise, threshold_db=args.threshold_db, budget=not args.no_budget,
                     preprocess=_preprocess(args), limit=args.limit, batch_size=args.batch_size,
                     quiet=args.quiet or args.json == "-")
    if args.json == "-":
        print(json.dumps(result.to_dict(), indent=1))
    elif args.json:
        atomic_write_text(args.json, json.dumps(result.to_dict(), indent=1))
    if args.report:
        from .engine_layers import built_view
        from .html_report import render
        from .modelio import load_model

        engine = None if args.no_engine_check else built_view(load_model(args.quant_model))
        atomic_write_text(args.report, render(result, args.float_model.name, args.quant_model.name, engine=engine))
    if args.json != "-" and not args.quiet:
        print_compare(result)
    if args.fail_below_db is not None:
        low = [o.name for o in result.outputs if o.metrics["sqnr_db"] < args.fail_below_db]
        if low:
            print(f"qdq: outputs below {args.fail_below_db:g} dB: {', '.join(low)}", file=sys.stderr)
            return 1
    return 0


def _ranges_of(path: Path) -> dict:
    from .inspection import model_ranges
    from .modelio import load_model
    from .range_files import read_ranges

    if path.suffix == ".onnx":
        return model_ranges(load_model(path))
    return read_ranges(path).amax


def cmd_ranges(args) -> int:
    import json

    from .modelio import atomic_write_text
    from .range_files import qdq_json_text, trt_cache_text
    from .ranges import QMAX

    if len(args.sources) == 1:
        if not args.to:
            raise QdqError("pass --to trt-cache or --to json to export, or two files to diff")
        src = args.sources[0]
        if args.output:
            check_output(args.output, args.overwrite)
        if args.to == "trt-cache" and src.suffix == ".onnx":
            text, note = _complete_cache(args)
        else:
            amax = _ranges_of(src)
            if not amax:
                raise QdqError(f"{src}: no activation Q/DQ found; is this a quantized model?")
            text = (trt_cache_text({t: a / QMAX for t, a in amax.items()}, args.trt_version,
                                   args.trt_algorithm or "EntropyCalibration2") if args.to == "trt-cache"
                    else qdq_json_text({t: {"amax": a} for t, a in amax.items()}, "exported"))
            note = ""
        if args.output:
            atomic_write_text(args.output, text, overwrite=args.overwrite)
        else:
            sys.stdout.write(text)
        if note and not args.quiet:
            print(f"qdq: {note}", file=sys.stderr)
        return 0
    if len(args.sources) != 2:
        raise QdqError("give one file to export or two to diff")
    a, b = (_ranges_of(p) for p in args.sources)
    rows = []
    for t in sorted(set(a) | set(b)):
        x, y = a.get(t), b.get(t)
        ratio = (max(x, y) / min(x, y) if min(x, y) > 0 else float("inf")) if x is not None and y is not None else None
        if ratio is None or ratio > args.ratio:
            rows.append({"tensor": t, "a": x, "b": y, "ratio": ratio})
    if args.json:
        print(json.dumps({"a": str(args.sources[0]), "b": str(args.sources[1]), "ratio": args.ratio, "differ": rows},
                         indent=1, default=str))
        return 0
    from .report import console, table

    t = table(f"amax differing by more than ×{args.ratio:g} ({len(rows)} of {len(set(a) | set(b))})",
              ("tensor", "A", "B", "ratio"))
    for r in sorted(rows, key=lambda r: -(r["ratio"] or float("inf"))):
        t.add_row(r["tensor"], "–" if r["a"] is None else f"{r['a']:.5g}", "–" if r["b"] is None else f"{r['b']:.5g}",
                  "only in one" if r["ratio"] is None else f"{r['ratio']:.3g}")
    console().print(t)
    return 0


def _complete_cache(args) -> tuple[str, str]:
    """``qdq ranges MODEL.onnx --to trt-cache``: every network tensor's range (see qdq.trt_cache)."""
    from .data import Dataset, model_inputs
    from .modelio import load_model
    from .range_files import trt_cache_text
    from .ranges import METHODS, QMAX
    from .trt_cache import algorithm_for, network_ranges

    model = load_model(args.sources[0])
    meta = {p.key: p.value for p in model.metadata_props}
    method = args.method or (meta.get("qdq_method") if meta.get("qdq_method") in METHODS else "entropy")
    dataset = Dataset(args.calib, model_inputs(model), _preprocess(args), limit=args.limit) if args.calib else None
    nr = network_ranges(model, dataset, method, args.percentile, quiet=args.quiet)
    algorithm = args.trt_algorithm or algorithm_for(method)
    text = trt_cache_text({t: a / QMAX for t, a in nr.amax.items()}, args.trt_version, algorithm)
    note = (f"{len(nr.amax)} tensors: {len(nr.from_model)} from the model's Q/DQ, {len(nr.calibrated)} calibrated "
            f"({method}); header TRT-{args.trt_version}-{algorithm}")
    if nr.missing:
        note += (f"; incomplete: {len(nr.missing)} float tensors have no range (e.g. {nr.missing[0]!r}), so TensorRT "
                 "runs the layers touching them in FP16/FP32: pass --calib DATA")
    return text, note


def cmd_inspect(args) -> int:
    import json

    from .inspection import RULES, inspect_model
    from .modelio import load_model

    model = load_model(args.model)
    ins = inspect_model(model, args.target)
    if args.json:
        print(json.dumps(ins.to_dict(), indent=1))
    else:
        from .report import print_inspection

        print_inspection(ins, RULES)
    if args.netron:
        try:
            import netron
        except ImportError:
            raise QdqError("Netron is not installed: pip install netron") from None
        netron.start(str(args.model), address=("localhost", args.port), browse=False)
        print(f"Netron serves {args.model} at http://localhost:{args.port}/ (Ctrl-C to stop)", flush=True)
        try:
            netron.wait()
        except KeyboardInterrupt:
            netron.stop()
    return 1 if ins.errors else 0


def cmd_sensitivity(args) -> int:
    import json

    from .modelio import atomic_write_text
    from .pipeline import quantize
    from .report import print_sensitivity
    from .sensitivity import sensitivity

    quiet = args.quiet or args.json == "-"
    _check_reports(args.json, args.report)
    pre = _preprocess(args)
    first = quantize(args.model, args.calib, method=args.method, target=args.target, exclude=args.exclude,
                     preprocess=pre, limit=args.limit, quiet=quiet, mixed_precision=False)
    result = sensitivity(first, args.data, preprocess=pre, limit=args.val_limit, verify=args.verify, quiet=quiet)
    if args.json:
        text = json.dumps(result.to_dict(), indent=1)
        print(text) if args.json == "-" else atomic_write_text(args.json, text)
    if args.report:
        from .html_report import render_sensitivity

        atomic_write_text(args.report, render_sensitivity(result, args.model.name))
    if not quiet:
        print_sensitivity(result)
    return 0


def _shapes(specs) -> dict:
    out = {}
    for s in specs:
        name, sep, dims = s.rpartition(":")
        try:
            out[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            name = ""
        if not sep or not name:
            raise QdqError(f"--shapes {s!r}: expected NAME:DIMS such as input:1x3x224x224")
    return out


def cmd_check(args) -> int:
    import json

    from .inspection import inspect_model
    from .modelio import load_model
    from .tensorrt_backend import check_model

    model = load_model(args.model)
    lint = inspect_model(model, args.target)
    res = check_model(model, _shapes(args.shapes), verbose=args.layers)
    view = None
    if args.layers and res.ok:
        from .engine_layers import engine_view, parse_log

        view = engine_view(model, parse_log(res.log), len(res.engine))
    doc = {"model": str(args.model), "backend": f"{res.backend} {res.version}", "parsed": res.parsed,
           "built": res.built, "shapes": {k: list(v) for k, v in res.shapes.items()}, "errors": res.errors,
           "lint": lint.to_dict()["findings"]}
    if view is not None:
        doc.update(view.to_dict())
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        shapes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in res.shapes.items())
        print(f"{args.model}: {res.backend} {res.version}: parse {'ok' if res.parsed else 'FAILED'}, "
              f"build {'ok' if res.built else 'FAILED' if res.parsed else 'not reached'}"
              + (f" (input shapes {shapes})" if shapes else ""))
        for e in res.errors:
            print(f"  {e}")
        print(f"lint{' for ' + args.target if args.target else ''}: "
              + (f"{len(lint.findings)} findings, {lint.errors} errors" if lint.findings else "no findings"))
        for f in lint.findings:
            print(f"  {f.rule} ({f.level}) {f.node}: {f.message}")
        if view is not None:
            from .report import print_engine_view

            print_engine_view(view)
    return 0 if res.ok and not lint.errors else 1


def cmd_trt(args) -> int:
    import json
    from dataclasses import asdict

    from .data import Dataset, model_inputs
    from .modelio import atomic_write_text, load_model
    from .tensorrt_backend import build_engines, compare_engines

    _check_reports(args.json)
    dataset = Dataset(args.data, model_inputs(load_model(args.float_model)), _preprocess(args), limit=args.limit)
    quiet = args.quiet or args.json == "-"
    engines = build_engines(args.float_model, args.quant_model, dataset, args.workdir, _shapes(args.shapes) or None,
                            quiet=quiet)
    doc = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(engines).items()}
    if args.trt_command == "compare":
        doc["comparison"] = compare_engines(engines, dataset, args.runs, quiet)
    if args.json:
        text = json.dumps(doc, indent=1, default=str)
        print(text) if args.json == "-" else atomic_write_text(args.json, text)
    if not quiet:
        print(f"engines ({engines.backend} {engines.version}): {engines.fp16} ({engines.fp16_bytes / 1e6:.1f} MB), "
              f"{engines.int8} ({engines.int8_bytes / 1e6:.1f} MB)")
        if engines.int8_layers:
            v = engines.int8_layers
            print(f"  INT8 engine: {v['int8_layers']}/{len(v['weighted'])} weighted layers in INT8; {v['size']}")
        if "comparison" in doc:
            c = doc["comparison"]
            for o, m in c["outputs"].items():
                print(f"  {o}: INT8 vs FP16 SQNR {m['sqnr_db']:.2f} dB, cosine {m['cosine']:.5f}, "
                      f"bias {m['bias']:+.4f}, gain {m['gain']:.4f}")
            print(f"  latency FP16 {c['latency_ms']['fp16']:.3f} ms, INT8 {c['latency_ms']['int8']:.3f} ms, "
                  f"speed-up ×{c['speedup']:.2f}; layers {c['layers']}")
        print("the same engines with trtexec (TensorRT 8.5/8.6/10.x, e.g. on a Jetson; then TensorRT 11, strongly typed):")
        for line in engines.trtexec:
            print(f"  {line}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(out_dir=args.out_dir, method=args.method, as_json=args.json, quiet=args.quiet)


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        commands = {"quantize": cmd_quantize, "compare": cmd_compare, "ranges": cmd_ranges, "inspect": cmd_inspect,
                    "check": cmd_check, "trt": cmd_trt, "sensitivity": cmd_sensitivity, "demo": cmd_demo}
        return commands[args.command](args)
    except QdqError as e:
        if args.debug:
            raise
        print(f"qdq: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("qdq: interrupted; no output was written", file=sys.stderr)
        return 130
    except OSError as e:
        if args.debug:
            raise
        print(f"qdq: error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug of ours: still one line, with the way to the traceback
        if args.debug:
            raise
        print(f"qdq: internal error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''} "
              "(rerun with --debug for the traceback and please report it)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
