"""Output-referred error of every quantization site, from one ONNX Runtime pass.

Noise measured on a tensor itself misses where it lands: a per-tensor scale that leaves a depthwise
conv's small input channels a few levels looks fine on the tensor and ruins the conv's output,
which rescales each channel on its own.  So each site is measured at the output of its consumer, after
what TensorRT fuses into it.

For every quantized weighted layer L (:mod:`qdq.graph.placement`), its *fused group* is L and the pointwise
tail that follows it alone (bias/BatchNorm, ReLU/Clip/Sigmoid/…, SiLU, HardSwish and GELU written out
as several nodes; :func:`qdq.graph.placement.fused_tail`).  The augmented float model holds, beside the original graph,
three copies of each group reading the group's own FP32 inputs: with the activation input
fake-quantized (Q→DQ with the calibrated scale), with the INT8 weight, and with both.  Residual Add
shortcuts and pooling/Concat/Resize inputs that carry Q/DQ get a copy of their consumer with that
input fake-quantized.  Differences to the original are reduced inside the graph (sum of squares,
per-channel sums), so each sample returns a few numbers per site.  Per site:

* SQNR at the consumer's output = 10·log10(Σ y² / Σ (y_q − y)²), pooled over samples;
* *centred* SQNR: the same with each output channel's mean error removed: the noise left once bias
  correction (:mod:`qdq.graph.bias_correction`) has taken out the shift;
* per layer with a weight, the mean error per output channel of the raw layer output with both
  inputs quantized, and with only the weight quantized: the two bias corrections;
* per *group* of activation sites (runs in graph order, ``groups``), the noise at the model's outputs
  with only that group quantized (and centred: each output channel's mean error removed, the shift a
  bias correction takes out): a copy of the whole graph per group in the same session.  It tells
  how much of the local noise reaches the output (:mod:`qdq.measure.mixed_precision`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..calib.session import run_session, session_for
from ..errors import QdqError
from ..graph.index import GraphIndex
from ..graph.placement import Placement, fused_tail
from ..graph.rewrite import safe_scale, weight_codes
from ..graph.surgery import export_lent, gs, import_graph, taken_names
from ..modelio import fresh_name
from ..progress import progress
from .metrics import power_db


@dataclass
class SiteError:
    """One quantization site measured at its consumer's output (sums over all samples)."""

    kind: str                # activation | weight | residual | passthrough
    tensor: str              # activation tensor, or weight key
    consumer: int            # node id of the layer (or Add, pool, Concat) it feeds
    signal: float = 0.0      # Σ y² of the consumer's output
    noise: float = 0.0       # Σ (y_q − y)²
    centred: float = 0.0     # noise with each channel's mean error removed

    @property
    def sqnr_db(self) -> float:
        return power_db(self.signal, self.noise)

    @property
    def centred_db(self) -> float:
        return power_db(self.signal, self.centred)


@dataclass
class Analysis:
    sites: list = field(default_factory=list)       # SiteError
    layers: dict = field(default_factory=dict)      # layer id -> SiteError with input and weight quantized
    bias: dict = field(default_factory=dict)        # layer id -> mean error per output channel (raw output)
    weight_bias: dict = field(default_factory=dict)  # the same with only the weight quantized
    groups: list = field(default_factory=list)      # [(activation tensors, SiteError at the model outputs)]
    samples: int = 0

    def layer_sites(self, layer: int) -> list:
        return [s for s in self.sites if s.consumer == layer]


def _downstream(idx: GraphIndex, start: set) -> list:
    """Ids of the nodes in ``start`` and of every node that depends on them, in graph order."""
    hit = set(start)
    for p in range(min(start, default=0), len(idx.nodes)):
        if p in hit or any(idx.producer.get(t) in hit for t in idx.nodes[p].input if t):
            hit.add(p)
    return sorted(hit)


class _Augmented:
    """Builds the augmented graph: fake-quantized copies of node groups beside the original, and
    in-graph reductions of their differences, each a graph output."""

    def __init__(self, idx: GraphIndex, plan: Placement, ranges: dict):
        self.idx, self.plan, self.ranges = idx, plan, ranges
        self.graph = import_graph(idx)
        self.nodes, self.tensors = list(self.graph.nodes), self.graph.tensors()
        self.extra, self.outputs = [], []
        self._fq, self._dq = {}, {}
        self.taken = taken_names(self.graph)

    def _n(self, base: str) -> str:
        """A name no tensor or node of the model has (a model may already use ``x__q``)."""
        return fresh_name(base, self.taken)

    def fq(self, t: str, src=None, tag: str = ""):
        """Fake-quantized activation ``t`` with its calibrated scale; ``src``: a copy's version of ``t``."""
        g = gs()
        if (t, tag) not in self._fq:
            scale, _ = safe_scale(self.ranges[t].amax, np.float32)
            s, z = g.Constant(self._n(f"{t}__s{tag}"), scale.reshape(())), g.Constant(self._n(f"{t}__z{tag}"), np.zeros((), np.int8))
            q, d = g.Variable(self._n(f"{t}__q{tag}"), dtype=np.int8), g.Variable(self._n(f"{t}__fq{tag}"), dtype=np.float32)
            self.extra += [g.Node("QuantizeLinear", self._n(f"{t}__Q{tag}"), inputs=[src or self.tensors[t], s, z], outputs=[q]),
                           g.Node("DequantizeLinear", self._n(f"{t}__DQ{tag}"), inputs=[q, s, z], outputs=[d])]
            self._fq[(t, tag)] = d
        return self._fq[(t, tag)]

    def dq(self, key: str):
        """The INT8 weight of ``plan.weights[key]``, dequantized (its codes those every candidate of the
        model uses: ``idx.weight_codes``)."""
        g = gs()
        if key not in self._dq:
            spec = self.plan.weights[key]
            qw, scale, _ = weight_codes(self.idx.weight_codes, spec, self.tensors[spec.tensor])
            d = g.Variable(self._n(f"{key}__dqw"), dtype=np.float32)
            self.extra.append(g.Node("DequantizeLinear", self._n(f"{key}__DQw"), attrs={"axis": spec.axis % qw.ndim},
                                     inputs=[g.Constant(self._n(f"{key}__qw"), qw), g.Constant(self._n(f"{key}__ws"), scale),
                                             g.Constant(self._n(f"{key}__wz"), np.zeros(scale.shape, np.int8))], outputs=[d]))
            self._dq[key] = d
        return self._dq[key]

    def copy(self, ids, replace: dict, tag: str, edges=()) -> dict:
        """Copy nodes ``ids`` (graph order) with inputs replaced (name → tensor); on ``edges``
        ((node id, input index)) the input is fake-quantized as the copy computes it.  Returns
        name → copied tensor."""
        g = gs()
        mapping = dict(replace)
        for p in ids:
            n = self.nodes[p]
            ins = [mapping.get(t.name, t) for t in n.inputs]
            for i, t in enumerate(n.inputs):
                if (p, i) in edges:
                    ins[i] = self.fq(t.name) if ins[i] is t else self.fq(t.name, ins[i], tag)
            outs = [g.Variable(self._n(f"{t.name}__{tag}"), dtype=t.dtype) for t in n.outputs]
            self.extra.append(g.Node(n.op, self._n(f"{n.name}__{tag}"), attrs=dict(n.attrs), inputs=ins, outputs=outs,
                                     domain=n.domain))
            mapping.update({t.name: o for t, o in zip(n.outputs, outs)})
        return mapping

    def reduce(self, ref_name: str, dup, axis: int, rank, tag: str, with_signal: bool) -> dict:
        """In-graph sums: Σ d² and per-channel Σ d, d = dup − ref (and Σ ref² when asked); returns the
        output names by key (noise, chan, size, signal)."""
        g = gs()
        ref = self.tensors[ref_name]
        if self.idx.dtypes.get(ref_name) not in (None, onnx.TensorProto.FLOAT):   # e.g. an FP16 output
            ref, dup = (self._cast32(x, f"{tag}__{k}") for k, x in (("r", ref), ("q", dup)))
        d = g.Variable(self._n(f"{tag}__d"), dtype=np.float32)
        sq = g.Variable(self._n(f"{tag}__dd"), dtype=np.float32, shape=[])
        self.extra += [g.Node("Sub", self._n(f"{tag}__Sub"), inputs=[dup, ref], outputs=[d]),
                       g.Node("ReduceSumSquare", self._n(f"{tag}__SS"), attrs={"keepdims": 0}, inputs=[d], outputs=[sq])]
        names = {"noise": sq}
        if rank is not None:
            axes = g.Constant(self._n(f"{tag}__axes"), np.asarray([a for a in range(rank) if a != axis % rank], np.int64))
            ch = g.Variable(self._n(f"{tag}__dc"), dtype=np.float32, shape=[f"{tag}_channels"])
            n = g.Variable(self._n(f"{tag}__n"), dtype=np.int64, shape=[])
            self.extra += [g.Node("ReduceSum", self._n(f"{tag}__RS"), attrs={"keepdims": 0}, inputs=[d, axes], outputs=[ch]),
                           g.Node("Size", self._n(f"{tag}__Size"), inputs=[d], outputs=[n])]
            names.update(chan=ch, size=n)
        if with_signal:
            sig = g.Variable(self._n(f"{tag}__ss"), dtype=np.float32, shape=[])
            self.extra.append(g.Node("ReduceSumSquare", self._n(f"{tag}__Sig"), attrs={"keepdims": 0}, inputs=[ref], outputs=[sig]))
            names["signal"] = sig
        self.outputs.extend(names.values())
        return {k: v.name for k, v in names.items()}

    def _cast32(self, t, name):
        out = gs().Variable(self._n(name), dtype=np.float32)
        self.extra.append(gs().Node("Cast", self._n(name + "_Cast"), attrs={"to": onnx.TensorProto.FLOAT}, inputs=[t], outputs=[out]))
        return out

    def rank(self, tensor: str):
        shape = self.idx.shapes.get(tensor)
        return len(shape) if shape is not None else None

    def channel_axis(self, tensor: str, prefer: int | None = None):
        """The channel axis of ``tensor``: ``prefer`` (the layer's own: 1 for Conv, -1 for MatMul) where
        its size is fixed, else axis 1 where that is (NCHW, NCL), else the last (tokens × hidden), else
        None (no per-channel sums: an axis of varying size, such as a token axis, has no channels)."""
        shape = self.idx.shapes.get(tensor)
        if not shape or len(shape) < 2:
            return None
        fixed = [a for a in ((prefer,) if prefer is not None else ()) + (1, -1) if isinstance(shape[a], int)]
        return fixed[0] if fixed else None

    def session(self, template: onnx.ModelProto):
        self.graph.nodes += self.extra
        self.graph.outputs += self.outputs
        self.graph.toposort()
        aug, lent = export_lent(self.graph, template)
        return session_for(aug, lent=lent)   # FP32 inside; its own roundings are explicit


def _layer_plans(aug: _Augmented) -> list:
    """For every quantized layer, copies of its fused group with its activation input(s), its weight,
    and both quantized: [(SiteError or ("layer"|"weight", layer id), output names, has signal)]."""
    idx, plan, plans = aug.idx, aug.plan, []
    for layer in plan.quantized_layers:
        node = idx.nodes[layer]
        tail, exit_ = fused_tail(idx, layer)
        axis = 1 if node.op_type in ("Conv", "ConvTranspose") else -1
        act = [node.input[i] for i in (0, 1) if node.input[i] in plan.activations
               and (layer, i) in plan.activations[node.input[i]]]
        wkey = next((k for k, s in plan.weights.items() if (layer, 1) in s.consumers), None)
        variants = [("activation", t, {t: aug.fq(t)}) for t in act]
        both = {t: aug.fq(t) for t in act}
        if wkey is not None:
            variants.append(("weight", wkey, {plan.weights[wkey].tensor: aug.dq(wkey)}))
            both[plan.weights[wkey].tensor] = aug.dq(wkey)
        variants.append(("layer", None, both))
        for k, (kind, key, replace) in enumerate(variants):
            tag = f"L{layer}v{k}"
            mapping = aug.copy([layer] + tail, replace, tag)
            site = SiteError(kind, key if key is not None else idx.labels[layer], layer)
            at = aug.channel_axis(exit_, axis)
            plans.append((site, aug.reduce(exit_, mapping[exit_], at or axis, aug.rank(exit_) if at else None, tag, k == 0),
                          k == 0))
            raw, raw_rank = node.output[0], aug.rank(node.output[0])
            if kind in ("layer", "weight") and raw_rank is not None and wkey is not None:   # channels need a weight
                plans.append(((kind, layer), aug.reduce(raw, mapping[raw], axis, raw_rank, tag + "raw", False), False))
    return plans


def _other_plans(aug: _Augmented) -> list:
    """Residual Add shortcuts and pooling/Concat/Resize inputs with Q/DQ: a copy of their consumer
    (with its fused tail for an Add) with that input fake-quantized."""
    plans = []
    for t, users in aug.plan.activations.items():
        for pos, i in users:
            if pos in aug.plan.quantized_layers:
                continue
            kind = "residual" if aug.idx.nodes[pos].op_type == "Add" else "passthrough"
            tail, exit_ = fused_tail(aug.idx, pos) if kind == "residual" else ([], aug.idx.nodes[pos].output[0])
            mapping = aug.copy([pos] + tail, {t: aug.fq(t)}, f"S{pos}i{i}")
            axis = aug.channel_axis(exit_)
            plans.append((SiteError(kind, t, pos), aug.reduce(exit_, mapping[exit_], axis or 1,
                                                              aug.rank(exit_) if axis else None, f"S{pos}i{i}", True), True))
    return plans


def _group_plans(aug: _Augmented, groups) -> list:
    """``groups`` runs of activation sites in graph order (or the given runs: lists of tensors), each
    alone at the model's outputs: a copy of everything downstream of the run, with the run's inputs
    fake-quantized.  Returns [(run, [(SiteError of one output, its reduction names)])]; an output of
    known rank is reduced per channel (axis 1) too, for its centred noise."""
    plan, idx = aug.plan, aug.idx
    order = sorted(plan.activations, key=lambda t: min(p for p, _ in plan.activations[t]))
    runs = groups if not isinstance(groups, int) else \
        [order[k * len(order) // groups:(k + 1) * len(order) // groups] for k in range(groups)]
    out = []
    for j, run in enumerate(r for r in runs if r):
        edges = {(p, i) for t in run for p, i in plan.activations[t]}
        mapping = aug.copy(_downstream(idx, {p for p, _ in edges}), {}, f"G{j}", edges)
        parts = []
        for k, o in enumerate(idx.outputs):
            if o in mapping and idx.is_float(o):
                axis = aug.channel_axis(o)
                parts.append((SiteError("group", f"group {j} {o}", -1),
                              aug.reduce(o, mapping[o], axis or 1, aug.rank(o) if axis else None, f"G{j}o{k}", True)))
        out.append((run, parts))
    return out


def analyze(float_model: onnx.ModelProto, idx: GraphIndex, plan: Placement, ranges: dict, feeds: list,
            quiet: bool = True, groups=0) -> Analysis:
    """Measure every site of ``plan`` with ``ranges`` (tensor -> Range) on ``feeds`` (input dicts),
    and ``groups`` runs of its activation sites at the model's outputs (a count of equal runs in graph
    order, or the runs themselves: lists of tensors); ``idx`` indexes ``float_model``."""
    aug = _Augmented(idx, plan, ranges)
    group_plans = _group_plans(aug, groups)
    plans = _layer_plans(aug) + _other_plans(aug) + [(site, names, True) for _, parts in group_plans
                                                     for site, names in parts]
    sess = aug.session(float_model)
    chan_sum, chan_n = {}, {}
    result = Analysis()
    with progress("analysing", len(feeds), quiet) as advance:
        for k, feed in enumerate(feeds):
            _accumulate(run_session(sess, feed, f"sample {k}"), plans, chan_sum, chan_n)
            result.samples += 1
            advance()
    _finish(result, plans, chan_sum, chan_n)
    for j, (run, parts) in enumerate(group_plans):   # a group's figures: its outputs' sums
        result.groups.append((run, SiteError("group", f"group {j}", -1, sum(p.signal for p, _ in parts),
                                             sum(p.noise for p, _ in parts), sum(p.centred for p, _ in parts))))
    return result


def _accumulate(out: dict, plans: list, chan_sum: dict, chan_n: dict) -> None:
    """Add one sample's reductions to the sites and the per-channel error sums."""
    for site, names, has_signal in plans:
        key = id(site) if not isinstance(site, tuple) else site
        if "chan" in names:
            c = out[names["chan"]].astype(np.float64)
            if np.shape(chan_sum.get(key, 0.0)) not in ((), c.shape):
                raise QdqError(f"the channels of {names['chan']!r} change size between samples; please report it with "
                               "the model")
            chan_sum[key] = chan_sum.get(key, 0.0) + c
            chan_n[key] = chan_n.get(key, 0) + int(out[names["size"]]) // max(c.size, 1)
        if isinstance(site, tuple):
            continue
        site.noise += float(out[names["noise"]])
        if has_signal:
            site.signal += float(out[names["signal"]])


def _finish(result: Analysis, plans: list, chan_sum: dict, chan_n: dict) -> None:
    """Sites of one layer share its output's signal (measured once, on the first copy); mean errors per
    channel become the bias corrections and the centred noise."""
    by_layer_signal = {site.consumer: site.signal for site, _, has_signal in plans if not isinstance(site, tuple)
                       and has_signal and site.kind not in ("residual", "passthrough", "group")}
    for site, _, _ in plans:
        if isinstance(site, tuple):
            kind, layer = site
            if site in chan_sum and chan_n.get(site):
                (result.bias if kind == "layer" else result.weight_bias)[layer] = chan_sum[site] / chan_n[site]
            continue
        if site.kind not in ("residual", "passthrough", "group"):
            site.signal = by_layer_signal.get(site.consumer, site.signal)
        mean = chan_sum[id(site)] / chan_n[id(site)] if id(site) in chan_sum and chan_n.get(id(site)) else None
        site.centred = max(site.noise - (float((mean ** 2).sum()) * chan_n[id(site)] if mean is not None else 0.0), 0.0)
        if site.kind == "layer":
            result.layers[site.consumer] = site
        else:
            result.sites.append(site)
