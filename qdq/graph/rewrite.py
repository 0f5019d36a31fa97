"""Graph rewrite: insert QuantizeLinear/DequantizeLinear pairs named after their tensors.

Activations: ``t → Q(t_scale, t_zero_point) → t_quantized → DQ → t_dequantized → consumers``,
per-tensor, zero-point 0, scale = amax / 127.  Weights: stored as INT8 initializers
``w_quantized`` with a per-channel ``DequantizeLinear`` (``axis`` = output channels);
q = clamp(round_half_even(w / scale_c), −128, 127) with scale_c = max|w_c| / 127 computed in the
scale dtype actually stored.  Each Q/DQ node's doc_string carries the amax, scale and method, so
Netron shows them.

The edit works on an onnx-graphsurgeon graph shared with the other passes (:mod:`qdq.graph.surgery`):
consumers are found by node id (:class:`qdq.graph.placement.Placement`), never by name; whoever
exports the graph verifies it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..calib.ranges import QMAX
from ..modelio import fresh_name
from . import bias_correction
from .placement import Placement
from .surgery import FP16_MIN_SCALE, export_graph, gs, import_graph, peek, taken_names

FP16_SUBNORMAL = 2.0 ** -24  # smallest positive float16


@dataclass
class QdqNote:
    """What was written for one tensor: amax, scale, method, and any floor applied."""

    tensor: str
    amax: float
    scale: float
    method: str
    floored: bool = False


def safe_scale(amax, dtype, smallest: float | None = None) -> tuple[np.ndarray, bool]:
    """scale = amax / 127 in ``dtype``, forced positive and finite, never below ``smallest``
    (default: the smallest normal value of ``dtype``).

    A zero amax (all-zero tensor or dead channel) gets scale 1 (any positive value represents
    zeros exactly); a scale that would underflow is raised to ``smallest``.  Returns the scales and
    whether any was changed.
    """
    amax = np.asarray(amax, dtype=np.float64)
    scale = amax / QMAX
    floored = bool(np.any(amax <= 0) or np.any(~np.isfinite(amax)))
    scale = np.where((amax > 0) & np.isfinite(amax), scale, 1.0)
    if smallest is None:
        smallest = FP16_MIN_SCALE if dtype == np.float16 else float(np.finfo(np.float32).tiny)
    if np.any(scale < smallest):
        floored = True
        scale = np.maximum(scale, smallest)
    return scale.astype(dtype), floored


def quantize_weight(w: np.ndarray, axis: int, scale_dtype, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-channel symmetric INT8 of ``w`` along ``axis``: returns (int8 weights, scales, floored).
    ``overwrite``: a float64 ``w`` may serve as the scratch (its values are lost).

    FP16 scales are rounded up to the FP16 grid (so no code exceeds ±127) and may be subnormal, down
    to 2^-24: the codes are computed against the stored scale, so its rounding costs resolution, not
    gain.  BatchNorm-folded weights of nearly dead channels can lie far below FP16's smallest normal
    (6.1e-5; docs/design.md); flooring them there would leave them a few levels."""
    axis = axis % w.ndim
    other = tuple(i for i in range(w.ndim) if i != axis)
    # max(max, -min): the same amax as |w|'s without an array of |w| (weights can be large)
    amax = np.maximum(w.max(axis=other), -w.min(axis=other)) if other else np.abs(w)
    if scale_dtype == np.float16:
        scale, floored = safe_scale(amax, np.float64, FP16_SUBNORMAL)
        up = scale.astype(np.float16)
        scale = np.where(up.astype(np.float64) < scale, np.nextafter(up, np.float16(np.inf)), up).astype(np.float16)
    else:
        scale, floored = safe_scale(amax, scale_dtype)
    shape = [1] * w.ndim
    shape[axis] = -1
    # one float64 temporary, worked in place (weights can be large)
    q = w.astype(np.float64, copy=not overwrite)
    np.divide(q, scale.astype(np.float64).reshape(shape), out=q)
    np.clip(np.rint(q, out=q), -QMAX - 1, QMAX, out=q)
    return q.astype(np.int8), scale, floored


def insert_qdq(graph, nodes: list, plan: Placement, amax: dict, method: dict, bias: dict | None = None,
               codes: dict | None = None) -> tuple:
    """Insert the Q/DQ pairs of ``plan`` into the gs ``graph`` in place, FP32 scales (an FP16 target
    casts them later, :mod:`qdq.graph.precision`).  ``nodes`` are the graph's nodes by id at import
    (node ids in ``plan`` refer to them); ``amax[t]`` per activation tensor; ``method[t]`` its label;
    ``bias[node id]`` a per-channel mean error to fold into that layer's bias when ``plan`` quantizes
    it (:mod:`qdq.graph.bias_correction`).  Returns (one :class:`QdqNote` per Q/DQ written, the
    doc_string per new node name: amax, scale and method, for Netron)."""
    taken = taken_names(graph)
    int8 = set(plan.quantized_layers)
    if bias:   # a layer kept in float has no INT8 error to take out
        bias_correction.apply(graph, nodes, {p: b for p, b in bias.items() if p in int8}, taken)
    tensors = graph.tensors()
    docs, notes = {}, []
    for t, users in plan.activations.items():
        notes.append(_activation_qdq(graph, nodes, tensors[t], users, float(amax[t]), method.get(t, "?"), taken, docs))
    for key, spec in plan.weights.items():
        src = tensors[spec.tensor]
        notes.append(_weight_dq(graph, nodes, key, spec, src, weight_codes(codes, spec, src), taken, docs))
    return notes, docs


def weight_codes(codes: dict | None, spec, src) -> tuple:
    """:func:`quantize_weight` of the gs weight ``src`` along ``spec.axis`` (FP32 scales), kept in
    ``codes`` (a :attr:`qdq.graph.index.GraphIndex.weight_codes`; None: not kept) by (tensor, axis)."""
    if codes is None:
        return quantize_weight(np.asarray(peek(src)), spec.axis, np.float32)
    if (spec.tensor, spec.axis) not in codes:
        codes[spec.tensor, spec.axis] = quantize_weight(np.asarray(peek(src)), spec.axis, np.float32)
    return codes[spec.tensor, spec.axis]


def _activation_qdq(graph, nodes, src, users, amax: float, method: str, taken: set, docs: dict) -> QdqNote:
    """``src → Q → DQ → users`` (per tensor, zero-point 0, scale = amax / 127)."""
    g = gs()
    t = src.name
    scale, floored = safe_scale(amax, np.float32)
    s_c = g.Constant(fresh_name(f"{t}_scale", taken), np.asarray(scale.reshape(())))
    z_c = g.Constant(fresh_name(f"{t}_zero_point", taken), np.zeros((), np.int8))
    q_out = g.Variable(fresh_name(f"{t}_quantized", taken), dtype=np.int8, shape=src.shape)
    dq_out = g.Variable(fresh_name(f"{t}_dequantized", taken), dtype=src.dtype, shape=src.shape)
    q = g.Node("QuantizeLinear", fresh_name(f"{t}_QuantizeLinear", taken), inputs=[src, s_c, z_c], outputs=[q_out])
    dq = g.Node("DequantizeLinear", fresh_name(f"{t}_DequantizeLinear", taken), inputs=[q_out, s_c, z_c],
                outputs=[dq_out])
    graph.nodes += [q, dq]
    for node, i in users:
        nodes[node].inputs[i] = dq_out
    docs[q.name] = docs[dq.name] = f"amax={amax:.6g} scale={float(scale):.6g} method={method}"
    return QdqNote(t, amax, float(scale), method, floored)


def _weight_dq(graph, nodes, key: str, spec, src, coded: tuple, taken: set, docs: dict) -> QdqNote:
    """The weight ``src`` as INT8 codes (``coded``: :func:`quantize_weight`'s result) with a per-channel
    DequantizeLinear feeding ``spec``'s layers."""
    g = gs()
    qw, scale, floored = coded
    q_c = g.Constant(fresh_name(f"{key}_quantized", taken), qw)
    s_c = g.Constant(fresh_name(f"{key}_scale", taken), scale)
    z_c = g.Constant(fresh_name(f"{key}_zero_point", taken), np.zeros(scale.shape, np.int8))
    dq_out = g.Variable(fresh_name(f"{key}_dequantized", taken), dtype=np.dtype(src.dtype), shape=list(qw.shape))
    axis = spec.axis % qw.ndim
    dq = g.Node("DequantizeLinear", fresh_name(f"{key}_DequantizeLinear", taken), attrs={"axis": axis},
                inputs=[q_c, s_c, z_c], outputs=[dq_out])
    graph.nodes.append(dq)
    for node, i in spec.consumers:
        nodes[node].inputs[i] = dq_out
    amax_c = scale.astype(np.float64) * QMAX
    docs[dq.name] = (f"weight per-channel axis={axis} amax min/median/max="
                     f"{amax_c.min():.6g}/{np.median(amax_c):.6g}/{amax_c.max():.6g} method=max")
    return QdqNote(key, float(amax_c.max()), float(scale.max()), "max (per-channel)", floored)


def set_docs(model: onnx.ModelProto, docs: dict) -> None:
    """Put ``docs[node name]`` into each node's doc_string (gs graphs have none, so after export)."""
    for n in model.graph.node:
        if n.name in docs:
            n.doc_string = docs[n.name]


def set_metadata(model: onnx.ModelProto, props: dict) -> None:
    """Record ``props`` in ``metadata_props`` (replacing keys that exist)."""
    existing = {p.key: p for p in model.metadata_props}
    for k, v in props.items():
        if k in existing:
            existing[k].value = str(v)
        else:
            model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=str(v)))


def with_ranges(model: onnx.ModelProto, amax: dict, method: str, biases: dict | None = None) -> onnx.ModelProto:
    """A checked copy of the Q/DQ file ``model`` whose activation Q/DQ on each tensor of ``amax``
    (tensor → amax) takes scale = amax / 127 (its Q and every DQ after it), recorded as ``method``
    in their doc_strings, and whose layers named in ``biases`` (node name → bias array) take that
    bias; every other doc_string is kept.  ``model`` is not changed."""
    graph = import_graph(model)
    docs, names = {n.name: n.doc_string for n in model.graph.node if n.doc_string}, taken_names(graph)
    for q in graph.nodes:
        t = q.inputs[0] if q.op == "QuantizeLinear" else None
        if t is None or t.name not in amax or isinstance(t, gs().Constant):
            continue
        consts = {}   # one scale per dtype: a trt11 file's Q may take FP32 where its DQ takes FP16
        for n in [q] + [dq for dq in q.outputs[0].outputs if dq.op == "DequantizeLinear"]:
            dtype = np.dtype(n.inputs[1].dtype if isinstance(n.inputs[1], gs().Constant) else np.float32)
            scale, _ = safe_scale(amax[t.name], dtype)
            if dtype not in consts:
                consts[dtype] = gs().Constant(fresh_name(f"{t.name}_scale", names),
                                              np.asarray(scale, dtype).reshape(n.inputs[1].shape or ()))
            n.inputs[1] = consts[dtype]
            docs[n.name] = f"amax={amax[t.name]:.6g} scale={float(scale):.6g} method={method}"
    for n in graph.nodes:
        if n.name in (biases or {}) and len(n.inputs) > 2:
            old = n.inputs[2]
            n.inputs[2] = gs().Constant(fresh_name(f"{n.name}_bias", names), np.asarray(biases[n.name], old.dtype or np.float32))
    out = export_graph(graph, model, "range replacement")
    set_docs(out, docs)
    return out
