"""Output-referred error of every quantization site, from one ONNX Runtime pass.

Noise measured on a tensor itself misses where it lands: a per-tensor scale that leaves a depthwise
conv's small input channels a few levels looks fine on the tensor (≈30 dB) and ruins the conv's output,
which rescales each channel on its own.  So each site is measured at the output of its consumer, after
what TensorRT fuses into it.

For every quantized weighted layer L (:mod:`qdq.placement`), its *fused group* is L and the pointwise
tail that follows it alone (bias/BatchNorm, ReLU/Clip/Sigmoid/…, SiLU, HardSwish and GELU written out
as several nodes; :func:`fused_tail`).  The augmented float model holds, beside the original graph,
three copies of each group reading the group's own FP32 inputs: with the activation input
fake-quantized (Q→DQ with the calibrated scale), with the INT8 weight, and with both.  Residual Add
shortcuts and pooling/Concat/Resize inputs that carry Q/DQ get a copy of their consumer with that
input fake-quantized.  Differences to the original are reduced inside the graph (sum of squares,
per-channel sums), so each sample returns a few numbers per site.  Per site:

* SQNR at the consumer's output = 10·log10(Σ y² / Σ (y_q − y)²), pooled over samples;
* *centred* SQNR: the same with each output channel's mean error removed: the noise left once bias
  correction (:mod:`qdq.bias_correction`) has taken out the shift;
* per layer with a weight, the mean error per output channel of the raw layer output with both
  inputs quantized, and with only the weight quantized: the two bias corrections;
* per *group* of activation sites (runs in graph order, ``groups``), the noise at the model's outputs
  with only that group quantized: a copy of the whole graph per group in the same session.  It tells
  how much of the local noise reaches the output (:mod:`qdq.mixed_precision`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .graph import GraphIndex
from .metrics import power_db
from .placement import Placement
from .progress import progress

POINTWISE = {"Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
             "Softplus", "Mish", "Gelu", "Erf", "BatchNormalization", "Identity"}
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
_TAIL_LIMIT = 8   # GELU written out is six nodes after the bias Add


def fused_tail(idx: GraphIndex, pos: int) -> tuple[list, str]:
    """The pointwise nodes TensorRT fuses after node ``pos`` (ids, in order) and the tensor leaving
    them: nodes reached from its output that are unary pointwise, or binary with every other input
    inside the region or constant, as long as exactly one tensor leaves the region."""
    start = idx.nodes[pos].output[0]
    if start in idx.outputs:
        return [], start
    region, inside = [], {start}
    queue = [p for p, _ in idx.consumers.get(start, [])]
    while queue:
        p = queue.pop(0)
        if p in region:
            continue
        n = idx.nodes[p]
        ok = (n.op_type in POINTWISE and n.input[0] in inside) or (
            n.op_type in BINARY and all(t in inside or idx.constant(t) is not None for t in n.input)
            and any(t in inside for t in n.input))
        if not ok or len(region) >= _TAIL_LIMIT:
            continue
        region.append(p)
        inside.update(n.output)
        queue += [c for o in n.output for c, _ in idx.consumers.get(o, [])]
    while True:   # shrink until exactly one tensor leaves the region
        exits = {t for t in inside if t in idx.outputs or any(c not in region for c, _ in idx.consumers.get(t, []))}
        if len(exits) == 1:
            out = exits.pop()
            return (sorted(region), out) if out != start else ([], start)
        if not region:
            return [], start
        region.pop()
        inside = {start} | {o for p in region for o in idx.nodes[p].output}


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


def _channel_axis(node) -> int:
    return 1 if node.op_type in ("Conv", "ConvTranspose") else -1


def analyze(float_model: onnx.ModelProto, idx: GraphIndex, plan: Placement, ranges: dict, feeds: list,
            quiet: bool = True, groups: int = 0) -> Analysis:
    """Measure every site of ``plan`` with ``ranges`` (tensor -> Range) on ``feeds`` (input dicts),
    and ``groups`` runs of its activation sites at the model's outputs."""
    from .calibrate import run_session, session_for
    from .rewrite import quantize_weight, safe_scale
    from .surgery import gs, import_graph

    g = gs()
    graph = import_graph(float_model)
    nodes = list(graph.nodes)
    tensors = graph.tensors()
    fq_cache, dq_cache, extra = {}, {}, []
    outputs = []               # Variables the session returns
    plans = []                 # (SiteError or ("bias", layer), names)

    def fq(t, src=None, tag=""):
        """Fake-quantized ``t`` (activation tensor name) with its calibrated scale; ``src`` is the
        tensor to read when it is a copy's version of ``t``."""
        key = (t, tag)
        if key not in fq_cache:
            scale, _ = safe_scale(ranges[t].amax, np.float32)
            s = g.Constant(f"{t}__s{tag}", scale.reshape(()))
            z = g.Constant(f"{t}__z{tag}", np.zeros((), np.int8))
            q, d = g.Variable(f"{t}__q{tag}", dtype=np.int8), g.Variable(f"{t}__fq{tag}", dtype=np.float32)
            extra.extend([g.Node("QuantizeLinear", f"{t}__Q{tag}", inputs=[src or tensors[t], s, z], outputs=[q]),
                          g.Node("DequantizeLinear", f"{t}__DQ{tag}", inputs=[q, s, z], outputs=[d])])
            fq_cache[key] = d
        return fq_cache[key]

    def dq(key):
        if key not in dq_cache:
            spec = plan.weights[key]
            w = np.asarray(tensors[spec.tensor].values)
            qw, scale, _ = quantize_weight(w, spec.axis, np.float32)
            d = g.Variable(f"{key}__dqw", dtype=np.float32)
            extra.append(g.Node("DequantizeLinear", f"{key}__DQw", attrs={"axis": spec.axis % w.ndim},
                                inputs=[g.Constant(f"{key}__qw", qw), g.Constant(f"{key}__ws", scale),
                                        g.Constant(f"{key}__wz", np.zeros(scale.shape, np.int8))], outputs=[d]))
            dq_cache[key] = d
        return dq_cache[key]

    def copy_group(ids, replace, tag, edges=()):
        """Copy nodes ``ids`` (in graph order) with inputs replaced (name -> tensor); on ``edges``
        ((node id, input index)) the input is fake-quantized as the copy computes it.  Returns
        name -> copied tensor."""
        mapping = dict(replace)
        for p in ids:
            n = nodes[p]
            ins = [mapping.get(t.name, t) for t in n.inputs]
            for i, t in enumerate(n.inputs):
                if (p, i) in edges:
                    ins[i] = fq(t.name) if ins[i] is t else fq(t.name, ins[i], tag)
            outs = [g.Variable(f"{t.name}__{tag}", dtype=t.dtype) for t in n.outputs]
            extra.append(g.Node(n.op, f"{n.name}__{tag}", attrs=dict(n.attrs), inputs=ins, outputs=outs, domain=n.domain))
            mapping.update({t.name: o for t, o in zip(n.outputs, outs)})
        return mapping

    def reduce(ref_name, dup, axis, rank, tag, with_signal):
        """In-graph sums: Σ d² and per-channel Σ d, d = dup − ref (and Σ ref² when asked)."""
        ref = tensors[ref_name]
        if idx.dtypes.get(ref_name) not in (None, onnx.TensorProto.FLOAT):   # e.g. an FP16 graph output: compare in FP32
            ref, dup = (_cast32(x, f"{tag}__{k}") for k, x in (("r", ref), ("q", dup)))
        d = g.Variable(f"{tag}__d", dtype=np.float32)
        sq = g.Variable(f"{tag}__dd", dtype=np.float32, shape=[])
        extra.append(g.Node("Sub", f"{tag}__Sub", inputs=[dup, ref], outputs=[d]))
        extra.append(g.Node("ReduceSumSquare", f"{tag}__SS", attrs={"keepdims": 0}, inputs=[d], outputs=[sq]))
        names = {"noise": sq}
        if rank is not None:
            axes = [a for a in range(rank) if a != axis % rank]
            ch = g.Variable(f"{tag}__dc", dtype=np.float32, shape=[f"{tag}_channels"])
            extra.append(g.Node("ReduceSum", f"{tag}__RS", attrs={"keepdims": 0},
                                inputs=[d, g.Constant(f"{tag}__axes", np.asarray(axes, np.int64))], outputs=[ch]))
            n = g.Variable(f"{tag}__n", dtype=np.int64, shape=[])
            extra.append(g.Node("Size", f"{tag}__Size", inputs=[d], outputs=[n]))
            names.update(chan=ch, size=n)
        if with_signal:
            s = g.Variable(f"{tag}__ss", dtype=np.float32, shape=[])
            extra.append(g.Node("ReduceSumSquare", f"{tag}__Sig", attrs={"keepdims": 0}, inputs=[ref], outputs=[s]))
            names["signal"] = s
        outputs.extend(names.values())
        return {k: v.name for k, v in names.items()}

    def _cast32(t, name):
        out = g.Variable(name, dtype=np.float32)
        extra.append(g.Node("Cast", name + "_Cast", attrs={"to": onnx.TensorProto.FLOAT}, inputs=[t], outputs=[out]))
        return out

    # every site, with the copies that measure it
    for layer in plan.quantized_layers:
        node = idx.nodes[layer]
        tail, exit_ = fused_tail(idx, layer)
        group = [layer] + tail
        rank = len(idx.shapes[exit_]) if idx.shapes.get(exit_) is not None else None
        raw = node.output[0]
        raw_rank = len(idx.shapes[raw]) if idx.shapes.get(raw) is not None else None
        axis = _channel_axis(node)
        act = [node.input[i] for i in (0, 1) if node.input[i] in plan.activations
               and (layer, i) in plan.activations[node.input[i]]]
        wkey = next((k for k, s in plan.weights.items() if (layer, 1) in s.consumers), None)
        variants = [("activation", t, {t: fq(t)}) for t in act]
        if wkey is not None:
            variants.append(("weight", wkey, {plan.weights[wkey].tensor: dq(wkey)}))
        both = {t: fq(t) for t in act}
        if wkey is not None:
            both[plan.weights[wkey].tensor] = dq(wkey)
        variants.append(("layer", None, both))
        for k, (kind, key, replace) in enumerate(variants):
            tag = f"L{layer}v{k}"
            mapping = copy_group(group, replace, tag)
            site = SiteError(kind, key if key is not None else idx.labels[layer], layer)
            names = reduce(exit_, mapping[exit_], axis, rank, tag, with_signal=(k == 0))
            plans.append((site, names, k == 0))
            if kind in ("layer", "weight") and raw_rank is not None and wkey is not None:   # channels exist only with a weight
                bias_names = reduce(raw, mapping[raw], axis, raw_rank, tag + "raw", False)
                plans.append(((kind, layer), bias_names, False))
    for t, users in plan.activations.items():
        for pos, i in users:
            if pos in plan.quantized_layers:
                continue
            n = idx.nodes[pos]
            kind = "residual" if n.op_type == "Add" else "passthrough"
            tail, exit_ = fused_tail(idx, pos) if kind == "residual" else ([], n.output[0])
            rank = len(idx.shapes[exit_]) if idx.shapes.get(exit_) is not None else None
            tag = f"S{pos}i{i}"
            mapping = copy_group([pos] + tail, {t: fq(t)}, tag)
            plans.append((SiteError(kind, t, pos), reduce(exit_, mapping[exit_], 1, rank, tag, True), True))

    # runs of activation sites in graph order, each alone at the model's outputs
    order = sorted(plan.activations, key=lambda t: min(p for p, _ in plan.activations[t]))
    runs = [order[k * len(order) // groups:(k + 1) * len(order) // groups] for k in range(groups)] if groups else []
    group_plans = []
    for j, run in enumerate(r for r in runs if r):
        edges = {(p, i) for t in run for p, i in plan.activations[t]}
        mapping = copy_group(_downstream(idx, {p for p, _ in edges}), {}, f"G{j}", edges)
        names = [reduce(o, mapping[o], 0, None, f"G{j}o{k}", True) for k, o in enumerate(idx.outputs)
                 if o in mapping and idx.is_float(o)]
        group_plans.append((run, SiteError("group", f"group {j}", -1), names))
    graph.nodes += extra
    graph.outputs += outputs
    graph.toposort()
    aug = g.export_onnx(graph, do_type_check=False)
    aug.ir_version = float_model.ir_version
    sess = session_for(aug, emulate=False)   # FP32 inside; its own roundings are explicit
    result = Analysis()
    chan_sum, chan_n = {}, {}
    with progress("analysing", len(feeds), quiet) as advance:
        for k, feed in enumerate(feeds):
            out = run_session(sess, feed, f"sample {k}")
            for site, names, has_signal in plans:
                key = id(site) if not isinstance(site, tuple) else site
                if "chan" in names:
                    c = out[names["chan"]].astype(np.float64)
                    chan_sum[key] = chan_sum.get(key, 0.0) + c
                    chan_n[key] = chan_n.get(key, 0) + int(out[names["size"]]) // max(c.size, 1)
                if isinstance(site, tuple):
                    continue
                site.noise += float(out[names["noise"]])
                if has_signal:
                    site.signal += float(out[names["signal"]])
            for _, site, names in group_plans:
                for n in names:
                    site.noise += float(out[n["noise"]])
                    site.signal += float(out[n["signal"]])
            result.samples += 1
            advance()
    # sites of one layer share its output's signal (measured once, on the first copy)
    by_layer_signal = {}
    for site, _, has_signal in plans:
        if not isinstance(site, tuple) and has_signal and site.kind not in ("residual", "passthrough"):
            by_layer_signal[site.consumer] = site.signal
    for site, names, _ in plans:
        if isinstance(site, tuple):
            kind, layer = site
            if site in chan_sum and chan_n.get(site):
                (result.bias if kind == "layer" else result.weight_bias)[layer] = chan_sum[site] / chan_n[site]
            continue
        if site.kind not in ("residual", "passthrough"):
            site.signal = by_layer_signal.get(site.consumer, site.signal)
        mean = chan_sum[id(site)] / chan_n[id(site)] if id(site) in chan_sum and chan_n.get(id(site)) else None
        site.centred = site.noise - (float((mean ** 2).sum()) * chan_n[id(site)] if mean is not None else 0.0)
        site.centred = max(site.centred, 0.0)
        if site.kind == "layer":
            result.layers[site.consumer] = site
        else:
            result.sites.append(site)
    result.groups = [(run, site) for run, site, _ in group_plans]
    return result
