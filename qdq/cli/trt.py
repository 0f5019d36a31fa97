"""``qdq trt build`` / ``qdq trt compare``: FP16 and INT8 engines, trtexec lines, and (GPU) both run."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..calib.data import Dataset, model_inputs
from ..errors import QdqError
from ..measure.autocast import fp16_model
from ..measure.engines import compare_engines
from ..modelio import load_model
from ..trt.backend import Backend, Engines, build_engines
from . import args as A


def add(sub) -> None:
    trt = sub.add_parser("trt", help="build and compare FP16 and INT8 TensorRT engines", formatter_class=A.Help)
    trt_sub = trt.add_subparsers(dest="trt_command", required=True)
    for name, help_text in (("build", "build the FP16 and INT8 engines and print trtexec lines"),
                            ("compare", "run both engines (GPU) and compare INT8 with FP16")):
        t = A.command(trt_sub, name, help_text)
        t.add_argument("float_model", type=Path, help="the float ONNX model")
        t.add_argument("quant_model", type=Path, help="its Q/DQ version")
        t.add_argument("--data", type=Path, required=True, help="inputs (as quantize --calib); the first fixes the shapes")
        t.add_argument("--workdir", type=Path, default=Path("qdq-engines"), help="engines and timing cache go here")
        A.add_shapes(t, "e.g. x:1x3x640x640 for dynamic inputs")
        t.add_argument("--limit", type=int, help="use at most this many samples")
        A.add_json_path(t)
        A.add_quiet(t, "no progress bar, no lines")
        if name == "compare":
            t.add_argument("--runs", type=int, default=50, help="timed runs per engine")
        A.add_preprocess(t)


def run(args) -> int:
    A.check_reports(args.json)
    dataset = Dataset(args.data, model_inputs(load_model(args.float_model)), A.preprocess(args), limit=args.limit)
    quiet = args.quiet or args.json == "-"
    engines = engines_on(args.float_model, args.quant_model, dataset, args.workdir,
                         A.shapes(args.shapes, [i.name for i in dataset.inputs]) or None, quiet=quiet)
    doc = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(engines).items()}
    if args.trt_command == "compare":
        doc["comparison"] = compare_engines(engines, dataset, args.runs, quiet)
    if args.json:
        A.write_json(json.dumps(doc, indent=1, default=str), args.json)
    if not quiet:
        _print(engines, doc)
    return 0


def engines_on(float_model, quant_model, dataset, workdir: Path, shapes: dict | None = None,
               backend: Backend | None = None, quiet: bool = False) -> Engines:
    """:func:`qdq.trt.backend.build_engines` at ``shapes`` (default: the first sample's), FP16 casts
    (strongly typed builds) checked for overflow on ``dataset`` (:func:`qdq.measure.autocast.fp16_model`)."""
    if not shapes:
        first = next(iter(dataset), None)
        if first is None:
            raise QdqError(f"{dataset.path}: contains no samples")
        shapes = {k: tuple(v.shape) for k, v in first[1].items()}
    return build_engines(float_model, quant_model, workdir, shapes, backend=backend,
                         fp16=lambda m, keep: fp16_model(m, dataset, quiet, keep_names=keep))


def _print(engines, doc: dict) -> None:
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
