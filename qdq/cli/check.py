"""``qdq check``: will TensorRT accept this file? Parse and build ahead of time, no GPU needed."""
from __future__ import annotations

import json
from pathlib import Path

from ..calib.data import model_inputs
from ..graph.shapes import shape_text
from ..modelio import load_model
from ..report.inspection import inspect_model
from ..report.text import print_engine_view
from ..targets import TARGETS
from ..trt.backend import check_model
from ..errors import QdqError
from ..graph.placement import WEIGHTED
from ..report.text import print_timings
from ..trt.layers import engine_view, parse_log
from ..trt.profile import attach, read_layer_info, read_profile, timing_view
from . import args as A


def add(sub) -> None:
    ck = A.command(sub, "check", "will TensorRT accept this file? parse + build ahead of time, no GPU needed")
    ck.add_argument("model", type=Path, help="the ONNX file to build")
    ck.add_argument("--target", choices=tuple(TARGETS), help="also lint opset and scale dtype for this TensorRT")
    A.add_shapes(ck, "e.g. x:1x3x640x640 for dynamic inputs (default: batch 1, other dynamic dims 640)")
    ck.add_argument("--layers", action="store_true",
                    help="what TensorRT built: each weighted layer's engine layer and precision, reformats, and "
                         "Q/DQ that did not fuse")
    ck.add_argument("--json", action="store_true", help="print as JSON")
    dev = ck.add_argument_group("layer timings from the device (trtexec --exportProfile; see qdq bundle's RUN.txt)")
    dev.add_argument("--profile", type=Path, help="the INT8 engine's profile: read it instead of building here")
    dev.add_argument("--profile-fp16", type=Path, help="the FP16 engine's profile (of the float model)")
    dev.add_argument("--layer-info", type=Path, help="the INT8 engine's trtexec --exportLayerInfo (maps TensorRT "
                     "10+ fused kernels to ONNX nodes, and gives each layer's precision)")
    dev.add_argument("--layer-info-fp16", type=Path, help="the FP16 engine's --exportLayerInfo")


def run(args) -> int:
    model = load_model(args.model)
    if args.profile:
        return _timings(args, model)
    if args.profile_fp16 or args.layer_info or args.layer_info_fp16:
        raise QdqError("--profile-fp16 and --layer-info go with --profile (the INT8 engine's trtexec --exportProfile)")
    lint = inspect_model(model, args.target)
    res = check_model(model, A.shapes(args.shapes, [i.name for i in model_inputs(model)]), verbose=args.layers)
    view = engine_view(model, parse_log(res.log), len(res.engine)) if args.layers and res.ok else None
    doc = {"model": str(args.model), "backend": f"{res.backend} {res.version}", "parsed": res.parsed,
           "built": res.built, "shapes": {k: list(v) for k, v in res.shapes.items()}, "errors": res.errors,
           "lint": lint.to_dict()["findings"]}
    if view is not None:
        doc.update(view.to_dict())
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        _print(args, res, lint, view)
    return 0 if res.ok and not lint.errors else 1


def _print(args, res, lint, view) -> None:
    shapes = shape_text(res.shapes)
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
        print_engine_view(view)


def _info(path):
    return read_layer_info(path) if path is not None else None


def _timings(args, model) -> int:
    """--profile: where the INT8 engine spends its time against the FP16 engine, per weighted ONNX node."""
    known = {n.name for n in model.graph.node}
    weighted = {n.name: n.op_type for n in model.graph.node if n.op_type in WEIGHTED}
    int8 = attach(read_profile(args.profile), known, _info(args.layer_info))
    fp16 = attach(read_profile(args.profile_fp16), known, _info(args.layer_info_fp16)) if args.profile_fp16 else None
    view = timing_view(weighted, int8, fp16)
    if args.json:
        print(json.dumps(view.to_dict(), indent=1))
    else:
        print_timings(view)
    return 0
