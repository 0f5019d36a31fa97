"""``qdq inspect``: a Q/DQ model's pairs, INT8 coverage and TensorRT lint; Netron on localhost."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import QdqError
from ..modelio import load_model
from ..report.inspection import RULES, inspect_model
from ..report.text import print_inspection
from ..targets import TARGETS
from . import args as A


def add(sub) -> None:
    i = A.command(sub, "inspect", "list a Q/DQ model's pairs, its INT8 coverage and TensorRT lint")
    i.add_argument("model", type=Path, help="a Q/DQ ONNX model")
    i.add_argument("--target", choices=tuple(TARGETS), help="also check opset and scale dtype for this TensorRT")
    i.add_argument("--json", action="store_true", help="print as JSON")
    i.add_argument("--netron", action="store_true", help="serve the file in Netron on localhost (pip install netron)")
    i.add_argument("--port", type=int, default=8080, help="Netron's port")


def run(args) -> int:
    model = load_model(args.model)
    ins = inspect_model(model, args.target)
    if args.json:
        print(json.dumps(ins.to_dict(), indent=1))
    else:
        print_inspection(ins, RULES)
    if args.netron:
        _serve(args.model, args.port)
    return 1 if ins.errors else 0


def _serve(path: Path, port: int) -> None:
    try:
        import netron
    except ImportError:
        raise QdqError("Netron is not installed: pip install netron") from None
    netron.start(str(path), address=("localhost", port), browse=False)
    print(f"Netron serves {path} at http://localhost:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        netron.wait()
    except KeyboardInterrupt:
        netron.stop()
