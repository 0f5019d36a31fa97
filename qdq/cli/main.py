"""Command line: a thin layer over :func:`qdq.quantize` and friends, one module per command.

Exit codes: 0 ok, 1 a check the user asked for failed, 2 bad input or environment
(one line on stderr, no traceback unless --debug).
"""
from __future__ import annotations

import argparse
import sys

from ..errors import QdqError
from ..version import __version__
from . import args as A
from . import bundle, check, compare, demo, inspect, quantize, ranges, sensitivity, trt

COMMANDS = {"quantize": quantize, "compare": compare, "ranges": ranges, "inspect": inspect,
            "sensitivity": sensitivity, "check": check, "trt": trt, "bundle": bundle, "demo": demo}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qdq", description="Float ONNX → TensorRT-ready INT8 Q/DQ ONNX.", formatter_class=A.Help)
    ap.add_argument("--version", action="version", version=f"qdq {__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add(sub)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except QdqError as e:
        if args.debug:
            raise
        print(f"qdq: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("qdq: interrupted; no output was written", file=sys.stderr)
        return 130
    except BrokenPipeError:   # the reader went away (| head): nothing left to say
        sys.stderr.close()
        return 0
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
