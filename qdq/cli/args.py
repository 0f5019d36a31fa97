"""Argument groups shared by the commands (as Polygraphy's ``tools/args``): each ``add_*`` puts a group
on a parser, and a matching function turns the parsed values into what the Python API takes."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..calib.data import Preprocess
from ..measure.tasks import TASKS, TaskOptions
from ..errors import QdqError
from ..modelio import atomic_write_text, check_output


class Help(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless it has none or says it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def command(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    """A sub-command parser with qdq's help formatter."""
    return sub.add_parser(name, help=help_text, formatter_class=Help)


def floats(text: str) -> tuple:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def size(text: str) -> tuple:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        return h, w
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 224x224), got {text!r}") from None


def add_preprocess(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("image preprocessing (when DATA is a folder of images)",
                             "x = (pixel·scale − mean) / std per channel; defaults from the model's input shape")
    g.add_argument("--size", type=size, help="HxW to resize to (default: the model's input dims; 640 if dynamic)")
    g.add_argument("--resize", choices=("stretch", "letterbox"), default="stretch",
                   help="stretch to the size, or keep the aspect ratio and pad (letterbox)")
    g.add_argument("--mean", type=floats, help="mean after scaling: one value per channel, or one for all (default 0)")
    g.add_argument("--std", type=floats, help="std after scaling: one value per channel, or one for all (default 1)")
    g.add_argument("--scale", type=float, default=1 / 255, help="pixel multiplier applied first (default 1/255)")
    g.add_argument("--color", choices=("RGB", "BGR", "GRAY"), default="RGB",
                   help="channel order the model expects; GRAY (one channel) is chosen by itself for a 1-channel input")
    g.add_argument("--layout", choices=("NCHW", "NHWC"), help="default: read from the model's input shape")


def preprocess(args) -> Preprocess:
    return Preprocess(size=args.size, resize=args.resize, mean=args.mean, std=args.std, scale=args.scale,
                      color=args.color, layout=args.layout)


def add_task(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task agreement (what you judge the model by)",
                             "agreement of the quantized outputs with the FP32 outputs, per sample and pooled; "
                             "inferred only from positive evidence in the outputs, with one line saying why")
    g.add_argument("--task", choices=TASKS, default=None,
                   help="classify: top-1/top-5; detect: box F1 at IoU 0.5; textmap: DB map IoU and box F1; "
                        "ctc: exact strings and CER; segment: pixel agreement and mean IoU; auto: the inferred task, "
                        "confirmed (so --max-task-loss may act on it) (default: inferred, reported only)")
    g.add_argument("--metric", metavar="MODULE:FUNCTION",
                   help="your own metric, called with (FP32 outputs, quantized outputs) per sample, higher is better")
    g.add_argument("--blank", type=int, default=None,
                   help="ctc: the blank class index (PaddleOCR: 0; default: the first or the last class, whichever "
                        "the outputs show as the blank)")
    g.add_argument("--score-threshold", type=float, default=0.25, help="detect: keep boxes scoring at least this")
    g.add_argument("--nms-iou", type=float, default=0.45, help="detect: class-wise NMS at this IoU")
    g.add_argument("--map-threshold", type=float, default=0.3, help="textmap: binarise the map here (PaddleOCR thresh)")
    g.add_argument("--box-threshold", type=float, default=0.6, help="textmap: keep boxes of this mean probability")


def task_options(args) -> TaskOptions:
    return TaskOptions(task=args.task or "auto", confirmed=args.task is not None, blank=args.blank,
                       score=args.score_threshold, nms=args.nms_iou, map_thresh=args.map_threshold,
                       box_thresh=args.box_threshold, metric=args.metric)


def add_remainder(g) -> None:
    g.add_argument("--remainder", choices=("fp16", "fp32"), default="fp16",
                   help="how the layers without Q/DQ run when measured: fp16, as TensorRT 8.x/10.x runs them with "
                        "--int8 --fp16 (the nodes the FP16 plan keeps in FP32 pinned), or fp32 as written")


def add_json_path(g) -> None:
    g.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write JSON (stdout if no path)")


def add_quiet(g, what: str = "no progress bar, no table") -> None:
    g.add_argument("-q", "--quiet", action="store_true", help=what)


def add_shapes(g, help_text: str) -> None:
    g.add_argument("--shapes", nargs="+", default=[], metavar="NAME:DIMS", help=help_text)


def shapes(specs, inputs=None) -> dict:
    """``--shapes NAME:DIMS …`` as {name: dims}; with ``inputs`` (the model's input names) a name
    that is not one of them is an error (a typo would build at the default shape)."""
    out = {}
    for s in specs:
        name, sep, dims = s.rpartition(":")
        try:
            out[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            name = ""
        if not sep or not name:
            raise QdqError(f"--shapes {s!r}: expected NAME:DIMS such as input:1x3x224x224")
        if inputs is not None and name not in inputs:
            raise QdqError(f"--shapes names {name!r}, which is not an input of the model; its inputs: "
                           f"{', '.join(inputs)}")
    return out


def check_reports(*paths) -> None:
    """Before any work: each report path given (None: not asked for, "-": stdout) can be written;
    reports replace an earlier one of the same name."""
    for p in paths:
        if p not in (None, "-"):
            check_output(p, overwrite=True)


def write_json(text: str, where) -> None:
    """``--json``'s text to stdout ("-") or, through a temp file, to a path."""
    if where == "-":
        print(text)
    else:
        atomic_write_text(Path(where), text)
