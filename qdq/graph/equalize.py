"""Function-preserving equalization: move per-channel scale between a layer's input and its weights
so that per-tensor INT8 activations lose less, without changing what the float model computes.

* :func:`smooth_quant` (Xiao et al. 2022, SmoothQuant; RepQ-ViT's LayerNorm reparameterisation): for
  MatMul/Gemm with constant weights W (K×N) reading an activation X (…×K):
  s_k = max|X_k|^α / max_n|W_kn|^(1−α), X' = X / s, W' = diag(s)·W, exact in float.  Layers reading
  the same X share one s (max over their weights).  1/s goes into a LayerNormalization that feeds only
  these layers (its Scale and B: no node added), else into one per-channel Mul in front of them.
  The strength α is chosen per tensor (``alpha=None``) from :data:`ALPHAS` or no smoothing at all,
  whichever leaves the least error at the layers' outputs with activation *and* weight quantized
  together: Σ‖X·W − q(X')·q(W')‖² over sampled rows of X, q(X') per tensor at the amax mse
  calibration would pick (coarse grid) or at max|X'| (the range method then used for X'), q(W') per
  output channel, round half to even.  ``layernorm_only`` smooths only tensors a LayerNormalization
  produces (the default in ``qdq quantize``: the exact form costs no node).
  Per-channel max|X| and the rows come from a short pass over calibration samples.
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

ALPHAS = (0.2, 0.35, 0.5, 0.65, 0.8)
ROWS = 2048          # rows of X kept per tensor to choose α
CLIP_GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
_HOMOGENEOUS = ("Relu", "LeakyRelu")
_S_RANGE = (1e-4, 1e4)


def channel_absmax(model: onnx.ModelProto, tensors: list, feeds: list, rows: int = 0) -> dict:
    """tensor -> max |x| per last-axis channel over ``feeds``; with ``rows``, tensor -> (that, up to
    ``rows`` rows of x (…×K flattened), evenly strided over the samples)."""
    if not tensors:
        return {}
    sess = session_for(model, extra_outputs=tensors)
    out, kept = {}, {t: [] for t in tensors}
    for k, feed in enumerate(feeds):
        res = run_session(sess, feed, f"sample {k}")
        res.update(feed)
        for t in tensors:
            x = res[t].astype(np.float32).reshape(-1, res[t].shape[-1])
            m = np.abs(x).max(axis=0)
            out[t] = np.maximum(out[t], m) if t in out else m
            if rows:
                kept[t].append(x[::max(1, len(x) * len(feeds) // rows)])
    return {t: (out[t], np.concatenate(kept[t])[:rows]) for t in tensors} if rows else out


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


def _fq(x: np.ndarray, amax, axis=None) -> np.ndarray:
    """Symmetric INT8 fake quantization at ``amax`` (per tensor, or per slice along ``axis``)."""
    scale = np.maximum(np.asarray(amax, np.float64), 1e-30) / 127
    if axis is not None:
        scale = np.expand_dims(scale, [a for a in range(x.ndim) if a != axis])
    return np.clip(np.rint(x / scale), -128, 127) * scale


def _mse_amax(x: np.ndarray) -> float:
    """The amax of :data:`CLIP_GRID` × max|x| with the least ‖x − q(x)‖²: what mse calibration picks,
    on a coarse grid."""
    top = float(np.abs(x).max())
    return min((r * top for r in CLIP_GRID), key=lambda a: float(((x - _fq(x, a)) ** 2).sum()))


def _joint_error(x: np.ndarray, weights: list, s: np.ndarray) -> dict:
    """Σ‖X·W − q(X/s)·q(diag(s)·W)‖² over the layers' weights (K×N each), with X/s quantized at the
    amax mse calibration would give it and at its max: {"mse": error, "max": error}."""
    xs = x / s
    out = {}
    for method, amax in (("mse", _mse_amax(xs)), ("max", float(np.abs(xs).max()))):
        qx, err = _fq(xs, amax), 0.0
        for w in weights:
            ws = w * s[:, None]
            d = x @ w - qx @ _fq(ws, np.abs(ws).max(axis=0), axis=1)
            err += float((d * d).sum())
        out[method] = err
    return out


def _scales(a: np.ndarray, wmax: np.ndarray, alpha: float) -> np.ndarray:
    ok = (a > 0) & (wmax > 0)
    s = np.ones(a.size)
    s[ok] = np.clip(a[ok] ** alpha / wmax[ok] ** (1 - alpha), *_S_RANGE)
    return s


def _choose(a: np.ndarray, x: np.ndarray | None, weights: list, alpha: float | None):
    """(scales, range method) for one tensor: at ``alpha`` (method None: the run's own), or
    (``alpha=None``) the α of :data:`ALPHAS` and the range method (mse or max) with the least joint
    error; (None, None) when no smoothing does best."""
    wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    if alpha is not None:
        return _scales(a, wmax, alpha), None
    x = x.astype(np.float64)
    base = min(_joint_error(x, weights, np.ones(a.size)).values())
    best, best_err = (None, None), base
    for al in ALPHAS:
        s = _scales(a, wmax, al)
        for method, err in _joint_error(x, weights, s).items():
            if err < best_err:
                best, best_err = (s, method), err
    return best


def _layer_weights(nodes, layers) -> list:
    out = []
    for pos in layers:
        w = np.asarray(nodes[pos].inputs[1].values, np.float64)
        out.append(w.T if nodes[pos].op == "Gemm" and int(nodes[pos].attrs.get("transB", 0)) else w)   # (K, N)
    return out


def _absorbs(idx: GraphIndex, tensor: str, layers: list) -> bool:
    """``tensor`` comes from a LayerNormalization that can take 1/s exactly (see :func:`_layernorm_of`)."""
    pos = idx.producer.get(tensor)
    ln = idx.nodes[pos] if pos is not None else None
    return (ln is not None and ln.op_type == "LayerNormalization"
            and next((a.i for a in ln.attribute if a.name == "axis"), -1) == -1
            and all(idx.constant(t) is not None for t in ln.input[1:] if t)
            and {p for p, _ in idx.consumers.get(tensor, [])} == set(layers))


def _layernorm_of(g, src, nodes, layers):
    """The LayerNormalization producing ``src`` when its scale and bias can take 1/s exactly (last
    axis, constants, nothing but ``layers`` reading it), else None."""
    ln = src.inputs[0] if len(src.inputs) == 1 else None
    if (ln is not None and ln.op == "LayerNormalization" and {id(c) for c in src.outputs} == {id(nodes[p]) for p in layers}
            and int(ln.attrs.get("axis", -1)) == -1 and all(isinstance(x, g.Constant) for x in ln.inputs[1:])):
        return ln
    return None


def smooth_quant(model: onnx.ModelProto, feeds: list, alpha: float | None = None,
                 layernorm_only: bool = False) -> tuple[onnx.ModelProto, dict]:
    """``model`` with SmoothQuant scales applied (see module doc; ``alpha=None`` chooses it per tensor);
    returns it and the smoothed activation tensors, each with the range method ("mse" or "max") the
    choice was made with (None with a fixed ``alpha``)."""
    idx = GraphIndex.build(model)
    targets = _smooth_targets(idx)
    if layernorm_only:
        targets = {t: ls for t, ls in targets.items() if _absorbs(idx, t, ls)}
    if not targets:   # before importing the graph: a large model is not copied for nothing
        return model, {}
    g = gs()
    graph = import_graph(model)
    nodes, tensors, taken = list(graph.nodes), graph.tensors(), taken_names(graph)
    stats = channel_absmax(model, list(targets), feeds, rows=ROWS)
    done = {}
    for t, layers in targets.items():
        weights = _layer_weights(nodes, layers)
        a, x = stats[t]
        if any(w.shape[0] != a.size for w in weights):
            continue
        s, method = _choose(a.astype(np.float64), x, weights, alpha)
        if s is None:
            continue
        done[_apply(g, graph, nodes, tensors[t], layers, weights, s, taken)] = method
    return (export_graph(graph, model, "SmoothQuant"), done) if done else (model, {})


def _apply(g, graph, nodes, src, layers, weights, s, taken) -> str:
    """X' = X / s (into the LayerNorm, else a Mul) and W' = diag(s)·W for every layer reading X;
    returns the name of X' (the layers' input now)."""
    for pos, w in zip(layers, weights):
        node = nodes[pos]
        scaled = w * s[:, None]
        node.inputs[1] = g.Constant(fresh_name(f"{node.inputs[1].name}_smoothed", taken),
                                    (scaled.T if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else scaled)
                                    .astype(np.float32))
    ln = _layernorm_of(g, src, nodes, layers)
    if ln is not None:
        for k in range(1, len(ln.inputs)):
            ln.inputs[k] = g.Constant(fresh_name(f"{ln.inputs[k].name}_smoothed", taken),
                                      (np.asarray(ln.inputs[k].values, np.float64) / s).astype(np.float32))
        return src.name
    out = g.Variable(fresh_name(f"{src.name}_smoothed", taken), dtype=src.dtype, shape=src.shape)
    graph.nodes.append(g.Node("Mul", fresh_name(f"{src.name}_SmoothQuant", taken),
                              inputs=[src, g.Constant(fresh_name(f"{src.name}_smooth_scale", taken), (1 / s).astype(np.float32))],
                              outputs=[out]))
    for pos in layers:
        nodes[pos].inputs[0] = out
    return out.name


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


def smoothable(model: onnx.ModelProto, mode: str) -> bool:
    """Worth a calibration pass: any MatMul/Gemm (``all``), or any LayerNormalization (``auto``)."""
    ops = {n.op_type for n in model.graph.node}
    return bool(ops & {"MatMul", "Gemm"}) and (mode == "all" or "LayerNormalization" in ops)
