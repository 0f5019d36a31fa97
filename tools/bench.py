"""Benchmarks: qdq against ONNX Runtime's quantize_static (and NVIDIA ModelOpt's ONNX PTQ where it is
installed), side by side in one run, on the same real models and data.

  python tools/bench.py                                  # all models, all methods, N = 64
  python tools/bench.py --models effnet --scaling 16 64 256
  python tools/bench.py --json docs/bench.json
  python tools/bench.py --speed --models yolov8n ddddocr_det   # the default against ONNX Runtime's Entropy alone

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
# a --memory-child imports qdq from the checkout it is given (an earlier commit's worktree), tools from here
sys.path[:0] = [sys.argv[sys.argv.index("--memory-child") + 5]] if "--memory-child" in sys.argv else []
sys.path.insert(1 if "--memory-child" in sys.argv else 0, str(ROOT))

import numpy as np  # noqa: E402

from qdq.calib.ranges import DEFAULT_METHOD  # noqa: E402
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
    ort_clock = _ort_clock()
    t = time.perf_counter()
    if tool in ("qdq", "qdq-int8", "qdq-trt11"):   # qdq-int8: every layer INT8, no bias correction (the default before 0.2)
        from qdq.modelio import save_model
        from qdq.pipeline import quantize

        plain = tool == "qdq-int8"
        r = quantize(ds.model, ds.calib, method=method, preprocess=ds.preprocess, limit=n, quiet=True,
                     mixed_precision=not plain, bias_correction=not plain,
                     target="trt11" if tool == "qdq-trt11" else "trt10")
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
    print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mb": _peak_rss_mb(), **ort_clock}))


def _ort_clock() -> dict:
    """Seconds inside ONNX Runtime's InferenceSession.run and its construction, and their counts, filled
    as the process runs (the whole of what ONNX Runtime itself does for a tool; the rest is Python)."""
    import onnxruntime as ort

    clock = {"ort_run_s": 0.0, "ort_runs": 0, "ort_set_up_s": 0.0, "ort_sessions": 0}
    run, init = ort.InferenceSession.run, ort.InferenceSession.__init__

    def timed(fn, seconds, count):
        def call(self, *a, **k):
            t = time.perf_counter()
            try:
                return fn(self, *a, **k)
            finally:
                clock[seconds] += time.perf_counter() - t
                clock[count] += 1
        return call

    ort.InferenceSession.run = timed(run, "ort_run_s", "ort_runs")
    ort.InferenceSession.__init__ = timed(init, "ort_set_up_s", "ort_sessions")
    return clock


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
    return {"seconds": round(doc["seconds"], 2), "peak_rss_mb": round(doc["peak_rss_mb"], 1),
            **{k: round(v, 2) for k, v in doc.items() if k.startswith("ort_")}}


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


def device_figures(models, n: int, work: Path) -> list:
    """Issue 'what qdq reports is what the device will do': per model, qdq's default file (mse), the
    --method auto file, the trt11 file and ONNX Runtime's MinMax and Percentile files; for qdq's, the
    held-back figure it printed (interval, samples) beside the figure on held-out data from other
    photos; for all, the task agreement on that held-out data, the remainder run as the device runs it."""
    import onnx

    from qdq.measure.comparison import compare
    from tools.datasets import prepared

    rows = []
    for model in models:
        ds = prepared(model)
        for tool, method in (("qdq", "mse"), ("qdq", "auto"), ("qdq-trt11", "mse"), ("onnxruntime", "MinMax"),
                             ("onnxruntime", "Percentile")):
            out = str(work / f"dev-{model}-{tool}-{method}.onnx")
            row = {"model": model, "tool": tool, "method": method, "n": n, **run_isolated(tool, method, model, n, out)}
            if "error" not in row:
                try:
                    q = onnx.load(out)
                    meta = {p.key: p.value for p in q.metadata_props}
                    row["held_back"] = {k: meta.get(f"qdq_heldout_{k}") for k in ("sqnr_db", "interval_db", "samples", "task")}
                    row["method_used"] = meta.get("qdq_method")
                    c = compare(ds.model, q, ds.val, preprocess=ds.preprocess, budget=False, quiet=True)
                    row["held_out"] = {"samples": c.samples, "sqnr": c.sqnr, "remainder": c.remainder,
                                       "task": c.task["name"], "figures": c.task["figures"]}
                except QdqError as e:
                    row["error"] = f"output unusable: {str(e)[:160]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def interval_coverage(total: int = 198, calib: int = 48) -> list:
    """Does the held-back interval of a ``calib``-image calibration contain the figure measured on the
    other images from the same source?  EfficientNet-Lite0 on frames of one video (48 / 208), and
    PP-OCRv4 det on text rendered on the demo's calibration photos (48 / 150, shuffled, seeded)."""
    import shutil

    from qdq.demo.samples import rendered_text
    from qdq.measure.comparison import compare
    from qdq.pipeline import quantize
    from tools.datasets import prepared

    work = Path(tempfile.mkdtemp(prefix="qdq-cover-"))
    fr, det = prepared("frames"), prepared("ppocr_det")
    frames = sorted(fr.calib.glob("*.png"))
    sets = {"effnet frames": (fr, frames[:calib], frames[calib:])}
    rendered = work / "rendered"
    rendered.mkdir()
    for name, im in rendered_text("calib", -(-total // 11), seed=7):
        im.save(rendered / f"{name}.png")
    images = sorted(rendered.glob("*.png"))
    order = np.random.default_rng(0).permutation(len(images))
    images = [images[i] for i in order][:total]
    sets["ppocr_det rendered text"] = (det, images[:calib], images[calib:])
    rows = []
    for label, (ds, cal_files, val_files) in sets.items():
        cal, val = work / f"{label}-cal", work / f"{label}-val"
        for folder, files in ((cal, cal_files), (val, val_files)):
            folder.mkdir()
            for f in files:
                shutil.copy(f, folder / f.name)
        r = quantize(ds.model, cal, preprocess=ds.preprocess, quiet=True)
        acc = r.summary.accuracy
        c = compare(ds.model, r.model, val, preprocess=ds.preprocess, budget=False, quiet=True)
        low, high = acc["final_interval_db"]
        row = {"set": label, "calibration": len(cal_files), "held_back": acc["held_back_samples"],
               "held_back_db": round(acc["final_db"], 2), "interval_db": [round(low, 2), round(high, 2)],
               "further": c.samples, "further_db": round(c.sqnr["value"], 2),
               "contained": bool(low <= c.sqnr["value"] <= high)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# (hidden, heads, layers, seq): MiniLM's architecture widened past 2.5 GB of weights, and made deep and
# narrow until it has over 1,000 calibrated tensors
# (hidden, heads, layers, tokens): MiniLM's architecture; "chain": MatMul → ReLU layers of hidden², no heads
MEMORY_MODELS = {"wide": (3072, 24, 6, 8), "mid": (1024, 16, 6, 8), "deep": (64, 4, 128, 32), "chain": (4096, 0, 36, 16)}


def _memory_child(model: str, data: str, target: str, out: str, root: str) -> None:
    """Runs in a fresh process: ``qdq quantize`` of ``model`` on ``data`` for ``target`` with the qdq
    found at ``root`` (put first on the path at start-up), written to ``out``."""
    import qdq

    assert Path(qdq.__file__).resolve().is_relative_to(Path(root).resolve()), qdq.__file__
    from qdq.modelio import save_model
    from qdq.pipeline import quantize

    t = time.perf_counter()
    r = quantize(model, data, target=target, quiet=True)
    save_model(r.model, out, overwrite=True)
    print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mb": _peak_rss_mb(),
                      "calibrated": len(r.calibration.stats)}))


def _folder_digest(folder: Path) -> str:
    """SHA-256 over every file's name and bytes: the input folder is untouched if this is unchanged."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def _memory_model(kind: str, work: Path) -> tuple[Path, Path, int]:
    """The float model (external data beside it), 16 samples of random token ids, its weight bytes."""
    import onnx

    from tools.export_minilm import build, random_weights

    hidden, heads, layers, seq = MEMORY_MODELS[kind]
    folder, data = work / f"{kind}-model", work / f"{kind}-data"
    folder.mkdir()
    data.mkdir()
    if kind == "chain":
        m = _chain(hidden, layers, seq)
    else:
        m = build(random_weights(hidden, layers), seq_len=seq, hidden=hidden, heads=heads, layers=layers)
    weight_bytes = sum(t.ByteSize() for t in m.graph.initializer)
    onnx.save_model(m, str(folder / "model.onnx"), save_as_external_data=True, location="model.data")
    del m
    rng = np.random.default_rng(0)
    for k in range(16):
        if kind == "chain":
            np.savez(data / f"s{k:02d}.npz", x=rng.standard_normal((1, seq, hidden), dtype=np.float32))
        else:
            np.savez(data / f"s{k:02d}.npz", input_ids=rng.integers(0, 1024, (1, seq), dtype=np.int64),
                     attention_mask=np.ones((1, seq), np.int64))
    return folder / "model.onnx", data, weight_bytes


def _chain(hidden: int, layers: int, tokens: int):
    """``layers`` MatMuls of hidden × hidden FP32 weights (He-scaled normal: the activations keep their
    size), a ReLU between each two, on ``tokens`` tokens."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for k in range(layers):
        w = rng.standard_normal((hidden, hidden), dtype=np.float32) * np.float32(np.sqrt(2 / hidden))
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{k}"], [f"mm{k}"], name=f"matmul{k}"))
        x = f"mm{k}"
        if k < layers - 1:
            nodes.append(helper.make_node("Relu", [x], [f"relu{k}"], name=f"relu{k}"))
            x = f"relu{k}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, hidden])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, tokens, hidden])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def memory(kinds, targets, work: Path, root: Path = ROOT) -> list:
    """Peak RSS of ``qdq quantize`` on each generated model for each target, beside its weight bytes;
    the output with its external data, and whether the input folder is byte-for-byte unchanged."""
    rows = []
    for kind in kinds:
        model, data, weight_bytes = _memory_model(kind, work)
        before = _folder_digest(model.parent)
        for target in targets:
            out = work / f"{kind}-{target}" / "model.qdq.onnx"
            out.parent.mkdir()
            proc = subprocess.run([sys.executable, __file__, "--memory-child", str(model), str(data), target, str(out),
                                   str(root)], capture_output=True, text=True, cwd=ROOT)
            row = {"model": kind, "sizes": dict(zip(("hidden", "heads", "layers", "seq"), MEMORY_MODELS[kind])),
                   "target": target, "qdq": str(root), "weight_mb": round(weight_bytes / 2**20, 1)}
            if proc.returncode != 0:
                row["error"] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:200]
            else:
                doc = json.loads(proc.stdout.strip().splitlines()[-1])
                row |= {"seconds": round(doc["seconds"], 1), "peak_rss_mb": round(doc["peak_rss_mb"], 1),
                        "rss_per_weight_byte": round(doc["peak_rss_mb"] * 2**20 / weight_bytes, 2),
                        "calibrated_tensors": doc["calibrated"],
                        "written": sorted(f.name for f in out.parent.iterdir()),
                        "input_untouched": _folder_digest(model.parent) == before}
            rows.append(row)
            print(json.dumps(row), flush=True)
            for f in out.parent.iterdir():
                f.unlink()
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


def speed(models, n: int, out: Path | None) -> list:
    """Wall seconds of the whole default, of the default without bias correction and mixed precision, and
    of ONNX Runtime's Entropy calibration alone (quantize_static), each in a fresh process, per model,
    with the ratio of Entropy's time to each of qdq's (issue "one copy of the weights": ≥ 2 on a detector),
    and to the seconds qdq's runs spend inside ONNX Runtime alone (its sessions built and run): the
    ratio qdq would reach if its own Python took no time."""
    rows, work = [], Path(tempfile.mkdtemp(prefix="qdq-speed-"))
    for model in models:
        got = {tool: run_isolated(tool, method, model, n, str(work / f"{model}-{tool}.onnx"))
               for tool, method in (("qdq", DEFAULT_METHOD), ("qdq-int8", DEFAULT_METHOD), ("onnxruntime", "Entropy"))}
        ort_s = got["onnxruntime"].get("seconds")
        for tool, r in got.items():
            row = {"model": model, "n": n, "tool": tool, **r}
            if ort_s and r.get("seconds") and tool != "onnxruntime":
                ort_own = r["ort_run_s"] + r["ort_set_up_s"]   # no Python at all would leave this
                row |= {"entropy_over_this": round(ort_s / r["seconds"], 2),
                        "entropy_over_its_onnxruntime_alone": round(ort_s / ort_own, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if out:
        out.write_text(json.dumps({"speed": rows}, indent=1))
    return rows


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
    ap.add_argument("--device", action="store_true",
                    help="held-back figures with intervals vs held-out data, task agreement, --method auto, trt11 vs "
                         "trt10, and whether the interval covers further images of the same source")
    ap.add_argument("--memory", nargs="*", choices=sorted(MEMORY_MODELS), metavar="MODEL",
                    help="peak RSS of generated models (external data): MiniLM's architecture 'wide' (2.6 GB of weights), "
                         "'mid' (292 MB), 'deep' (> 1,000 calibrated tensors); 'chain' (36 MatMuls, 2.25 GiB, 16 tokens)")
    ap.add_argument("--targets", nargs="+", default=["trt8", "trt10", "trt11"], help="targets for --memory")
    ap.add_argument("--qdq-root", type=Path, default=ROOT, help="the qdq checkout --memory runs (an earlier commit's "
                                                                 "worktree gives the before figure)")
    ap.add_argument("--speed", action="store_true",
                    help="the whole default (trt10), the default without bias correction and mixed precision, and "
                         "ONNX Runtime's Entropy calibration alone, on --models with --n samples (wall seconds)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.speed:
        return speed(args.models, args.n, args.json)
    if args.memory_child:
        return _memory_child(*args.memory_child)
    if args.memory is not None:
        work = Path(tempfile.mkdtemp(prefix="qdq-memory-"))
        doc = {"memory": memory(args.memory or sorted(MEMORY_MODELS), args.targets, work, args.qdq_root.resolve())}
        if args.json:
            args.json.write_text(json.dumps(doc, indent=1))
        return doc
    if args.markdown:
        return print(markdown(json.loads(args.markdown.read_text())))
    if args.child:
        tool, method, model, n, out = args.child
        return _child(tool, method, model, int(n), out)
    if args.device or args.accuracy:
        work = Path(tempfile.mkdtemp(prefix="qdq-bench-"))
        doc = {"device": device_figures(args.models, args.n, work), "coverage": interval_coverage()} if args.device \
            else {"accuracy": accuracy(args.models, args.n, work), "sensitivity": sensitivity_speed()}
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


def _device_markdown(doc: dict) -> str:
    head = {"classify": "top1", "textmap": "box_f1", "ctc": "exact", "detect": "f1"}
    out = ["| model | file | time (s) | held-back (printed) | held-out SQNR (dB) | task on held-out | remainder |",
           "|---|---|---|---|---|---|---|"]
    for r in doc["device"]:
        name = {"qdq": f"qdq --method {r['method']}", "qdq-trt11": "qdq --target trt11"}.get(r["tool"], f"{r['tool']} {r['method']}")
        if "error" in r:
            out.append(f"| {r['model']} | {name} | {r.get('seconds', '–')} | – | – | – | {r['error'][:60]} |")
            continue
        hb, ho = r.get("held_back") or {}, r["held_out"]
        printed = f"{float(hb['sqnr_db']):.1f} dB ({hb['interval_db']}, {hb['samples']})" if hb.get("sqnr_db") else "–"
        if r.get("method_used") and r["method"] == "auto":
            name += f" → {r['method_used']}"
        s = ho["sqnr"]
        key = head.get(ho["task"])
        task = "–" if key is None else (lambda f: f"{ho['task']} {key} {f['value']:.1%} ({f['low']:.1%}–{f['high']:.1%})")(ho["figures"][key])
        rem = "FP16 (as written)" if "casts" in ho["remainder"] else ("FP16, pinned" if "pinned" in ho["remainder"] else "FP32")
        out.append(f"| {r['model']} | {name} | {r['seconds']} | {printed} | {s['value']:.1f} ({s['low']:.1f}–{s['high']:.1f}, "
                   f"{s['samples']}) | {task} | {rem} |")
    out += ["", "| images | calibration | held back | held-back dB (90 % interval) | further images | their dB | covered |",
            "|---|---|---|---|---|---|---|"]
    for c in doc["coverage"]:
        out.append(f"| {c['set']} | {c['calibration']} | {c['held_back']} | {c['held_back_db']} ({c['interval_db'][0]}–"
                   f"{c['interval_db'][1]}) | {c['further']} | {c['further_db']} | {'yes' if c['contained'] else 'no'} |")
    return "\n".join(out)


def markdown(doc: dict) -> str:
    """The tables of a --json run, as Markdown."""
    if "device" in doc:
        return _device_markdown(doc)
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
