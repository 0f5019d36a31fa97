"""``qdq bundle``: the folder to run on the device (Polygraphy, trtexec), and what to bring back."""
from __future__ import annotations

import json
from pathlib import Path

from ..bundle import bundle
from . import args as A


def add(sub) -> None:
    c = A.command(sub, "bundle", "a folder to copy to the device: the Q/DQ file, samples in Polygraphy's input format, "
                  "qdq's prediction for them, and the commands that build, run and profile the engines there")
    io = c.add_argument_group("models and data")
    io.add_argument("float_model", type=Path, help="the float ONNX model")
    io.add_argument("quant_model", type=Path, help="its Q/DQ version (qdq quantize)")
    io.add_argument("--data", type=Path, required=True, help="validation inputs, as for quantize --calib")
    io.add_argument("-o", "--output", type=Path, required=True, help="the folder to write")
    io.add_argument("--overwrite", action="store_true", help="replace a bundle already in that folder")
    io.add_argument("--samples", type=int, default=32, help="samples to take (a seeded choice; all when fewer)")
    io.add_argument("--seed", type=int, default=0, help="seed of the choice")
    rep = c.add_argument_group("reporting")
    A.add_json_path(rep)
    A.add_quiet(rep, "no progress bar")
    A.add_task(c)
    A.add_preprocess(c)


def run(args) -> int:
    A.check_reports(args.json)
    b = bundle(args.float_model, args.quant_model, args.data, args.output, samples=args.samples, seed=args.seed,
               preprocess=A.preprocess(args), task=A.task_options(args), overwrite=args.overwrite,
               quiet=args.quiet or args.json == "-")
    if args.json:
        A.write_json(json.dumps({"folder": str(b.folder), "target": b.target, "samples": b.samples,
                                 "prediction": b.prediction, "commands": b.commands}, indent=1), args.json)
    if args.json != "-" and not args.quiet:
        fig = b.prediction["int8_vs_fp16"]["sqnr"]
        print(f"{b.folder}: {len(b.samples)} samples (inputs.json), {b.target} file; predicted INT8 engine vs FP16 "
              f"engine {fig['value']:.1f} dB ({fig['low']:.1f}–{fig['high']:.1f}). On the device (RUN.txt):")
        for line in b.commands:
            print(f"  {line}")
    return 0
