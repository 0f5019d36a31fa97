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
from ..trt.layers import engine_view, parse_log
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


def run(args) -> int:
    model = load_model(args.model)
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
