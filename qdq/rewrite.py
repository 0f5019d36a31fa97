"""Graph rewrite: insert QuantizeLinear/DequantizeLinear pairs named after their tensors.

Activations: ``t → Q(t_scale, t_zero_point) → t_quantized → DQ → t_dequantized → consumers``,
per-tensor, zero-point 0, scale = amax / 127.  Weights: stored as INT8 initializers
``w_quantized`` with a per-channel ``DequantizeLinear`` (``axis`` = output channels);
q = clamp(round_half_even(w / scale_c), −128, 127) with scale_c = max|w_c| / 127 computed in the
scale dtype actually stored.  Each Q/DQ node's doc_string carries the amax, scale and method, so
Netron shows them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .placement import Placement
from .ranges import QMAX

# Smallest normal float16.  Smaller FP16 scales are subnormal or round to 0: TensorRT rejects 0, and
# ONNX Runtime's FP16 kernels turned subnormal weight scales into Inf outputs on EfficientNet-Lite0.
FP16_MIN_SCALE = 2.0 ** -14


@dataclass
class QdqNote:
    """What was written for one tensor: amax, scale, method, and any floor applied."""

    tensor: str
    amax: float
    scale: float
    method: str
    floored: bool = False


def safe_scale(amax, dtype) -> tuple[np.ndarray, bool]:
    """scale = amax / 127 in ``dtype``, forced positive and finite.

    A zero amax (all-zero tensor or dead channel) gets scale 1 (any positive value represents
    zeros exactly); a scale that would underflow ``dtype`` is raised to its smallest positive value.
    Returns the scales and whether any was changed.
    """
    amax = np.asarray(amax, dtype=np.float64)
    scale = amax / QMAX
    floored = bool(np.any(amax <= 0) or np.any(~np.isfinite(amax)))
    scale = np.where((amax > 0) & np.isfinite(amax), scale, 1.0)
    smallest = FP16_MIN_SCALE if dtype == np.float16 else float(np.finfo(np.float32).tiny)
    if np.any(scale < smallest):
        floored = True
        scale = np.maximum(scale, smallest)
    return scale.astype(dtype), floored


def quantize_weight(w: np.ndarray, axis: int, scale_dtype) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-channel symmetric INT8 of ``w`` along ``axis``: returns (int8 weights, scales, floored)."""
    axis = axis % w.ndim
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=other) if other else np.abs(w)
    scale, floored = safe_scale(amax, scale_dtype)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w.astype(np.float64) / scale.astype(np.float64).reshape(shape)), -QMAX - 1, QMAX)
    return q.astype(np.int8), scale, floored


def insert_qdq(model: onnx.ModelProto, plan: Placement, amax: dict, method: dict, constants: dict,
               scale_dtype=np.float32) -> list[QdqNote]:
    """Rewrite ``model`` in place.  ``amax[t]`` per activation tensor; ``method[t]`` its label;
    ``constants`` the weight arrays (name → ndarray).  Returns one note per Q/DQ pair written."""
    g = model.graph
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    node_names = {n.name for n in g.node}
    pos = {n.name: i for i, n in enumerate(g.node)}

    def fresh(name: str, pool: set) -> str:
        out, k = name, 1
        while out in pool:
            out, k = f"{name}_{k}", k + 1
        pool.add(out)
        return out

    before = {}       # consumer node name -> [Q/DQ nodes to emit right before it]
    rewire = {}       # (consumer node name, input index) -> new input name
    notes = []
    new_inits = []

    for t, users in plan.activations.items():
        a = float(amax[t])
        scale, floored = safe_scale(a, scale_dtype)
        s_name, z_name = fresh(f"{t}_scale", taken), fresh(f"{t}_zero_point", taken)
        q_out, dq_out = fresh(f"{t}_quantized", taken), fresh(f"{t}_dequantized", taken)
        new_inits += [numpy_helper.from_array(np.asarray(scale, dtype=scale_dtype).reshape(()), s_name),
                      numpy_helper.from_array(np.zeros((), np.int8), z_name)]
        doc = f"amax={a:.6g} scale={float(scale):.6g} method={method.get(t, '?')}"
        q = helper.make_node("QuantizeLinear", [t, s_name, z_name], [q_out], name=fresh(f"{t}_QuantizeLinear", node_names), doc_string=doc)
        dq = helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out], name=fresh(f"{t}_DequantizeLinear", node_names), doc_string=doc)
        first = min(users, key=lambda u: pos[u[0]])[0]
        before.setdefault(first, []).extend([q, dq])
        for u in users:
            rewire[u] = dq_out
        notes.append(QdqNote(t, a, float(scale), method.get(t, "?"), floored))

    for w, spec in plan.weights.items():
        arr = constants[w]
        qw, scale, floored = quantize_weight(arr, spec.axis, scale_dtype)
        q_name, s_name = fresh(f"{w}_quantized", taken), fresh(f"{w}_scale", taken)
        z_name, dq_out = fresh(f"{w}_zero_point", taken), fresh(f"{w}_dequantized", taken)
        new_inits += [numpy_helper.from_array(qw, q_name), numpy_helper.from_array(scale, s_name),
                      numpy_helper.from_array(np.zeros(scale.shape, np.int8), z_name)]
        amax_c = scale.astype(np.float64) * QMAX
        doc = (f"weight per-channel axis={spec.axis} amax min/median/max="
               f"{amax_c.min():.6g}/{np.median(amax_c):.6g}/{amax_c.max():.6g} method=max")
        dq = helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_out],
                              name=fresh(f"{w}_DequantizeLinear", node_names), axis=spec.axis % arr.ndim, doc_string=doc)
        first = min(spec.consumers, key=lambda u: pos[u[0]])[0]
        before.setdefault(first, []).append(dq)
        for u in spec.consumers:
            rewire[u] = dq_out
        notes.append(QdqNote(w, float(amax_c.max()), float(scale.max()), "max (per-channel)", floored))

    nodes = []
    for n in g.node:
        nodes.extend(before.get(n.name, []))
        for i in range(len(n.input)):
            if (n.name, i) in rewire:
                n.input[i] = rewire[(n.name, i)]
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    _drop_unused_constants(model, set(plan.weights))
    return notes


def _drop_unused_constants(model: onnx.ModelProto, names: set) -> None:
    """Remove float weights (initializers or Constant nodes) no node reads any more."""
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name not in names or t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = [n for n in g.node if not (n.op_type == "Constant" and n.output[0] in names and n.output[0] not in used)]
    del g.node[:]
    g.node.extend(nodes)
    graph_inputs = [i for i in g.input if i.name not in names or i.name in used]
    del g.input[:]
    g.input.extend(graph_inputs)


def set_metadata(model: onnx.ModelProto, props: dict) -> None:
    """Record ``props`` in ``metadata_props`` (replacing keys that exist)."""
    existing = {p.key: p for p in model.metadata_props}
    for k, v in props.items():
        if k in existing:
            existing[k].value = str(v)
        else:
            model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=str(v)))

