"""Which nodes of a float model stay FP32 when the rest runs in FP16 (the idea of NVIDIA's AutoCast,
decided from data here):

1. *range*: a tensor whose calibrated |x| exceeds half the FP16 maximum keeps its producer and its
   readers FP32; so does a node reading a constant beyond FP16 (other than "no bound" Clip limits);
2. *measured*: every node is also run with FP16 storage (FP16-rounded copies of its FP32 inputs, its
   output rounded to FP16), on a few samples, in one ONNX Runtime session; a node whose output then lies below
   :data:`qdq.graph.precision.NODE_FP16_MIN_DB` (SQNR against its FP32 output) stays FP32, and so do the
   producers of its float inputs, so that it reads values never stored in FP16;
3. *end to end*: the model cast with that set is run against FP32; while its output SQNR is below
   ``floor_db``, the nodes with the next-largest FP16 error are added (a batch per round, doubling).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..calib.calibrate import calibrate
from ..calib.data import first_feeds
from ..calib.session import run_session, session_for
from ..graph.index import GraphIndex
from ..graph.precision import (BOUND_OPS, F16, FP16_MAX, FP16_OUTPUT_MIN_DB, FP16_SAFE_MAX, NO_BOUND, NODE_FP16_MIN_DB,
                               cast_float, fp16_emulated, fp16_round_trip, opsets_of, resolve)
from ..graph.surgery import export_lent, gs, import_graph, peek, taken_names
from ..modelio import fresh_name
from ..targets import prepare
from .evaluate import DeviceModel, Evaluator
from .metrics import power_db

_SKIP = ("QuantizeLinear", "DequantizeLinear", "Constant", "Shape", "Size", "Identity")


@dataclass
class Fp16Plan:
    """Nodes kept FP32 (ids of the float model) with the reason per node, and what was measured."""

    keep: dict = field(default_factory=dict)          # node id -> reason
    node_db: dict = field(default_factory=dict)       # node id -> FP16 SQNR of its own output
    output_db: float | None = None                   # FP16 model vs FP32, pooled over outputs
    floor_db: float | None = None                    # the output floor the plan was raised to
    evaluator: Evaluator | None = field(default=None, repr=False)   # FP32 references of the plan's samples

    def names(self, idx: GraphIndex) -> dict:
        return {idx.labels[i]: why for i, why in self.keep.items()}

    def pins(self, idx: GraphIndex, int8_layers=()) -> list:
        """The kept nodes a weakly typed build pins to FP32 (``--layerPrecisions``): those computing a
        float output, INT8 layers left out (their precision is the Q/DQ's)."""
        return [idx.labels[i] for i in self.keep if i not in set(int8_layers)
                and any(idx.is_float(o) for o in idx.nodes[i].output if o)]


def range_rules(idx: GraphIndex, extrema: dict) -> dict:
    """Rule 1: node id -> reason, from calibrated (min, max) per tensor and the constants."""
    keep = {}
    for t, (lo, hi) in extrema.items():
        if max(abs(lo), abs(hi)) > FP16_SAFE_MAX:
            why = f"tensor {t!r} reaches {max(abs(lo), abs(hi)):.4g}, beyond FP16's safe range"
            if t in idx.producer:
                keep.setdefault(idx.producer[t], why)
            for pos, _ in idx.consumers.get(t, []):
                keep.setdefault(pos, why)
    for pos, node in enumerate(idx.nodes):
        for t in node.input:
            c = idx.constant(t)
            if c is None or c.dtype.kind != "f" or c.size == 0:
                continue
            big = np.abs(c.astype(np.float64)) > FP16_MAX
            if np.any(big) and not (node.op_type in BOUND_OPS and np.all(np.abs(c[big]) >= NO_BOUND)):
                keep.setdefault(pos, f"constant {t!r} is beyond the FP16 range")
    return keep


def node_fp16_errors(model: onnx.ModelProto, feeds: list, idx: GraphIndex | None = None) -> dict:
    """Rule 2's measurement: node id -> SQNR (dB) of the node's output computed with FP16 storage
    (inputs rounded to FP16, output rounded to FP16, see :func:`qdq.graph.precision.emulate_fp16`) against
    its FP32 output, both from the same FP32 input values, pooled over ``feeds``.  One ONNX Runtime
    session runs the model with an emulated FP16 duplicate of every node that could run in FP16."""
    idx = idx or GraphIndex.build(model)
    g = gs()
    graph = import_graph(idx)
    taken = taken_names(graph)
    nodes = list(graph.nodes)
    opsets = opsets_of(model)
    rounded, pairs = {}, []   # pairs: (node id, FP32 output name, emulated FP16 output name)

    def round_trip(t, name):
        back = g.Variable(fresh_name(f"{name}__h32", taken), dtype=np.float32, shape=t.shape)
        graph.nodes.extend(fp16_round_trip(t, back, name, taken))
        return back

    def fp16_input(t):
        if t.name not in rounded:
            v = np.asarray(peek(t)) if isinstance(t, g.Constant) else None
            if v is not None and np.abs(v).max(initial=0) > FP16_MAX:
                v = np.clip(v.astype(np.float64), -FP16_MAX, FP16_MAX)   # saturates, as a cast would not
                rounded[t.name] = g.Constant(fresh_name(f"{t.name}__r", taken), np.asarray(v.astype(np.float16), np.float32))
            else:   # weights too are rounded in the session, not copied: a large model's weights fit once
                rounded[t.name] = round_trip(t, t.name)
        return rounded[t.name]

    for pos, node in enumerate(nodes):
        f = resolve(node, True, opsets) if node.op not in _SKIP else None
        if f is None or F16 not in f.outputs:   # cannot run in FP16 at all: nothing to measure
            continue
        inputs = [fp16_input(t) if f.inputs[i] == F16 and idx.dtypes.get(t.name) == onnx.TensorProto.FLOAT else t
                  for i, t in enumerate(node.inputs)]
        outs = [g.Variable(f"{t.name}__dup{pos}", dtype=t.dtype, shape=t.shape) for t in node.outputs]
        graph.nodes.append(g.Node(node.op, f"{node.name}__fp16", attrs=dict(node.attrs), inputs=inputs, outputs=outs,
                                  domain=node.domain))
        for k, (t, o) in enumerate(zip(node.outputs, outs)):
            if f.outputs[k] == F16 and idx.dtypes.get(t.name) == onnx.TensorProto.FLOAT:
                sums = _sums_of_squares(graph, t, round_trip(o, o.name), taken)
                graph.outputs += sums
                pairs.append((pos, sums[0].name, sums[1].name))
    graph.toposort()
    aug, lent = export_lent(graph, model)
    sess = session_for(aug, fold=False, lent=lent)   # FP32 inside; its own roundings explicit, not folded into copies
    del aug, lent   # the session borrows the weights it needs from the store
    power = {(pos, ref): [0.0, 0.0] for pos, ref, _ in pairs}
    for k, feed in enumerate(feeds):
        outs = run_session(sess, feed, f"sample {k}")
        for pos, ref, noise in pairs:
            power[pos, ref][0] += float(outs[ref])
            power[pos, ref][1] += float(outs[noise])
    out = {}
    for (pos, _), (signal, noise) in power.items():
        db = power_db(signal, noise) if math.isfinite(noise) else -math.inf   # FP16 overflow: Inf or NaN
        out[pos] = min(out.get(pos, math.inf), db)
    return out


def _sums_of_squares(graph, ref, dup, taken) -> list:
    """Σ ref² and Σ (dup − ref)² of one sample as FP64 scalars computed inside the session (gs
    Variables appended to ``graph``): only two numbers per node leave ONNX Runtime, not its outputs."""
    g = gs()
    f64 = np.dtype(np.float64)
    a, b, d, rr, nn = (g.Variable(fresh_name(f"{ref.name}__{s}", taken), dtype=f64) for s in ("r64", "q64", "d", "rr", "nn"))
    graph.nodes += [g.Node("Cast", fresh_name(f"{ref.name}__R64", taken), {"to": onnx.TensorProto.DOUBLE}, [ref], [a]),
                    g.Node("Cast", fresh_name(f"{ref.name}__Q64", taken), {"to": onnx.TensorProto.DOUBLE}, [dup], [b]),
                    g.Node("Sub", fresh_name(f"{ref.name}__D", taken), inputs=[b, a], outputs=[d]),
                    g.Node("ReduceSumSquare", fresh_name(f"{ref.name}__RR", taken), {"keepdims": 0}, [a], [rr]),
                    g.Node("ReduceSumSquare", fresh_name(f"{ref.name}__NN", taken), {"keepdims": 0}, [d], [nn])]
    for v in (rr, nn):
        v.shape = []
    return [rr, nn]


def fp16_plan(model: onnx.ModelProto, extrema: dict, feeds: list, floor_db: float = FP16_OUTPUT_MIN_DB,
              idx: GraphIndex | None = None, rounds: int = 4) -> Fp16Plan:
    """The FP32 set for ``model`` (a float model) from ``extrema`` (tensor -> (min, max)) and a few
    ``feeds`` (see module doc)."""
    idx = idx or GraphIndex.build(model)
    plan = Fp16Plan(keep=range_rules(idx, extrema))
    if not feeds:
        return plan
    plan.node_db = node_fp16_errors(model, feeds, idx)
    for pos, db in plan.node_db.items():
        if db < NODE_FP16_MIN_DB:
            plan.keep.setdefault(pos, f"FP16 output {db:.1f} dB from FP32 on calibration samples")
            for t in idx.nodes[pos].input:
                if t in idx.producer and idx.is_float(t):
                    plan.keep.setdefault(idx.producer[t], f"feeds {idx.labels[pos]}, which needs FP32 inputs")
    plan.evaluator = Evaluator(model, feeds)
    raise_floor(plan, model, floor_db, rounds)
    return plan


def raise_floor(plan: Fp16Plan, model: onnx.ModelProto, floor_db: float, rounds: int = 4) -> bool:
    """Rule 3: while the FP16 model's output is below ``floor_db``, keep the nodes with the next-largest
    FP16 error in FP32 too (a batch per round, doubling).  Returns whether the plan changed."""
    if plan.evaluator is None or (plan.floor_db is not None and floor_db <= plan.floor_db):
        return False
    before = len(plan.keep)
    ranked = [pos for pos, db in sorted(plan.node_db.items(), key=lambda kv: kv[1]) if pos not in plan.keep]
    batch = 4
    for _ in range(rounds + 1):
        plan.output_db = plan.evaluator.sqnr(DeviceModel(*fp16_emulated(model, set(plan.keep))))
        if plan.output_db >= floor_db or not ranked:
            break
        for pos in ranked[:batch]:
            plan.keep[pos] = (f"FP16 output {plan.node_db[pos]:.1f} dB from FP32; kept to bring the model's "
                              f"FP16 output above {floor_db:g} dB")
        ranked, batch = ranked[batch:], batch * 2
    plan.floor_db = floor_db
    return len(plan.keep) != before


# samples on which the FP16 remainder's precision is measured
FP16_SAMPLES = 4


def fp16_keep_names(model, dataset, quiet: bool = False) -> list:
    """Names of the nodes of ``model`` (a float model) the FP16 plan made on ``dataset`` keeps FP32."""
    return _plan_names(prepare(model, "trt11"), dataset, quiet)


def _plan_names(m: onnx.ModelProto, dataset, quiet: bool) -> list:
    idx = GraphIndex.build(m)
    floats = [t for t in idx.dtypes if idx.is_float(t) and t not in idx.constants]
    cal = calibrate(m, dataset, [], floats, quiet=quiet)
    return list(fp16_plan(m, cal.extrema, first_feeds(dataset, FP16_SAMPLES), idx=idx).names(idx))


def fp16_model(model, dataset, quiet: bool = False, keep_names=None) -> onnx.ModelProto:
    """The FP16 model TensorRT runs for ``model``: the cast ``--target trt11`` applies (FP32 I/O;
    nodes kept FP32 where ``dataset`` shows FP16 would overflow or cost precision, or the nodes named
    ``keep_names`` when a plan was already made), at opset 19."""
    m = prepare(model, "trt11")
    keep = set(_plan_names(m, dataset, quiet) if keep_names is None else keep_names)
    return cast_float(m, np.float16, {i for i, n in enumerate(m.graph.node) if n.name in keep})
