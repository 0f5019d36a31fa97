"""Precision casting: the float remainder of a graph in FP16 (strongly typed TensorRT:
``--target trt11``, ``--reference fp16``, ``qdq trt build``) or in FP32 (an FP16 source model for
the weakly typed targets, whose Q/DQ take FP32 scales before opset 19).

Types are decided per node from the ONNX op schemas (:func:`cast_float`):

* only float32/float16 tensors are touched; integer and bool tensors never are;
* each formal input/output of a node resolves through its type constraint: FP16 when the node runs
  in FP16 and the constraint allows ``tensor(float16)``, else FP32; inputs the schema types as
  ``tensor(float)`` (Resize ``scales``, NonMaxSuppression) stay FP32, and an op whose constraint
  excludes FP16 (``Range``) runs in FP32; ops without a known schema (custom domains), ops typed by
  a ``dtype`` attribute and nodes with subgraphs stay FP32, with the tensors their subgraphs read;
* a ``Cast`` to float follows its node's precision; Q/DQ follow the tensor they read (Q) or the
  layers they feed (DQ), their scales take the dtype of that side (FP16 scales re-quantize INT8
  weights so the codes match the stored scale, see :func:`_fp16_weight`);
* graph inputs and outputs keep their declared types, with a Cast at each boundary; a Cast is added
  wherever a producer's type differs from what a consumer takes, once per tensor and type.

Which nodes stay FP32 is decided by data, like NVIDIA's AutoCast (:mod:`qdq.measure.autocast`).

Evaluating FP16 in ONNX Runtime: its CPU provider runs FP16 nodes that have no FP16 kernel in FP32 and
removes the roundings between consecutive such nodes, so an FP16 model run there looks better than
TensorRT runs it (docs/design.md has the measurement).  :func:`emulate_fp16` gives the FP32 graph
that rounds every tensor the model stores in FP16, through explicit Cast pairs ONNX Runtime keeps:
each op computes from FP16 values and its output is stored in FP16, which is what TensorRT's FP16
kernels do except for the FP32 accumulation inside Conv/GEMM.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from ..calib.session import LENT_BYTES
from ..errors import QdqError
from ..modelio import fresh_name
from .rewrite import quantize_weight
from .surgery import (FP16_MIN_SCALE, batchnorm_affine, default_domain, export_graph, export_lent, gs, import_graph,
                      taken_names, tidy)

FP16_MAX = 65504.0
# keep a 2× margin below FP16's maximum for values unseen during calibration
FP16_SAFE_MAX = FP16_MAX / 2
# A node whose FP16 output, computed from FP16-rounded inputs, is further than this from its FP32
# output stays FP32.  Rounding alone leaves about 70 dB (11-bit significand); 40 dB is 100× that
# noise power: overflow, cancellation, deep reductions, or inputs below FP16's normal range.
NODE_FP16_MIN_DB = 40.0
# The FP16 model's output must stay at least this far above FP32 (pooled SQNR; FP16 rounding through a
# real CNN accumulates to about 45 dB, docs/design.md).  The pipeline raises it to the INT8 model's own
# SQNR + 10 dB: noise 10 dB under the INT8 noise adds at most 0.4 dB.
FP16_OUTPUT_MIN_DB = 35.0
# Values of this size in Clip/Min/Max bounds mean "no bound"; they saturate to ±FP16_MAX.
NO_BOUND = 1e30
BOUND_OPS = ("Clip", "Min", "Max")
_ANY_INPUT = {"Shape": {0}, "Size": {0}, "Cast": {0}}   # inputs whose dtype does not matter
F32, F16 = np.dtype(np.float32), np.dtype(np.float16)
_ONNX_OF = {F32: TensorProto.FLOAT, F16: TensorProto.FLOAT16}


def _dtype(t):
    try:
        d = np.dtype(t.dtype)   # a Constant's from its TensorProto: its values are not read
    except TypeError:
        return None
    return d if d in (F32, F16) else None


@dataclass
class _Formal:
    """What a node's formal parameters take: ``inputs[i]``/``outputs[k]`` is ``"any"``,
    ``None`` (not float), or the numpy float dtype it must have."""

    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


def _schema(node, opsets: dict):
    domain = "" if default_domain(node) else node.domain
    if domain not in opsets:
        return None
    try:
        return onnx.defs.get_schema(node.op, opsets[domain], domain)
    except Exception:
        return None


def resolve(node, low: bool, opsets: dict) -> _Formal | None:
    """The dtype each float input/output of ``node`` takes when it runs in FP16 (``low``) or FP32;
    None when the node cannot be retyped (no schema, dtype attribute, subgraph)."""
    schema = _schema(node, opsets)
    if schema is None or "dtype" in node.attrs or any(isinstance(v, gs().Graph) for v in node.attrs.values()):
        return None
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def pick(formal):
        kind = formal.type_str
        types = allowed.get(kind, {kind})
        if low and "tensor(float16)" in types:
            return F16
        return F32 if "tensor(float)" in types else None

    def formal_at(params, i):
        if not params:
            return None
        return params[i] if i < len(params) else (params[-1] if params[-1].option.name == "Variadic" else None)

    res = _Formal()
    for i, t in enumerate(node.inputs):
        f = formal_at(schema.inputs, i)
        res.inputs.append("any" if i in _ANY_INPUT.get(node.op, ()) else (pick(f) if f is not None else None))
    for k, t in enumerate(node.outputs):
        f = formal_at(schema.outputs, k)
        res.outputs.append(pick(f) if f is not None else None)
    if node.op == "Cast":
        res.outputs = [F16 if low else F32] if int(node.attrs["to"]) in (TensorProto.FLOAT, TensorProto.FLOAT16) else [None]
    return res


def cast_float(model: onnx.ModelProto, to, keep: set = frozenset(), pass_name: str = "FP16 cast",
               io_types: dict | None = None, check: bool = True) -> onnx.ModelProto:
    """``model`` with its float remainder in ``to`` (np.float16 or np.float32); node ids in ``keep``
    (positions in ``model.graph.node``) stay FP32.  Graph inputs/outputs keep their declared types,
    or those in ``io_types`` (name → numpy dtype).  See the module doc for the rules."""
    graph = import_graph(model)
    cast_graph(graph, opsets_of(model), to, [graph.nodes[i] for i in keep], io_types)
    return export_graph(graph, model, pass_name, check)


def fp16_emulated(model: onnx.ModelProto, keep: set = frozenset()) -> tuple:
    """What ONNX Runtime is handed to measure ``cast_float(model, np.float16, keep)`` as TensorRT runs
    it (:func:`runnable` of that model: the FP16 tensors emulated in FP32 with explicit rounding), on
    one graph and exported for a session only: (model, lent) for
    :func:`qdq.calib.session.session_for`.  Never written, never checked."""
    graph = import_graph(model)
    opsets = opsets_of(model)
    cast_graph(graph, opsets, np.float16, [graph.nodes[i] for i in keep])
    tidy(graph)
    if any(isinstance(t, gs().Variable) and _dtype(t) == F16 for t in graph.tensors().values()) \
            or any(isinstance(t, gs().Constant) and t.dtype == np.float16 for t in graph.tensors().values()):
        emulate_in_place(graph, opsets)
        tidy(graph)
    return export_lent(graph, model)


def cast_graph(graph, opsets: dict, to, keep=(), io_types: dict | None = None) -> None:
    """:func:`cast_float` on a gs ``graph`` in place; ``keep`` holds the gs nodes that stay FP32 and
    ``opsets`` the model's opset per domain (:func:`opsets_of`)."""
    low_wanted = np.dtype(to) == F16
    kept = {id(n) for n in keep}
    if low_wanted:
        for bn, added in _batchnorm_to_scale_shift(graph):
            if id(bn) in kept:
                kept |= {id(n) for n in added}
    graph.toposort()   # dtypes are propagated in graph order; earlier passes may have appended nodes
    io_types = {k: np.dtype(v) for k, v in (io_types or {}).items()}
    declared = {t.name: io_types.get(t.name, _dtype(t)) for t in list(graph.inputs) + list(graph.outputs)}
    formal, low = _precisions(graph, opsets, low_wanted, kept)
    stored = _stored_dtypes(graph, opsets, formal, low, declared)
    taken = taken_names(graph)
    for const in [t for t in graph.tensors().values() if isinstance(t, gs().Constant) and _dtype(t) is not None]:
        _retype_constant(const, formal, taken)
    _cast_edges(graph, formal, stored, taken)
    _cast_outputs(graph, declared, stored, taken)


def _precisions(graph, opsets: dict, low_wanted: bool, kept: set) -> tuple[dict, dict]:
    """Each node's formal dtypes and whether it runs in FP16: (id(node) → _Formal, id(node) → bool).
    A DQ takes the precision of the layers it feeds (no Cast between a DQ and its layer)."""
    outer = _outer_scope_reads(graph)
    formal, low = {}, {}
    for node in graph.nodes:
        if not any(_dtype(t) is not None for t in list(node.inputs) + list(node.outputs) if not t.is_empty()):
            continue
        wants_low = low_wanted and id(node) not in kept and not any(o.name in outer for o in node.outputs)
        f = resolve(node, wants_low, opsets)
        if f is None:  # unknown to us: its float tensors stay as the model declares them
            f, wants_low = _Formal([_dtype(t) for t in node.inputs], [_dtype(t) for t in node.outputs]), False
        formal[id(node)], low[id(node)] = f, wants_low
    for node in graph.nodes:
        if node.op == "DequantizeLinear" and id(node) in formal:
            users = [c for c in node.outputs[0].outputs if id(c) in low]
            if users and not any(low[id(c)] for c in users):
                formal[id(node)], low[id(node)] = resolve(node, False, opsets), False
    return formal, low


def _stored_dtypes(graph, opsets: dict, formal: dict, low: dict, declared: dict) -> dict:
    """tensor name → the dtype it is stored in (nodes in topological order); a Q takes the precision
    of what it reads; Cast and ConstantOfShape nodes are retyped to their node's precision."""
    stored = {t.name: declared[t.name] for t in graph.inputs if declared[t.name] is not None}
    for node in graph.nodes:
        if node.op == "QuantizeLinear" and id(node) in formal:
            src_low = stored.get(node.inputs[0].name) == F16
            if src_low != low[id(node)]:
                formal[id(node)], low[id(node)] = resolve(node, src_low, opsets), src_low
        f = formal.get(id(node))
        for k, t in enumerate(node.outputs):
            want = f.outputs[k] if f is not None and k < len(f.outputs) else None
            if not t.is_empty():
                stored[t.name] = want if want is not None else _dtype(t)
        if f is not None and node.op == "Cast" and f.outputs[0] is not None:
            node.attrs["to"] = _ONNX_OF[f.outputs[0]]
        if f is not None and node.op == "ConstantOfShape" and f.outputs[0] is not None and "value" in node.attrs:
            value = np.asarray(node.attrs["value"].values)
            if value.dtype.kind == "f":
                node.attrs["value"] = gs().Constant(node.attrs["value"].name, value.astype(f.outputs[0]))
    return stored


def _cast_edges(graph, formal: dict, stored: dict, taken: set) -> None:
    """A Cast wherever a variable's stored dtype differs from what a consumer takes (once per
    tensor and dtype)."""
    casts = {}
    for var in [t for t in graph.tensors().values() if isinstance(t, gs().Variable) and stored.get(t.name) is not None]:
        have = stored[var.name]
        for consumer in list(var.outputs):
            f = formal.get(id(consumer))
            for i in range(len(consumer.inputs)):
                need = f.inputs[i] if f is not None and i < len(f.inputs) else None
                if consumer.inputs[i] is not var or need in (None, "any") or need == have:
                    continue
                if (var.name, need) not in casts:
                    casts[(var.name, need)] = _add_cast(graph, var, need, taken)
                consumer.inputs[i] = casts[(var.name, need)]
        var.dtype = have


def _cast_outputs(graph, declared: dict, stored: dict, taken: set) -> None:
    """Graph outputs keep their declared dtype: a Cast before each one stored otherwise."""
    g = gs()
    for out in list(graph.outputs):
        want, have = declared[out.name], stored.get(out.name)
        if want is None or have is None or have == want or not out.inputs:
            continue
        inner = g.Variable(fresh_name(f"{out.name}_{_suffix(have)}", taken), dtype=have, shape=out.shape)
        producer = out.inputs[0]
        for consumer in list(out.outputs):
            for i in range(len(consumer.inputs)):
                if consumer.inputs[i] is out:
                    consumer.inputs[i] = inner
        producer.outputs[producer.outputs.index(out)] = inner
        graph.nodes.append(g.Node("Cast", fresh_name(f"{out.name}_CastTo{_suffix(want).title()}", taken),
                                  attrs={"to": _ONNX_OF[want]}, inputs=[inner], outputs=[out]))
        out.dtype = want


def has_fp16(model: onnx.ModelProto) -> bool:
    """Whether ``model`` computes anything in FP16 inside: FP16 initializers, intermediate tensors
    or Casts to FP16 feeding other nodes (FP16 graph inputs and outputs alone are exact Casts)."""
    outputs = {o.name for o in model.graph.output}
    return (any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
            or any(v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in model.graph.value_info)
            or any(n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute)
                   and n.output[0] not in outputs for n in model.graph.node))


def emulate_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The FP32 graph computing what ``model`` (with FP16 tensors) computes with FP16 storage: every
    tensor the model holds in FP16 is rounded to FP16 (Cast to FP16 and back) where it is produced;
    FP16 constants become FP32 of the same values.  Inputs and outputs keep their declared types."""
    graph = import_graph(model)
    emulate_in_place(graph, opsets_of(model))
    return export_graph(graph, model, "FP16 emulation")


def remainder_fp16(model: onnx.ModelProto, keep_names=(), check: bool = False) -> onnx.ModelProto:
    """``model`` (a Q/DQ file with an FP32 remainder, as ``--target trt8``/``trt10`` write) as weakly
    typed TensorRT built with ``--int8 --fp16`` runs it, ready for ONNX Runtime: every float node outside
    the INT8 layers in FP16 but the nodes named in ``keep_names`` (pinned to FP32), emulated in FP32 with
    explicit FP16 rounding.  A model that already computes in FP16 (trt11) is emulated as written
    (:func:`runnable`)."""
    if has_fp16(model):
        return runnable(model)
    graph = import_graph(model)
    keep = set(keep_names)
    opsets = opsets_of(model)
    cast_graph(graph, opsets, np.float16, [n for n in graph.nodes if n.name in keep])
    emulate_in_place(graph, opsets)
    return export_graph(graph, model, "FP16 remainder", check)


def emulate_in_place(graph, opsets: dict) -> None:
    """:func:`emulate_fp16` on a gs graph in place."""
    g = gs()
    half = {t.name for t in graph.tensors().values() if isinstance(t, g.Variable) and _dtype(t) == F16}
    io = {t.name: _dtype(t) for t in list(graph.inputs) + list(graph.outputs) if _dtype(t) is not None}
    taken = taken_names(graph)
    _widen_weights(graph, taken)
    cast_graph(graph, opsets, np.float32, (), io)
    for t in [t for t in graph.tensors().values() if isinstance(t, g.Variable) and t.name in half and t.inputs]:
        if _dtype(t) != F32:   # a declared FP16 graph input/output is rounded by its type already
            continue
        producer = t.inputs[0]
        raw = g.Variable(fresh_name(f"{t.name}_fp32", taken), dtype=F32, shape=t.shape)
        producer.outputs[producer.outputs.index(t)] = raw
        graph.nodes += fp16_round_trip(raw, t, t.name, taken)


def runnable(model: onnx.ModelProto) -> onnx.ModelProto:
    """What to hand ONNX Runtime to measure ``model`` as TensorRT computes it: its FP16 emulation
    when it computes in FP16 (ONNX Runtime's CPU provider would compute much of it in FP32 and hide
    what FP16 storage costs), else ``model`` itself."""
    return emulate_fp16(model) if has_fp16(model) else model


def _widen_weights(graph, taken: set) -> None:
    """Each FP16 weight of :data:`qdq.calib.session.LENT_BYTES` or more read through a Cast to FP32
    that ONNX Runtime runs when the weight's consumer does (exact, as converting its values is): FP32
    copies of all the weights would be held beside the FP16 ones for the session's life."""
    g = gs()
    for const in [t for t in graph.tensors().values() if isinstance(t, g.Constant) and t.dtype == np.float16
                  and t.outputs and 2 * int(np.prod(t.shape)) >= LENT_BYTES and not _is_qdq_scale(t)]:
        wide = g.Variable(fresh_name(f"{const.name}_fp32", taken), dtype=F32, shape=list(const.shape))
        for consumer in list(const.outputs):
            for i in [i for i, t in enumerate(consumer.inputs) if t is const]:
                consumer.inputs[i] = wide
        graph.nodes.append(g.Node("Cast", fresh_name(f"{const.name}_ToFp32", taken), attrs={"to": TensorProto.FLOAT},
                                  inputs=[const], outputs=[wide]))


def fp16_round_trip(src, dst, stem: str, taken: set) -> list:
    """Two Casts, FP32 ``src`` → FP16 → FP32 ``dst`` (gs Variables): FP16 storage made explicit in
    a form ONNX Runtime keeps (it does not fuse a Cast pair away)."""
    g = gs()
    mid = g.Variable(fresh_name(f"{stem}_as_fp16", taken), dtype=F16, shape=src.shape)
    return [g.Node("Cast", fresh_name(f"{stem}_RoundToFp16", taken), attrs={"to": TensorProto.FLOAT16},
                   inputs=[src], outputs=[mid]),
            g.Node("Cast", fresh_name(f"{stem}_BackToFp32", taken), attrs={"to": TensorProto.FLOAT},
                   inputs=[mid], outputs=[dst])]


def _suffix(dtype) -> str:
    return "fp16" if dtype == F16 else "fp32"


def _add_cast(graph, var, dtype, taken):
    """A Cast of ``var`` to ``dtype``; returns the new variable."""
    g = gs()
    out = g.Variable(fresh_name(f"{var.name}_{_suffix(dtype)}", taken), dtype=dtype, shape=var.shape)
    graph.nodes.append(g.Node("Cast", fresh_name(f"{var.name}_CastTo{_suffix(dtype).title()}", taken),
                              attrs={"to": _ONNX_OF[dtype]}, inputs=[var], outputs=[out]))
    return out


def opsets_of(model: onnx.ModelProto) -> dict:
    """Opset version per domain (\"\" for the default one)."""
    return {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}


def _outer_scope_reads(graph) -> set:
    """Names of main-graph tensors read inside subgraphs (If/Loop/Scan): they keep their dtype."""
    names = set()
    for node in graph.nodes:
        for v in node.attrs.values():
            if isinstance(v, gs().Graph):
                inner = {t.name for n in v.nodes for t in n.outputs} | {t.name for t in v.inputs}
                names |= {t.name for n in v.nodes for t in n.inputs if t.name and t.name not in inner}
    return names


def _retype_constant(const, formal: dict, taken: set) -> None:
    """Give each consumer of a float constant the dtype it takes: in place when all agree, else
    one copy per dtype.  Clip/Min/Max bounds meaning "none" saturate to ±65504 in FP16; any other
    value beyond FP16 keeps its consumer's input FP32 through a copy."""
    g = gs()
    have = _dtype(const)
    need = {}
    for consumer in list(const.outputs):
        f = formal.get(id(consumer))
        for i, t in enumerate(consumer.inputs):
            if t is not const or f is None or i >= len(f.inputs) or f.inputs[i] in (None, "any"):
                continue
            need.setdefault(f.inputs[i], []).append((consumer, i))
    if not need or set(need) == {have}:
        return
    shared_scale = _is_qdq_scale(const)
    for dtype, edges in need.items():
        if dtype == have and not shared_scale:
            continue
        values = _converted(const, dtype, edges, any_fp16=F16 in need)
        values = None if values is None else np.asarray(values)
        if values is None:
            raise QdqError(f"internal error: constant {const.name!r} cannot be represented in FP16 for "
                           f"{edges[0][0].name!r}; please report it with the model")
        if len(need) == 1:
            const.values = values
            return
        copy = g.Constant(fresh_name(f"{const.name}_{_suffix(dtype)}", taken), values)
        for consumer, i in edges:
            consumer.inputs[i] = copy


def _is_qdq_scale(const) -> bool:
    return any(c.op in ("QuantizeLinear", "DequantizeLinear") and len(c.inputs) > 1 and c.inputs[1] is const
               for c in const.outputs)


def _converted(const, dtype, edges, any_fp16: bool):
    """``const``'s values in ``dtype`` for ``edges``; None if they do not fit FP16."""
    values = np.asarray(const.values)
    if _is_qdq_scale(const):
        weight = _weight_of(const)
        if weight is not None:
            return _fp16_weight(weight, const) if dtype == F16 else values.astype(dtype)
        # Q and DQ share this scale: both sides take its FP16-rounded value so they agree exactly
        scale = np.maximum(values.astype(np.float64), FP16_MIN_SCALE) if any_fp16 else values.astype(np.float64)
        return scale.astype(np.float16).astype(dtype)
    if dtype == F16:
        big = np.abs(values) > FP16_MAX   # FP16_MAX is exact in FP32: no FP64 copy of the weight needed
        if np.any(big):
            if all(c.op in BOUND_OPS for c, _ in edges) and np.all(np.abs(values[big]) >= NO_BOUND):
                return np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16)
            return None
    return values.astype(dtype)


def _weight_of(scale_const):
    """The INT8 weight constant dequantized with ``scale_const`` (per-channel weights), if any."""
    for c in scale_const.outputs:
        if c.op == "DequantizeLinear" and isinstance(c.inputs[0], gs().Constant) and c.inputs[1] is scale_const:
            return c
    return None


def _fp16_weight(dq, scale_const) -> np.ndarray:
    """FP16 scales for an INT8 weight: re-quantize w = q·s with FP16 scales (a scale raised to
    FP16's smallest normal must change the codes too) and store the new codes; returns the scales."""
    qc = dq.inputs[0]
    q = np.asarray(qc.values).astype(np.float64)
    scale = np.asarray(scale_const.values).astype(np.float64)
    if scale.size == 1:
        q *= scale.reshape(())   # w, in place: quantize_weight works in it too
        qw, new, _ = quantize_weight(q.reshape(1, -1), 0, np.float16, overwrite=True)
        qc.values, new = qw.reshape(q.shape), new.reshape(scale.shape)
    else:
        axis = int(dq.attrs.get("axis", 1)) % q.ndim
        shape = [1] * q.ndim
        shape[axis] = -1
        q *= scale.reshape(shape)
        qw, new, _ = quantize_weight(q, axis, np.float16, overwrite=True)
        qc.values = qw
    return new.astype(np.float16)


def _batchnorm_to_scale_shift(graph) -> list:
    """BatchNormalization with constant statistics → ``x·a + b`` (Mul, Add), a and b from
    :func:`qdq.graph.surgery.batchnorm_affine`, shaped for x's rank: running variances can exceed FP16,
    and ONNX Runtime's FP16 BatchNormalization loses precision even in range (docs/design.md).  A
    BatchNorm whose input rank is unknown is left alone.  Returns ``[(BatchNorm node, [Mul, Add])]``."""
    g = gs()
    taken = taken_names(graph)
    done = []
    for bn in list(graph.nodes):
        if bn.op != "BatchNormalization" or len(bn.outputs) != 1 or any(not isinstance(t, g.Constant) for t in bn.inputs[1:5]):
            continue
        x = bn.inputs[0]
        if x.shape is None:
            continue
        a, b = batchnorm_affine(bn)
        shape = (-1,) + (1,) * (len(x.shape) - 2)
        a_c = g.Constant(fresh_name(f"{bn.name}_scale_folded", taken), a.reshape(shape).astype(np.float32))
        b_c = g.Constant(fresh_name(f"{bn.name}_shift_folded", taken), b.reshape(shape).astype(np.float32))
        mid = g.Variable(fresh_name(f"{bn.outputs[0].name}_scaled", taken), dtype=x.dtype, shape=x.shape)
        out = bn.outputs[0]
        bn.outputs.clear()
        bn.inputs.clear()
        added = [g.Node("Mul", fresh_name(f"{bn.name}_Mul", taken), inputs=[x, a_c], outputs=[mid]),
                 g.Node("Add", fresh_name(f"{bn.name}_Add", taken), inputs=[mid, b_c], outputs=[out])]
        graph.nodes += added
        done.append((bn, added))
    return done
