"""How ONNX Runtime runs weights dequantized on every run, as qdq's candidate sessions fed their weights do.

A chain of ``--layers`` MatMuls (alternately K×N and N×K, INT8 codes fed as inputs, FP32 scales along
the last axis) on 8 tokens, one fresh process per way, graph optimizations off and no prepacking, as
:func:`qdq.calib.session.session_for` runs a large run's sessions:

* ``no-arena``: DequantizeLinear, the CPU arena off (each dequantized weight a fresh allocation)
* ``arena+pattern``: DequantizeLinear, the arena with ONNX Runtime's memory pattern (its default)
* ``arena``: DequantizeLinear, the arena without the memory pattern (qdq's sessions since 800e4bd)
* ``cast-mul``: the arena without the pattern, each DequantizeLinear as Cast and Mul (qdq's rewrite)

Prints seconds per run (mean of 5 after one warm-up) and the process's peak RSS, and whether each way's
output equals ``no-arena``'s bit for bit.

    python tools/dequantize_bench.py [--k 3072] [--n 12288] [--layers 8]

docs/benchmarks.md ("fifth step") has the figures.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time

import numpy as np

WAYS = ("no-arena", "arena+pattern", "arena", "cast-mul")


def _model(k: int, n: int, layers: int, cast_mul: bool):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inputs, inits, x = [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, k])], [], "x"
    for i in range(layers):
        shape = (k, n) if i % 2 == 0 else (n, k)
        inputs.append(helper.make_tensor_value_info(f"w{i}", TensorProto.INT8, list(shape)))
        inits.append(numpy_helper.from_array(rng.uniform(1e-3, 1e-2, shape[1]).astype(np.float32), f"s{i}"))
        if cast_mul:
            nodes += [helper.make_node("Cast", [f"w{i}"], [f"c{i}"], to=TensorProto.FLOAT),
                      helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"d{i}"])]
        else:
            nodes.append(helper.make_node("DequantizeLinear", [f"w{i}", f"s{i}"], [f"d{i}"], axis=1))
        nodes.append(helper.make_node("MatMul", [x, f"d{i}"], [f"y{i}"]))
        x = f"y{i}"
    g = helper.make_graph(nodes, "chain", inputs, [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _child(way: str, k: int, n: int, layers: int) -> None:
    """Runs in a fresh process: one way, its figures as one JSON line."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.add_session_config_entry("session.disable_prepacking", "1")
    so.enable_cpu_mem_arena = way != "no-arena"
    so.enable_mem_pattern = way == "arena+pattern"
    sess = ort.InferenceSession(_model(k, n, layers, way == "cast-mul").SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feed = {i.name: rng.integers(-127, 128, i.shape, dtype=np.int8) for i in sess.get_inputs()[1:]}
    feed["x"] = rng.standard_normal((1, 8, k), dtype=np.float32)
    y = sess.run(None, feed)[0]
    t = time.perf_counter()
    for _ in range(5):
        sess.run(None, feed)
    print(json.dumps({"way": way, "seconds_per_run": round((time.perf_counter() - t) / 5, 3),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                      "output_sha256": hashlib.sha256(y.tobytes()).hexdigest()[:16]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=3072)
    ap.add_argument("--n", type=int, default=12288)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return _child(a.child, a.k, a.n, a.layers)
    rows = []
    for way in WAYS:
        out = subprocess.run([sys.executable, __file__, "--child", way, "--k", str(a.k), "--n", str(a.n),
                              "--layers", str(a.layers)], capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{a.layers} weights of {a.k}×{a.n} INT8, 8 tokens")
    print(f"{'way':15s} {'s/run':>7s} {'peak RSS':>9s}  output as no-arena's")
    for r in rows:
        print(f"{r['way']:15s} {r['seconds_per_run']:7.3f} {r['peak_rss_mb']:6d} MB  "
              f"{'bit for bit' if r['output_sha256'] == rows[0]['output_sha256'] else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
