"""``qdq demo``: the main job on an embedded default, no arguments needed."""
from __future__ import annotations

from pathlib import Path

from ..calib.ranges import DEFAULT_METHOD, METHODS
from . import args as A


def add(sub) -> None:
    d = A.command(sub, "demo", "quantize PP-OCRv4's text detector on real text images (no arguments needed)")
    d.add_argument("--out-dir", type=Path, help="where to write (default: the qdq cache folder)")
    d.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="range method")
    d.add_argument("--json", action="store_true", help="print the summary and the check as JSON")
    A.add_quiet(d)


def run(args) -> int:
    from ..demo.run import run_demo   # the demo extra (Pillow, scikit-image) is needed only here

    return run_demo(out_dir=args.out_dir, method=args.method, as_json=args.json, quiet=args.quiet)
