"""Benchmarks: qdq against ONNX Runtime's quantize_static (and NVIDIA ModelOpt's ONNX PTQ where it is
installed), side by side in one run, on the same real models and data.

  python tools/bench.py                                  # all models, all methods, N = 64
  python tools/bench.py --models effnet --scaling 16 64 256
  python tools/bench.py --json docs/bench.json

Every quantization runs in its own process; its wall time and peak RSS (VmHWM) are measured there.  Quality is measured afterwards on held-out data against FP32 with the same ONNX
Runtime settings for every tool (Q/DQ as float ops): pooled output SQNR, cosine, top-1 agreement for the
classifier; and whether TensorRT-RTX parses and builds the file.  ``infer`` rows time plain ONNX Runtime
inference of the float model over the same calibration samples, the floor any calibration pays.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qdq.errors import QdqError  # noqa: E402

OURS = ("max", "percentile", "entropy", "mse")
ORT = ("MinMax", "Entropy", "Percentile")
MODELOPT = ("max", "entropy")


def _child(tool: str, method: str, model: str, n: int, out: str) -> None:
    """Runs in a fresh process: one quantization (or plain inference), prints its wall time."""
    import onnx

    from qdq.calib.data import Dataset, model_inputs
    from tools.datasets import prepared

    ds = prepared(model)
    fm = onnx.load(str(ds.model))
    t = time.perf_counter()
    if tool in ("qdq", "qdq-int8"):   # qdq-int8: every layer INT8, no bias correction (the default before 0.2)
        from qdq.modelio import save_model
        from qdq.pipeline import quantize

        plain = tool == "qdq-int8"
        r = quantize(ds.model, ds.calib, method=method, preprocess=ds.preprocess, limit=n, quiet=True,
                     mixed_precision=not plain, bias_correction=not plain)
        save_model(r.model, out, overwrite=True)
    elif tool == "onnxruntime":
        from tools.compare_ort import ort_quantize

        onnx.save(ort_quantize(ds.model, ds.calib, ds.preprocess, method, limit=n), out)
    elif tool == "modelopt":
        import numpy as np
        from modelopt.onnx.quantization import quantize as mo_quantize

        feeds = [f for _, f in Dataset(ds.calib, model_inputs(fm), ds.preprocess, limit=n)]
        data = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
        mo_quantize(str(ds.model), quantize_mode="int8", calibration_data=data, calibration_method=method,
                    output_path=out)
    elif tool == "infer":
        from qdq.calib.session import run_session, session_for

        sess = session_for(fm)
        for src, feed in Dataset(ds.calib, model_inputs(fm), ds.preprocess, limit=n):
            run_session(sess, feed, src)
    print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM of its own address space).  ru_maxrss is not used:
    Linux carries the forked parent's high-water mark across exec into it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(tool: str, method: str, model: str, n: int, out: str) -> dict:
    """One quantization in a child process: wall time and peak RSS (MB), both measured in the child."""
    proc = subprocess.run([sys.executable, __file__, "--child", tool, method, model, str(n), out],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode < 0:   # killed: on a 24 GB machine that is the kernel's out-of-memory killer
        return {"error": f"killed by signal {-proc.returncode} (out of memory?)"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return {"error": last[:200]}
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": round(doc["seconds"], 2), "peak_rss_mb": round(doc["peak_rss_mb"], 1)}


def quality(model: str, path: str, budget: bool = False) -> dict:
    import onnx

    from qdq.report.inspection import inspect_model
    from qdq.trt.backend import check_model
    from tools.compare_ort import evaluate
    from tools.datasets import prepared

    ds = prepared(model)
    q = onnx.load(path)
    out = evaluate(onnx.load(str(ds.model)), q, ds.val, ds.preprocess, budget)
    out["int8_mac_share"] = round(inspect_model(q).coverage["share"], 4)
    out.pop("samples", None)
    if model != "effnet":
        out.pop("top1_agreement", None)  # only the classifier has class scores
    shapes = {"x": (1, 3, 48, 320) if model == "ppocr_rec" else (1, 3, 640, 640), "input_ids": (1, 32),
              "attention_mask": (1, 32)}
    try:
        r = check_model(q, shapes)
        out["tensorrt_rtx"] = "ok" if r.ok else f"failed: {(r.errors or ['?'])[0][:80]}"
    except Exception as e:  # no TensorRT installed
        out["tensorrt_rtx"] = f"not checked ({str(e)[:60]})"
    return out


def _modelopt_available() -> str | None:
    try:
        import modelopt.onnx.quantization  # noqa: F401
    except Exception as e:
        return f"ModelOpt not installed ({type(e).__name__}): nvidia-modelopt[onnx] pins onnx~=1.21 and " \
               "onnxruntime-gpu~=1.24 with cupy, which conflict with this environment"
    return None


def accuracy(models, n: int, work: Path) -> list:
    """Issue 'accuracy by default': the previous default (every layer INT8, no bias correction), the
    default now, and ONNX Runtime's MinMax and Percentile, each in its own process; quality on the
    held-out set with the weights-only figure of the same file."""
    rows = []
    for model in models:
        for tool, method in (("qdq-int8", "mse"), ("qdq", "mse"), ("onnxruntime", "MinMax"), ("onnxruntime", "Percentile")):
            out = str(work / f"acc-{model}-{tool}-{method}.onnx")
            row = {"model": model, "tool": tool, "method": method, "n": n, **run_isolated(tool, method, model, n, out)}
            if "error" not in row:
                try:
                    row.update(quality(model, out, budget=True))
                except QdqError as e:
                    row["error"] = f"output unusable: {str(e)[:160]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def sensitivity_speed(model: str = "effnet", samples: int = 16) -> dict:
    """Seconds for the per-layer sensitivity of ``model`` on ``samples`` held-out images: the
    output-referred analysis (one pass) vs measuring every layer end to end (two runs per layer)."""
    from qdq.calib.data import Dataset, first_feeds, model_inputs
    from qdq.pipeline import quantize
    from qdq.measure.sensitivity import end_to_end, sensitivity
    from tools.datasets import prepared

    ds = prepared(model)
    r = quantize(ds.model, ds.calib, preprocess=ds.preprocess, quiet=True, mixed_precision=False)
    t = time.perf_counter()
    sensitivity(r, ds.val, preprocess=ds.preprocess, limit=samples, quiet=True)
    fast = time.perf_counter() - t
    feeds = first_feeds(Dataset(ds.val, model_inputs(r.float_model), ds.preprocess), samples)
    t = time.perf_counter()
    end_to_end(r, list(r.placement.quantized_layers), feeds, only=True, quiet=True)
    slow = time.perf_counter() - t
    row = {"model": model, "layers": len(r.placement.quantized_layers), "samples": samples,
           "output_referred_s": round(fast, 1), "end_to_end_s": round(slow, 1), "speedup": round(slow / fast, 1)}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["effnet", "ppocr_det", "ddddocr_det", "minilm"])
    ap.add_argument("--n", type=int, default=64, help="calibration samples for the quality table")
    ap.add_argument("--scaling", nargs="*", type=int, default=[16, 64, 256],
                    help="sample counts for the time/memory scaling table (effnet and ppocr_det frames)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path, metavar="JSON", help="print the tables of an earlier --json run")
    ap.add_argument("--accuracy", action="store_true",
                    help="the accuracy-by-default table (before/after, ONNX Runtime) and the sensitivity speed-up")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.markdown:
        return print(markdown(json.loads(args.markdown.read_text())))
    if args.child:
        tool, method, model, n, out = args.child
        return _child(tool, method, model, int(n), out)
    if args.accuracy:
        work = Path(tempfile.mkdtemp(prefix="qdq-bench-"))
        doc = {"accuracy": accuracy(args.models, args.n, work), "sensitivity": sensitivity_speed()}
        if args.json:
            args.json.write_text(json.dumps(doc, indent=1))
        return doc

    skip_mo = _modelopt_available()
    rows, work = [], Path(tempfile.mkdtemp(prefix="qdq-bench-"))
    plan = [("infer", "-")] + [("qdq", m) for m in OURS] + [("onnxruntime", m) for m in ORT]
    plan += [] if skip_mo else [("modelopt", m) for m in MODELOPT]
    for model in args.models:
        for tool, method in plan:
            out = str(work / f"{model}-{tool}-{method}.onnx")
            row = {"model": model, "tool": tool, "method": method, "n": args.n,
                   **run_isolated(tool, method, model, args.n, out)}
            if tool != "infer" and "error" not in row:
                try:
                    row.update(quality(model, out))
                except QdqError as e:  # e.g. ONNX Runtime refusing a file the tool wrote
                    row["error"] = f"output unusable: {str(e)[:160]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    if skip_mo:
        print(f"# {skip_mo}", flush=True)
    scaling = []
    for n in args.scaling:
        for tool, method in (("infer", "-"), ("qdq", "entropy"), ("qdq", "max"), ("onnxruntime", "MinMax"),
                             ("onnxruntime", "Entropy")):
            row = {"model": "frames", "tool": tool, "method": method, "n": n,
                   **run_isolated(tool, method, "frames", n, str(work / f"s-{tool}-{method}-{n}.onnx"))}
            scaling.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"quality": rows, "scaling": scaling, "modelopt": skip_mo or "ok"}, indent=1))
    return rows, scaling


def markdown(doc: dict) -> str:
    """The tables of a --json run, as Markdown."""
    if "accuracy" in doc:
        out = ["| model | file | time (s) | SQNR (dB) | weights only (dB) | gap (dB) | INT8 MACs | TensorRT-RTX |",
               "|---|---|---|---|---|---|---|---|"]
        label = {"qdq-int8": "qdq, all INT8 (before)", "qdq": "qdq default (after)"}
        for r in doc["accuracy"]:
            name = label.get(r["tool"], f"{r['tool']} {r['method']}")
            if "error" in r:
                out.append(f"| {r['model']} | {name} | {r.get('seconds', '–')} | – | – | – | – | {r['error'][:60]} |")
                continue
            gap = round(r["weights_only_db"] - r["sqnr_db"], 2)
            out.append(f"| {r['model']} | {name} | {r['seconds']} | {r['sqnr_db']} | {r['weights_only_db']} | {gap} | "
                       f"{r['int8_mac_share']:.1%} | {r.get('tensorrt_rtx', '')[:60]} |")
        s = doc["sensitivity"]
        out += ["", f"Sensitivity of {s['model']} ({s['layers']} layers, {s['samples']} images): output-referred "
                f"{s['output_referred_s']} s, every layer end to end {s['end_to_end_s']} s (×{s['speedup']})."]
        return "\n".join(out)
    out = ["| model | tool | method | time (s) | peak RSS (MB) | SQNR (dB) | cosine | top-1 | TensorRT-RTX |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["quality"]:
        if "error" in r:
            extra = f"{r.get('seconds', '–')} | {r.get('peak_rss_mb', '–')} | – | – | – | {r['error'][:70]}"
        else:
            top1 = r.get("top1_agreement")
            extra = (f"{r['seconds']} | {r['peak_rss_mb']} | {r.get('sqnr_db', '–')} | {r.get('cosine', '–')} | "
                     f"{'' if top1 is None else f'{top1:.1%}'} | {r.get('tensorrt_rtx', '')[:70]}")
        out.append(f"| {r['model']} | {r['tool']} | {r['method']} | {extra} |")
    out += ["", "| N | tool | method | time (s) | peak RSS (MB) |", "|---|---|---|---|---|"]
    for r in doc["scaling"]:
        out.append(f"| {r['n']} | {r['tool']} | {r['method']} | {r.get('seconds', r.get('error'))} | "
                   f"{r.get('peak_rss_mb', '–')} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
