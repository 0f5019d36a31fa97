"""``qdq demo``: the main job on an embedded default, no arguments needed."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..calib.ranges import DEFAULT_METHOD, METHODS
from ..errors import QdqError
from . import args as A


def add(sub) -> None:
    d = A.command(sub, "demo", "quantize PP-OCRv4's text detector on real text images (no arguments needed)")
    d.add_argument("--out-dir", type=Path, help="where to write (default: the qdq cache folder)")
    d.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="range method")
    d.add_argument("--json", action="store_true", help="print the summary and the check as JSON")
    A.add_quiet(d)


def run(args) -> int:
    for module in ("PIL", "skimage"):   # the demo extra is needed only here
        if importlib.util.find_spec(module) is None:
            raise QdqError("qdq demo needs Pillow and scikit-image: pip install 'qdq[demo]'")
    from ..demo.run import run_demo

    return run_demo(out_dir=args.out_dir, method=args.method, as_json=args.json, quiet=args.quiet)
