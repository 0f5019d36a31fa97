"""``qdq ranges``: export a model's ranges (a complete TensorRT cache, or JSON), or diff two."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..calib.data import Dataset, model_inputs
from ..calib.range_files import qdq_json_text, read_ranges, trt_cache_text
from ..calib.ranges import METHODS
from ..errors import QdqError
from ..graph.qdq_file import model_ranges
from ..graph.rewrite import safe_scale
from ..modelio import atomic_write_text, check_output, load_model, metadata
from ..report.text import console, table
from ..trt_cache import ALGORITHMS, algorithm_for, network_ranges
from . import args as A


def add(sub) -> None:
    r = A.command(sub, "ranges", "export a model's ranges (TensorRT cache or JSON), or diff two")
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
    A.add_quiet(r, "no progress bar, no notes")
    A.add_preprocess(r)


def run(args) -> int:
    if len(args.sources) == 1:
        return _export(args)
    if len(args.sources) != 2:
        raise QdqError("give one file to export or two to diff")
    return _diff(args)


def _ranges_of(path: Path) -> dict:
    if path.suffix == ".onnx":
        return model_ranges(load_model(path))
    return read_ranges(path).amax


def _export(args) -> int:
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
        text = (trt_cache_text(_cache_scales(amax), args.trt_version,
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


def _diff(args) -> int:
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
    t = table(f"amax differing by more than ×{args.ratio:g} ({len(rows)} of {len(set(a) | set(b))})",
              ("tensor", "A", "B", "ratio"))
    for r in sorted(rows, key=lambda r: -(r["ratio"] or float("inf"))):
        t.add_row(r["tensor"], "–" if r["a"] is None else f"{r['a']:.5g}", "–" if r["b"] is None else f"{r['b']:.5g}",
                  "only in one" if r["ratio"] is None else f"{r['ratio']:.3g}")
    console().print(t)
    return 0


def _cache_scales(amax: dict) -> dict:
    """tensor -> the cache's scale, amax / 127, by the rule the Q/DQ file's scales follow
    (:func:`qdq.graph.rewrite.safe_scale`): an all-zero tensor's amax 0 becomes scale 1, which holds
    its zeros exactly; a zero scale is what TensorRT's builders are not known to accept (docs/design.md)."""
    return {t: float(safe_scale(a, np.float32)[0]) for t, a in amax.items()}


def _complete_cache(args) -> tuple[str, str]:
    """``qdq ranges MODEL.onnx --to trt-cache``: every network tensor's range (see qdq.trt_cache)."""
    model = load_model(args.sources[0])
    meta = metadata(model)
    method = args.method or (meta.get("qdq_method") if meta.get("qdq_method") in METHODS else "entropy")
    dataset = Dataset(args.calib, model_inputs(model), A.preprocess(args), limit=args.limit) if args.calib else None
    nr = network_ranges(model, dataset, method, args.percentile, quiet=args.quiet)
    algorithm = args.trt_algorithm or algorithm_for(method)
    text = trt_cache_text(_cache_scales(nr.amax), args.trt_version, algorithm)
    note = (f"{len(nr.amax)} tensors: {len(nr.from_model)} from the model's Q/DQ, {len(nr.calibrated)} calibrated "
            f"({method}); header TRT-{args.trt_version}-{algorithm}")
    if nr.missing:
        note += (f"; incomplete: {len(nr.missing)} float tensors have no range (e.g. {nr.missing[0]!r}), so TensorRT "
                 "runs the layers touching them in FP16/FP32: pass --calib DATA")
    return text, note
