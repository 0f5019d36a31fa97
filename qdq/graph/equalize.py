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
  output channel, round half to even.  ``layernorm_only`` scales only tensors a LayerNormalization
  produces (the default in ``qdq quantize``: the exact form costs no node).
  Per-channel min/max of X and the rows come from a short pass over calibration samples.
* Shifting (Wei et al. 2023, Outlier Suppression+), chosen with the scales: a one-sided or off-centre
  X (GELU, softmax, pooled ReLU outputs) spends half its symmetric INT8 levels on values that never
  occur.  X' = X − z with z_k = f·(min X_k + max X_k) / 2 moves every channel towards 0 (f = 1
  centres its range; smaller f suits skewed tensors); the layers' bias
  takes z·W (into Gemm's C, the Add reading a MatMul, else a new Add), exact in float for Linear layers
  (not for convolutions: zero padding would become −z).  z goes into the LayerNorm's B (no node),
  else into one Sub in front of the layers.  Judged out of sample (z from half the samples, the error
  on the other half); a Sub is kept only where it cuts the joint error by at least 1 − :data:`SHIFT_GAIN`.  On a uniform [0, a] input the shift gives the INT8 grid one more bit (≈ 6 dB).
* :func:`cross_layer_equalization` (Nagel et al. 2019, "Data-Free Quantization"): for
  Conv₁ → [ReLU | LeakyReLU | identity] → Conv₂ with nothing else reading the tensors in between,
  channel c of Conv₁'s output is divided by s_c and Conv₂'s matching input channel multiplied by it,
  with s_c = √(r₁_c / r₂_c) (r₁: range of Conv₁'s output channel c, r₂: of Conv₂'s input channel c),
  equalizing both ranges at √(r₁ r₂).  The activation must be positive-homogeneous (f(x/s) = f(x)/s
  for s > 0): ReLU6, Clip, HardSwish and SiLU are not, so those chains are left alone.

Both end with the full ONNX check (:mod:`qdq.graph.surgery`); the float output changes only by rounding.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np
import onnx

from ..calib.session import run_session, session_for
from ..errors import QdqError
from ..modelio import fresh_name
from .index import GraphIndex
from .placement import attention_units
from .surgery import export_graph, gs, import_graph, peek, taken_names

ALPHAS = (0.2, 0.35, 0.5, 0.65, 0.8)
ROWS = 2048          # rows of X kept per tensor to choose α
SHIFT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)   # of the mid-range, tried out of sample
SHIFT_GAIN = 0.9     # a shift that adds a node must cut the joint error by ≥ 10 % (about 0.5 dB)
CLIP_GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
_HOMOGENEOUS = ("Relu", "LeakyRelu")
_S_RANGE = (1e-4, 1e4)


@dataclass(frozen=True, eq=False)
class Smoothed:
    """How :func:`smooth_quant` changed one activation ``source`` (its name before): the range method its
    choice was made with (None with a fixed α), its shift z and scales s ((K,) float64, or None)."""
    source: str
    method: str | None
    z: np.ndarray | None
    s: np.ndarray | None

    @property
    def scaled(self) -> bool:
        return self.s is not None

    @property
    def shifted(self) -> bool:
        return self.z is not None


def channel_ranges(model: onnx.ModelProto, tensors: list, feeds: list, rows: int = 0) -> dict:
    """tensor -> (min, max) per last-axis channel over ``feeds`` (two (K,) float32 arrays); with ``rows``,
    tensor -> (min, max, [rows of x (…×K flattened) per feed, evenly strided, up to ``rows`` in all])."""
    if not tensors:
        return {}
    sess = session_for(model, extra_outputs=tensors)
    lo, hi, kept = {}, {}, {t: [] for t in tensors}
    for k, feed in enumerate(feeds):
        res = run_session(sess, feed, f"sample {k}")
        res.update(feed)
        for t in tensors:
            x = res[t].astype(np.float32).reshape(-1, res[t].shape[-1])
            lo[t] = np.minimum(lo[t], x.min(axis=0)) if t in lo else x.min(axis=0)
            hi[t] = np.maximum(hi[t], x.max(axis=0)) if t in hi else x.max(axis=0)
            if rows:
                kept[t].append(x[::max(1, len(x) * len(feeds) // rows)][:max(1, rows // len(feeds))])
    return {t: (lo[t], hi[t]) + ((kept[t],) if rows else ()) for t in tensors}


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
    """Symmetric INT8 fake quantization at ``amax`` (per tensor, or per slice along ``axis``):
    clip(rint(x / scale), −128, 127) · scale, scale = amax / 127, computed in one new array (the
    weights are the largest arrays here; a temporary per step cost as much time as the step)."""
    scale = np.maximum(np.asarray(amax, np.float64), 1e-30) / 127
    if axis is not None:
        scale = np.expand_dims(scale, [a for a in range(x.ndim) if a != axis])
    q = x / scale
    np.rint(q, out=q)
    np.clip(q, -128, 127, out=q)
    q *= scale
    return q


def _mse_amax(x: np.ndarray) -> float:
    """The amax of :data:`CLIP_GRID` × max|x| with the least ‖x − q(x)‖²: what mse calibration picks,
    on a coarse grid."""
    top = float(np.abs(x).max())
    return min((r * top for r in CLIP_GRID), key=lambda a: float(((x - _fq(x, a)) ** 2).sum()))


def _joint_error(x: np.ndarray, weights: list, s: np.ndarray, refs: list, qws: list | None = None) -> dict:
    """Σ‖X·W − q(X/s)·q(diag(s)·W)‖² over the layers' weights (K×N each), with X/s quantized at the
    amax mse calibration would give it and at its max: {"mse": error, "max": error}.  X is the layers'
    input after any shift (the shift's z·W goes into their bias, exact in float).  ``refs``: the
    products X·W, computed once by the caller however many s it tries; ``qws``: q(diag(s)·W) when the
    caller has them."""
    return _errors(x / s, refs, _quantized(weights, s) if qws is None else qws)


def _quantized(weights: list, s: np.ndarray) -> list:
    """q(diag(s)·W) of each weight (float64), per output channel at its max |·| (taken without an
    |W| temporary)."""
    return [_fq(ws, np.maximum(ws.max(axis=0), -ws.min(axis=0)), axis=1) for ws in (w * s[:, None] for w in weights)]


def _errors(xs: np.ndarray, refs: list, qws: list) -> dict:
    """{"mse": Σ‖ref − q(xs)·qw‖², "max": the same} with xs quantized at mse calibration's amax and at
    its max (:func:`_joint_error`)."""
    return {method: error_at(xs, refs, qws, amax) for method, amax in (("mse", _mse_amax(xs)),
                                                                        ("max", float(np.abs(xs).max())))}


def error_at(xs: np.ndarray, refs: list, qws: list, amax: float) -> float:
    """Σ‖ref − q(xs)·qw‖² over the layers, xs quantized per tensor at ``amax``."""
    qx, err = _fq(xs, amax), 0.0
    for ref, qw in zip(refs, qws):
        d = ref - qx @ qw
        err += float((d * d).sum())
    return err


def _scales(a: np.ndarray, wmax: np.ndarray, alpha: float) -> np.ndarray:
    ok = (a > 0) & (wmax > 0)
    s = np.ones(a.size)
    s[ok] = np.clip(a[ok] ** alpha / wmax[ok] ** (1 - alpha), *_S_RANGE)
    return s


def _best(x: np.ndarray, a: np.ndarray, wmax: np.ndarray, weights: list, alphas: tuple, plain: list) -> tuple:
    """(joint error, α or None, scales, range method) with the least error over no scaling and ``alphas``
    for the layers' input rows ``x`` (``a``: its max |x| per channel; ``plain``: the weights quantized
    unscaled)."""
    best, refs = None, [x @ w for w in weights]
    for al in (None,) + alphas:
        s = np.ones(a.size) if al is None else _scales(a, wmax, al)
        for method, err in _joint_error(x, weights, s, refs, plain if al is None else None).items():
            if best is None or err < best[0]:
                best = (err, al, s, method)
    return best


def _shift_fraction(parts: list, weights: list, qws: list, gain: float) -> float:
    """The f of :data:`SHIFT_FRACTIONS` whose shift z = f·(min + max) / 2 cuts the joint error (unscaled)
    the most, if below ``gain`` of the unshifted error, else 0.  Judged out of sample: z from the
    even-numbered samples' rows tried on the odd ones' and the other way round (the mid-range of a few
    extremes is noisy: in sample, centring symmetric noise would always look better).  f < 1 suits
    skewed tensors (GELU: most values near 0, a long tail), whose mid-range would push the bulk to an edge.
    ``qws``: the weights quantized unscaled (the same for every shift)."""

    def unscaled(x):   # the joint error without scales, at the better of the two range methods
        return min(_errors(x, [x @ w for w in weights], qws).values())

    halves = [np.concatenate(parts[0::2]), np.concatenate(parts[1::2])]
    plain, moved = 0.0, np.zeros(len(SHIFT_FRACTIONS))
    for fit, test in (halves, halves[::-1]):
        mid = (fit.min(axis=0) + fit.max(axis=0)) / 2
        plain += unscaled(test)
        for k, f in enumerate(SHIFT_FRACTIONS):
            moved[k] += unscaled(test - f * mid)
    k = int(np.argmin(moved))
    return SHIFT_FRACTIONS[k] if moved[k] < gain * plain else 0.0


def _choose(lo: np.ndarray, hi: np.ndarray, parts: list, weights: list, alpha: float | None,
            scale_ok: bool = True, shift_ok: bool = True, shift_free: bool = True) -> tuple:
    """(shift z, scales s, range method) for one tensor, z and s (K,) arrays or None; ``parts``: rows of
    X per calibration sample.  At a fixed ``alpha``: s at it, no shift, method None.  Else (``alpha=None``)
    the per-channel shift z = f·(min + max) / 2 (Outlier Suppression+; when ``shift_ok``) where it pays out of sample
    (:func:`_shift_fraction`; by :data:`SHIFT_GAIN` when it needs a node of its own, not ``shift_free``),
    then the α of :data:`ALPHAS` (when ``scale_ok``) or none with the least joint error at the layers'
    outputs.  (None, None, None): leaving the tensor alone does best."""
    wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    if alpha is not None:
        return None, _scales(np.maximum(-lo, hi), wmax, alpha), None
    lo, hi = lo.astype(np.float64), hi.astype(np.float64)
    parts = [p.astype(np.float64) for p in parts]
    plain = _quantized(weights, np.ones(lo.size))
    f = _shift_fraction(parts, weights, plain, 1.0 if shift_free else SHIFT_GAIN) if shift_ok and len(parts) > 1 else 0.0
    shift, z = f > 0, f * (lo + hi) / 2
    _, al, s, method = _best(np.concatenate(parts) - z, np.maximum(hi - z, z - lo), wmax, weights,
                             ALPHAS if scale_ok else (), plain)
    if not shift and al is None:
        return None, None, None
    return (z if shift else None), (None if al is None else s), method


def _layer_weights(nodes, layers) -> list:
    out = []
    for pos in layers:
        w = np.asarray(peek(nodes[pos].inputs[1]), np.float64)
        out.append(w.T if nodes[pos].op == "Gemm" and int(nodes[pos].attrs.get("transB", 0)) else w)   # (K, N)
    return out


def _absorbs(idx: GraphIndex, tensor: str, layers: list) -> bool:
    """``tensor`` comes from a LayerNormalization that can take the change exactly (see :func:`_layernorm_of`)."""
    pos = idx.producer.get(tensor)
    ln = idx.nodes[pos] if pos is not None else None
    return (ln is not None and ln.op_type == "LayerNormalization" and tensor not in idx.outputs
            and next((a.i for a in ln.attribute if a.name == "axis"), -1) == -1
            and all(idx.constant(t) is not None for t in ln.input[1:] if t)
            and {p for p, _ in idx.consumers.get(tensor, [])} == set(layers))


_MOVES = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")


def _attention_outputs(idx: GraphIndex) -> set:
    """Tensors that are an attention block's ·V output, directly or through reshapes and transposes.
    They are never shifted: TensorRT fuses the block (Q·Kᵀ, softmax, ·V) into INT8 kernels only when
    ·V's output reaches its Q without arithmetic (measured with TensorRT-RTX on MiniLM: a Sub there
    put all 12 attention MatMuls in FP32)."""
    out, todo = set(), [idx.nodes[av].output[0] for _, av in attention_units(idx)]
    while todo:
        t = todo.pop()
        out.add(t)
        todo += [idx.nodes[p].output[0] for p, _ in idx.consumers.get(t, []) if idx.nodes[p].op_type in _MOVES]
    return out


def _bias_slot(idx: GraphIndex, pos: int) -> bool:
    """Layer ``pos`` can take a bias without a new node (see :func:`_add_bias`): a Gemm with no C or a
    constant C, or a MatMul read only by an Add of a constant."""
    node = idx.nodes[pos]
    if node.op_type == "Gemm":
        return len(node.input) < 3 or not node.input[2] or idx.constant(node.input[2]) is not None
    y = node.output[0]
    readers = idx.consumers.get(y, [])
    if y in idx.outputs or len(readers) != 1 or idx.nodes[readers[0][0]].op_type != "Add":
        return False
    other = idx.nodes[readers[0][0]].input[1 - readers[0][1]]
    c = idx.constant(other)
    return c is not None and (c.ndim == 0 or c.shape[-1] in (1, idx.constant(node.input[1]).shape[-1]))


def _layernorm_of(g, graph, src, nodes, layers):
    """The LayerNormalization producing ``src`` when its scale and bias can take (X − z) / s exactly (last
    axis, constants, nothing but ``layers`` reading it, not a graph output), else None."""
    ln = src.inputs[0] if len(src.inputs) == 1 and src not in graph.outputs else None
    if (ln is not None and ln.op == "LayerNormalization" and {id(c) for c in src.outputs} == {id(nodes[p]) for p in layers}
            and int(ln.attrs.get("axis", -1)) == -1 and all(isinstance(x, g.Constant) for x in ln.inputs[1:])):
        return ln
    return None


def smooth_quant(model: onnx.ModelProto, feeds: list, alpha: float | None = None,
                 layernorm_only: bool = False) -> tuple[onnx.ModelProto, dict]:
    """``model`` with SmoothQuant scales and Outlier Suppression+ shifts applied (see module doc;
    ``alpha=None`` chooses both per tensor); returns it and the changed activation tensors (their new
    names) -> :class:`Smoothed`.  ``layernorm_only``: only LayerNorm outputs are scaled; other tensors
    may still be shifted (one Sub)."""
    idx = GraphIndex.build(model)
    targets = _smooth_targets(idx)
    if alpha is not None and layernorm_only:
        targets = {t: ls for t, ls in targets.items() if _absorbs(idx, t, ls)}
    if not targets:   # before importing the graph: a large model is not copied for nothing
        return model, {}
    g = gs()
    graph = import_graph(model)
    nodes, tensors, taken = list(graph.nodes), graph.tensors(), taken_names(graph)
    stats = channel_ranges(model, list(targets), feeds, rows=ROWS)
    done, fixed = {}, _attention_outputs(idx)
    for t, layers in targets.items():
        weights = _layer_weights(nodes, layers)
        lo, hi, parts = stats[t]
        if any(w.shape[0] != lo.size for w in weights):
            continue
        free = _absorbs(idx, t, layers)
        z, s, method = _choose(lo, hi, parts, weights, alpha, scale_ok=free or not layernorm_only, shift_ok=t not in fixed,
                               shift_free=free and all(_bias_slot(idx, p) for p in layers))
        if z is None and s is None:
            continue
        z, s = (None if v is None else v.astype(np.float32).astype(np.float64) for v in (z, s))   # as recorded
        done[_apply(g, graph, nodes, tensors[t], layers, weights, z, s, taken)] = Smoothed(t, method, z, s)
    return (export_graph(graph, model, "SmoothQuant"), done) if done else (model, {})


def record(done: dict, cle: bool) -> str:
    """The equalization of one run as text for the file's metadata (``qdq_equalization``), from which
    :func:`replay` rebuilds the equalized float model: {"cle": bool, "tensors": {source: {"z", "s":
    base64 of float32 bytes (the values applied), or absent}}}."""
    enc = (lambda a: base64.b64encode(np.ascontiguousarray(a, "<f4").tobytes()).decode("ascii"))
    tensors = {d.source: {k: enc(v) for k, v in (("z", d.z), ("s", d.s)) if v is not None} for d in done.values()}
    return json.dumps({"cle": cle, "tensors": tensors}, separators=(",", ":")) if cle or tensors else ""


def replay(model: onnx.ModelProto, text: str) -> onnx.ModelProto:
    """``model`` (the prepared float model) equalized as :func:`record`'s ``text`` says, exactly as the
    run did: cross-layer equalization, then each tensor's shift and scales."""
    try:
        rec = json.loads(text)
        todo = {t: {k: np.frombuffer(base64.b64decode(v), "<f4").astype(np.float64) for k, v in d.items()} for t, d in rec["tensors"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise QdqError("the file's qdq_equalization metadata is not qdq's record; was the file edited? "
                       "compare it against its float twin with --no-budget") from None
    if rec.get("cle"):
        model, _ = cross_layer_equalization(model)
    if not todo:
        return model
    targets = _smooth_targets(GraphIndex.build(model))
    g, graph = gs(), import_graph(model)
    nodes, tensors, taken = list(graph.nodes), graph.tensors(), taken_names(graph)
    for t, d in todo.items():
        if t not in targets:
            raise QdqError(f"the file's qdq_equalization names {t!r}, which the float model given does not feed to a "
                           "MatMul/Gemm; is it the model the file was made from?")
        _apply(g, graph, nodes, tensors[t], targets[t], _layer_weights(nodes, targets[t]), d.get("z"), d.get("s"), taken)
    return export_graph(graph, model, "equalization replay")


def _apply(g, graph, nodes, src, layers, weights, z, s, taken) -> str:
    """X' = (X − z) / s (into the LayerNorm, else a Sub and a Mul), W' = diag(s)·W and b' = b + z·W for
    every layer reading X (z, s: (K,) or None); returns the name of X' (the layers' input now)."""
    for pos, w in zip(layers, weights):
        node = nodes[pos]
        if s is not None:
            scaled = w * s[:, None]
            node.inputs[1] = g.Constant(fresh_name(f"{node.inputs[1].name}_smoothed", taken),
                                        (scaled.T if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else scaled)
                                        .astype(np.float32))
        if z is not None:
            _add_bias(g, graph, node, z @ w, taken)
    ln = _layernorm_of(g, graph, src, nodes, layers)
    if ln is not None:
        inv = 1 / s if s is not None else np.ones(len(z))
        if len(ln.inputs) < 3 and z is not None:
            ln.inputs.append(g.Constant(fresh_name(f"{ln.name}_bias", taken), np.zeros(inv.size, np.float32)))
        for k in range(1, len(ln.inputs)):
            v = np.asarray(ln.inputs[k].values, np.float64)
            v = v * inv if k == 1 else (v - (z if z is not None else 0.0)) * inv
            ln.inputs[k] = g.Constant(fresh_name(f"{ln.inputs[k].name}_smoothed", taken), v.astype(np.float32))
        return src.name
    out = src
    if z is not None:
        out = _pointwise(g, graph, "Sub", out, z, "shifted", taken)
    if s is not None:
        out = _pointwise(g, graph, "Mul", out, 1 / s, "smoothed", taken)
    for pos in layers:
        nodes[pos].inputs[0] = out
    return out.name


def _pointwise(g, graph, op: str, src, value: np.ndarray, what: str, taken):
    """A new ``op``(src, value) node; returns its output tensor."""
    out = g.Variable(fresh_name(f"{src.name}_{what}", taken), dtype=src.dtype, shape=src.shape)
    graph.nodes.append(g.Node(op, fresh_name(f"{src.name}_{op}_{what}", taken),
                              inputs=[src, g.Constant(fresh_name(f"{src.name}_{what}_by", taken), value.astype(np.float32))],
                              outputs=[out]))
    return out


def _add_bias(g, graph, node, bias: np.ndarray, taken) -> None:
    """Add ``bias`` (N,) to the output of MatMul/Gemm ``node``: into Gemm's C (scaled by α/β), into the
    constant of the one Add reading a MatMul's output, else through a new Add after the layer."""
    name = fresh_name(f"{node.name}_shift_bias", taken)
    if node.op == "Gemm":
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        c = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        if c is None:
            const = g.Constant(name, (alpha * bias).astype(np.float32))
            if len(node.inputs) > 2:
                node.inputs[2] = const
            else:
                node.inputs.append(const)
            node.attrs["beta"] = 1.0
            return
        if isinstance(c, g.Constant) and beta != 0:
            node.inputs[2] = g.Constant(name, (np.asarray(c.values, np.float64) + alpha * bias / beta).astype(np.float32))
            return
    y = node.outputs[0]
    add = y.outputs[0] if len(y.outputs) == 1 and y not in graph.outputs else None
    other = None if add is None or add.op != "Add" else next((t for t in add.inputs if t is not y), None)
    if isinstance(other, g.Constant) and (other.values.ndim == 0 or other.values.shape[-1] in (1, bias.size)):
        add.inputs[next(k for k, t in enumerate(add.inputs) if t is other)] = g.Constant(name, (np.asarray(other.values, np.float64) + bias).astype(np.float32))
        return
    raw = g.Variable(fresh_name(f"{y.name}_unshifted", taken), dtype=y.dtype, shape=y.shape)
    node.outputs[0] = raw
    graph.nodes.append(g.Node("Add", fresh_name(f"{node.name}_shift", taken),
                              inputs=[raw, g.Constant(name, bias.astype(np.float32))], outputs=[y]))


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


def smoothable(model: onnx.ModelProto) -> bool:
    """Worth a calibration pass: any MatMul/Gemm (whose input may be scaled or shifted)."""
    return any(n.op_type in ("MatMul", "Gemm") for n in model.graph.node)


def smoothing_note(done: dict, mode: str) -> str:
    """One line for the summary: how many activations :func:`smooth_quant` scaled and shifted."""
    scaled = sum(d.scaled for d in done.values())
    shifted = sum(d.shifted for d in done.values())
    parts = ([f"SmoothQuant moved the channel ranges of {scaled} activations into the next layers' weights"
              + (" (LayerNorm scale and bias)" if mode == "auto" else "")] if scaled else [])
    parts += [f"{shifted} one-sided or off-centre activations were centred (Outlier Suppression+ shift, "
              "its product with the weights in the layers' bias)"] if shifted else []
    return "; ".join(parts) + "; --smoothquant off to skip"
