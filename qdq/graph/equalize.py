"""Function-preserving equalization: move per-channel scale between a layer's input and its weights
so that per-tensor INT8 activations lose less, without changing what the float model computes.

* :func:`smooth_quant` (Xiao et al. 2022, SmoothQuant): for MatMul/Gemm with constant weights W (K×N)
  reading an activation X (…×K): s_k = max|X_k|^α / max_n|W_kn|^(1−α) (α = 0.5), X' = X / s, W' = diag(s)·W.
  Layers reading the same X share one s (max over their weights).  1/s goes into a LayerNormalization
  that feeds only these layers (its Scale and B), else into one per-channel Mul in front of them.
  Per-channel max|X| comes from a short pass over calibration samples.
* :func:`cross_layer_equalization` (Nagel et al. 2019, "Data-Free Quantization"): for
  Conv₁ → [ReLU | LeakyReLU | identity] → Conv₂ with nothing else reading the tensors in between,
  channel c of Conv₁'s output is divided by s_c and Conv₂'s matching input channel multiplied by it,
  with s_c = √(r₁_c / r₂_c) (r₁: range of Conv₁'s output channel c, r₂: of Conv₂'s input channel c),
  equalizing both ranges at √(r₁ r₂).  The activation must be positive-homogeneous (f(x/s) = f(x)/s
  for s > 0): ReLU6, Clip, HardSwish and SiLU are not, so those chains are left alone.

Both end with the full ONNX check (:mod:`qdq.graph.surgery`); the float output changes only by rounding.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..calib.session import run_session, session_for
from ..modelio import fresh_name
from .index import GraphIndex
from .surgery import export_graph, gs, import_graph, taken_names

ALPHA = 0.5
_HOMOGENEOUS = ("Relu", "LeakyRelu")
_S_RANGE = (1e-4, 1e4)


def channel_absmax(model: onnx.ModelProto, tensors: list, feeds: list) -> dict:
    """tensor -> max |x| per last-axis channel over ``feeds``."""
    if not tensors:
        return {}
    sess = session_for(model, extra_outputs=tensors)
    out = {}
    for k, feed in enumerate(feeds):
        res = run_session(sess, feed, f"sample {k}")
        res.update(feed)
        for t in tensors:
            x = np.abs(res[t].astype(np.float32))
            m = x.reshape(-1, x.shape[-1]).max(axis=0)
            out[t] = np.maximum(out[t], m) if t in out else m
    return out


def _smooth_targets(idx: GraphIndex) -> dict:
    """activation tensor -> ids of the MatMul/Gemm layers reading it as input 0 with a constant
    (K, N) weight (Gemm without transA; with transB the weight is (N, K))."""
    out = {}
    for pos, n in enumerate(idx.nodes):
        if n.op_type not in ("MatMul", "Gemm") or idx.constant(n.input[0]) is not None:
            continue
        w = idx.constant(n.input[1])
        if w is None or w.ndim != 2 or w.dtype.kind != "f":
            continue
        if n.op_type == "Gemm" and any(a.name == "transA" and a.i for a in n.attribute):
            continue
        out.setdefault(n.input[0], []).append(pos)
    return out


def smooth_quant(model: onnx.ModelProto, feeds: list, alpha: float = ALPHA) -> tuple[onnx.ModelProto, int]:
    """``model`` with SmoothQuant scales applied (see module doc); returns it and how many activation
    tensors were smoothed."""
    idx = GraphIndex.build(model)
    targets = _smooth_targets(idx)
    if not targets:
        return model, 0
    amax = channel_absmax(model, list(targets), feeds)
    g = gs()
    graph = import_graph(model)
    nodes, tensors, taken = list(graph.nodes), graph.tensors(), taken_names(graph)
    done = 0
    for t, layers in targets.items():
        a = amax.get(t)
        weights = []
        for pos in layers:
            w = np.asarray(nodes[pos].inputs[1].values, np.float64)
            trans_b = nodes[pos].op == "Gemm" and int(nodes[pos].attrs.get("transB", 0))
            weights.append(w.T if trans_b else w)   # (K, N)
        if a is None or any(w.shape[0] != a.size for w in weights):
            continue
        wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        ok = (a > 0) & (wmax > 0)
        s = np.ones(a.size)
        s[ok] = np.clip(a[ok] ** alpha / wmax[ok] ** (1 - alpha), *_S_RANGE)
        for pos, w in zip(layers, weights):
            node = nodes[pos]
            scaled = w * s[:, None]
            node.inputs[1] = g.Constant(fresh_name(f"{node.inputs[1].name}_smoothed", taken),
                                        (scaled.T if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else scaled)
                                        .astype(np.float32))
        src = tensors[t]
        ln = src.inputs[0] if len(src.inputs) == 1 else None
        readers = {id(c) for c in src.outputs}
        if (ln is not None and ln.op == "LayerNormalization" and readers == {id(nodes[p]) for p in layers}
                and int(ln.attrs.get("axis", -1)) == -1 and all(isinstance(x, g.Constant) for x in ln.inputs[1:])):
            ln.inputs[1] = g.Constant(fresh_name(f"{ln.inputs[1].name}_smoothed", taken),
                                      (np.asarray(ln.inputs[1].values, np.float64) / s).astype(np.float32))
            if len(ln.inputs) > 2:
                ln.inputs[2] = g.Constant(fresh_name(f"{ln.inputs[2].name}_smoothed", taken),
                                          (np.asarray(ln.inputs[2].values, np.float64) / s).astype(np.float32))
        else:
            out = g.Variable(fresh_name(f"{t}_smoothed", taken), dtype=src.dtype, shape=src.shape)
            graph.nodes.append(g.Node("Mul", fresh_name(f"{t}_SmoothQuant", taken),
                                      inputs=[src, g.Constant(fresh_name(f"{t}_smooth_scale", taken), (1 / s).astype(np.float32))],
                                      outputs=[out]))
            for pos in layers:
                nodes[pos].inputs[0] = out
        done += 1
    return export_graph(graph, model, "SmoothQuant"), done


def cross_layer_equalization(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with CLE applied to every eligible Conv pair (see module doc); returns it and the
    number of pairs."""
    g = gs()
    graph = import_graph(model)
    taken = taken_names(graph)
    pairs = 0
    for c1 in list(graph.nodes):
        if c1.op != "Conv" or int(c1.attrs.get("group", 1)) != 1 or not isinstance(c1.inputs[1], g.Constant):
            continue
        t = c1.outputs[0]
        if len(t.outputs) != 1 or t in graph.outputs:
            continue
        nxt = t.outputs[0]
        if nxt.op in _HOMOGENEOUS:   # f(x/s) = f(x)/s for s > 0
            t = nxt.outputs[0]
            if len(t.outputs) != 1 or t in graph.outputs:
                continue
            nxt = t.outputs[0]
        if nxt.op != "Conv" or nxt.inputs[0] is not t or not isinstance(nxt.inputs[1], g.Constant):
            continue
        w1 = np.asarray(c1.inputs[1].values, np.float64)
        w2 = np.asarray(nxt.inputs[1].values, np.float64)
        group2 = int(nxt.attrs.get("group", 1))
        cout = w1.shape[0]
        if group2 == 1 and w2.shape[1] == cout:
            r2 = np.abs(w2).max(axis=(0, 2, 3)) if w2.ndim == 4 else np.abs(w2).max(axis=0)
        elif group2 == cout and w2.shape[0] == cout and w2.shape[1] == 1:   # depthwise: in channel c -> out c
            r2 = np.abs(w2).reshape(cout, -1).max(axis=1)
        else:
            continue
        r1 = np.abs(w1).reshape(cout, -1).max(axis=1)
        ok = (r1 > 0) & (r2 > 0)
        s = np.ones(cout)
        s[ok] = np.clip(np.sqrt(r1[ok] / r2[ok]), *_S_RANGE)
        shape1 = (-1,) + (1,) * (w1.ndim - 1)
        c1.inputs[1] = g.Constant(fresh_name(c1.inputs[1].name + "_cle", taken), (w1 / s.reshape(shape1)).astype(np.float32))
        if len(c1.inputs) > 2 and isinstance(c1.inputs[2], g.Constant):
            c1.inputs[2] = g.Constant(fresh_name(c1.inputs[2].name + "_cle", taken),
                                      (np.asarray(c1.inputs[2].values, np.float64) / s).astype(np.float32))
        if group2 == 1:
            w2 = w2 * s.reshape((1, -1) + (1,) * (w2.ndim - 2))
        else:
            w2 = w2 * s.reshape((-1,) + (1,) * (w2.ndim - 1))
        nxt.inputs[1] = g.Constant(fresh_name(nxt.inputs[1].name + "_cle", taken), w2.astype(np.float32))
        pairs += 1
    return export_graph(graph, model, "cross-layer equalization"), pairs
