"""Explain the INT8 error: the quantized model against the float (FP32) or FP16 model, on the same
inputs, per graph output and tensor by tensor.

* Outputs: SQNR, cosine, max/mean |error|, bias (shift) and gain (scale), top-1/top-5 agreement when
  an output looks like class scores (rank 2, ≥ 10 columns).
* Layer by layer (``layerwise``): for every tensor that carries an activation Q/DQ, the *accumulated*
  SQNR (quantized model's tensor vs the reference model's), the *local* SQNR (the reference tensor
  fake-quantized with that Q/DQ's scale, nothing else quantized), the SQNR that Q/DQ alone leaves *at
  its consumer's output* (after the bias and activation TensorRT fuses; :mod:`qdq.analysis`), the share
  of values clipped and of the 256 INT8 levels used by the values reaching that Q in the quantized
  model.  Tensors are ranked by the consumer-output figure: noise on a depthwise conv's input looks
  small on the tensor and large where it lands.
* Budget: output SQNR with only the weights quantized (activation Q/DQ bypassed), only the
  activations (weights float, taken from the float model), and both.

Tensors are matched by name: the quantized model must come from the float model by inserting Q/DQ
(as ``qdq quantize`` and most PTQ tools do), so node and tensor names are shared.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from .calibrate import run_session, session_for
from .data import Dataset, Preprocess, batches, model_inputs
from .errors import QdqError
from .graph import GraphIndex
from .inspection import QdqSite, qdq_sites
from .placement import WEIGHTED
from .metrics import ErrorAccumulator
from .modelio import load_model
from .pipeline import TARGETS, fp16_model, prepare
from .progress import progress
from .ranges import QMAX
from .stats import TensorStats


@dataclass
class OutputReport:
    name: str
    metrics: dict
    top1: float | None = None
    top5: float | None = None
    fp16_vs_fp32: dict | None = None


@dataclass
class LayerReport:
    tensor: str
    consumers: list
    position: int
    amax: float
    scale: float
    accumulated_sqnr_db: float
    local_sqnr_db: float
    clipped: float
    levels_used: float
    output_sqnr_db: float = math.inf   # what this Q/DQ alone leaves at its consumer's output (worst consumer)
    hist: list = field(default_factory=list, repr=False)  # |x| counts of the reference tensor, 2048 bins over [0, max]
    bin_width: float = 0.0


@dataclass
class CompareResult:
    reference: str
    samples: int
    outputs: list
    layers: list | None = None
    threshold_db: float = 20.0
    first_below: str | None = None
    ranked: list = field(default_factory=list)      # tensors, most SQNR removed by their own Q/DQ first
    budget: dict | None = None                     # {"weights_only": {output: dB}, ...}

    def to_dict(self, histograms: bool = False) -> dict:
        d = asdict(self)
        if d["layers"] and not histograms:
            for layer in d["layers"]:
                layer.pop("hist", None)
        return _finite(d)


def _finite(x):
    """JSON has no Infinity or NaN: they become null.  A dB figure that is +inf (outputs identical)
    or −inf (NaN/Inf in the output, or an all-zero reference) gets a ``<key>_note`` saying which."""
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            out[k] = _finite(v)
            if isinstance(v, float) and math.isinf(v) and k.endswith("_db"):
                out[f"{k}_note"] = "identical" if v > 0 else "non-finite values or an all-zero reference"
        return out
    if isinstance(x, list):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _bypass(model: onnx.ModelProto, replace: dict) -> onnx.ModelProto:
    """Copy of ``model`` where each DequantizeLinear whose output is named in ``replace`` becomes an
    Identity of ``replace[name]`` (a tensor name, or an array for a constant); the Q/DQ left without
    readers are dropped.  An evaluation model: built through onnx-graphsurgeon, not written."""
    from .surgery import export_graph, gs, import_graph

    g = gs()
    graph = import_graph(model)
    tensors = graph.tensors()
    for node in graph.nodes:
        if node.op == "DequantizeLinear" and node.outputs[0].name in replace:
            src = replace[node.outputs[0].name]
            src = tensors[src] if isinstance(src, str) else g.Constant(f"{node.outputs[0].name}_float", np.asarray(src))
            node.op, node.attrs = "Identity", {}
            node.inputs.clear()
            node.inputs.append(src)
    return export_graph(graph, model, "Q/DQ bypass", check=False)


def weights_only(qmodel: onnx.ModelProto) -> onnx.ModelProto:
    """``qmodel`` with every activation Q/DQ bypassed: only the weights stay quantized."""
    idx = GraphIndex.build(qmodel, infer_shapes=False)
    replace = {}
    for s in qdq_sites(qmodel):
        for dq, _ in idx.consumer_nodes(idx.nodes[s.position].output[0]):
            if dq.op_type == "DequantizeLinear":
                replace[dq.output[0]] = s.tensor
    return _bypass(qmodel, replace)


def activations_only(qmodel: onnx.ModelProto, fmodel: onnx.ModelProto) -> onnx.ModelProto:
    """``qmodel`` with each weight DequantizeLinear replaced by the float model's original weight
    (found through the consuming node, which keeps its name)."""
    qidx = GraphIndex.build(qmodel, infer_shapes=False)
    fnodes = {n.name: n for n in fmodel.graph.node}
    fidx = GraphIndex.build(fmodel, infer_shapes=False)
    replace = {}
    for n in qmodel.graph.node:
        if n.op_type != "DequantizeLinear" or qidx.constant(n.input[0]) is None:
            continue
        for c, k in qidx.consumer_nodes(n.output[0]):
            original = fnodes.get(c.name)
            if original is None or k >= len(original.input):
                continue
            w = fidx.constant(original.input[k])
            if w is not None:
                replace[n.output[0]] = w
    return _bypass(qmodel, replace)


def _as_quantized(fmodel: onnx.ModelProto, qmodel: onnx.ModelProto) -> onnx.ModelProto:
    """The float model as qdq prepared it before writing ``qmodel`` (BatchNorm folded into the
    Conv weights, same node names), when ``qmodel`` is a qdq file; else ``fmodel`` as given."""
    meta = {p.key: p.value for p in qmodel.metadata_props}
    if "qdq_version" not in meta:
        return fmodel
    return prepare(fmodel, meta.get("qdq_target") if meta.get("qdq_target") in TARGETS else "trt10")


class _LayerAcc:
    def __init__(self, site: QdqSite):
        self.site = site
        self.acc = ErrorAccumulator()
        self.local = ErrorAccumulator()
        self.clipped = 0
        self.count = 0
        self.levels = np.zeros(256, dtype=bool)
        self.stats = TensorStats(site.tensor)

    def add(self, ref: np.ndarray, q: np.ndarray) -> None:
        s = self.site.scale
        ref64, q64 = ref.astype(np.float64), q.astype(np.float64)
        self.acc.add(ref64, q64)
        # local: this tensor's own Q/DQ on the reference values, nothing else quantized
        self.local.add(ref64, np.clip(np.rint(ref64 / s), -QMAX - 1, QMAX) * s)
        codes = np.rint(q64 / s)
        self.clipped += int(((codes > QMAX) | (codes < -QMAX - 1)).sum())
        self.count += codes.size
        self.levels[np.clip(codes, -QMAX - 1, QMAX).astype(np.int64) + QMAX + 1] = True
        self.stats.update(ref.astype(np.float32))

    def report(self) -> LayerReport:
        s = self.site
        counts, width = self.stats.histogram()
        return LayerReport(s.tensor, s.consumers, s.position, s.amax, s.scale, self.acc.sqnr_db, self.local.sqnr_db,
                           self.clipped / max(self.count, 1), float(self.levels.mean()),
                           hist=[round(c) for c in counts], bin_width=width)


def compare(float_model, quant_model, data, *, reference: str = "fp32", layerwise: bool = False,
            threshold_db: float = 20.0, budget: bool = True, preprocess: Preprocess | None = None,
            limit: int | None = None, batch_size: int = 1, quiet: bool = False) -> CompareResult:
    """Run float/FP16 reference and quantized models on ``data`` and measure where they differ."""
    if reference not in ("fp32", "fp16"):
        raise QdqError(f"unknown reference {reference!r}; choose fp32 or fp16")
    fmodel = float_model if isinstance(float_model, onnx.ModelProto) else load_model(float_model)
    qmodel = quant_model if isinstance(quant_model, onnx.ModelProto) else load_model(quant_model)
    f_out = [o.name for o in fmodel.graph.output]
    q_out = [o.name for o in qmodel.graph.output]
    if f_out != q_out:
        raise QdqError(f"the models' outputs differ ({f_out} vs {q_out}); compare a model with its own Q/DQ version")
    inputs = model_inputs(fmodel)
    dataset = Dataset(data, inputs, preprocess or Preprocess(), limit=limit)
    sites = qdq_sites(qmodel) if layerwise else []
    if layerwise and not sites:
        raise QdqError("the quantized model has no activation QuantizeLinear to compare layer by layer")
    known = {o for n in fmodel.graph.node for o in n.output} | {i.name for i in inputs}
    sites = [s for s in sites if s.tensor in known]
    tensors = [s.tensor for s in sites]
    in_names = {i.name for i in inputs}

    runs = {}
    ref_model = fp16_model(fmodel, dataset, quiet) if reference == "fp16" else fmodel
    runs["ref"] = session_for(ref_model, extra_outputs=[t for t in tensors if t not in in_names])
    runs["quant"] = session_for(qmodel, extra_outputs=[t for t in tensors if t not in in_names])
    if reference == "fp16":
        runs["fp32"] = session_for(fmodel)
    if budget:
        runs["weights_only"] = session_for(weights_only(qmodel))
        runs["activations_only"] = session_for(activations_only(qmodel, _as_quantized(fmodel, qmodel)))

    out_acc = {o: ErrorAccumulator() for o in f_out}
    fp16_acc = {o: ErrorAccumulator() for o in f_out} if reference == "fp16" else None
    budget_acc = {k: {o: ErrorAccumulator() for o in f_out} for k in ("weights_only", "activations_only")} if budget else None
    top = {o: [0, 0, 0] for o in f_out}  # top-1 hits, top-5 hits, rows
    layers = {s.tensor: _LayerAcc(s) for s in sites}
    samples = 0
    with progress("comparing", dataset.count(), quiet) as advance:
        for sources, feed in batches(dataset, batch_size):
            src = sources[0]
            res = {k: run_session(sess, feed, src) for k, sess in runs.items()}
            for k in ("ref", "quant"):
                res[k].update(feed)
            for o in f_out:
                ref, q = res["ref"][o], res["quant"][o]
                out_acc[o].add(ref, q)
                if fp16_acc is not None:
                    fp16_acc[o].add(res["fp32"][o], ref)
                if budget_acc is not None:
                    for k in budget_acc:
                        budget_acc[k][o].add(ref, res[k][o])
                if ref.ndim == 2 and ref.shape[1] >= 10:
                    r1 = ref.argmax(1)
                    top5 = np.argsort(-q.astype(np.float64), axis=1)[:, :5]
                    top[o][0] += int((q.argmax(1) == r1).sum())
                    top[o][1] += int((top5 == r1[:, None]).any(1).sum())
                    top[o][2] += ref.shape[0]
            for t, la in layers.items():
                la.add(res["ref"][t], res["quant"][t])
            samples += len(sources)
            advance(len(sources))

    outputs = []
    for o in f_out:
        rep = OutputReport(o, out_acc[o].to_dict())
        if top[o][2]:
            rep.top1, rep.top5 = top[o][0] / top[o][2], top[o][1] / top[o][2]
        if fp16_acc is not None:
            rep.fp16_vs_fp32 = fp16_acc[o].to_dict()
        outputs.append(rep)
    result = CompareResult(reference, samples, outputs, threshold_db=threshold_db)
    if budget_acc is not None:
        result.budget = {k: {o: a.sqnr_db for o, a in v.items()} for k, v in budget_acc.items()}
        result.budget["both"] = {o: out_acc[o].sqnr_db for o in f_out}
    if layerwise:
        reports = sorted((la.report() for la in layers.values()), key=lambda r: r.position)
        at_output = _output_referred(fmodel, qmodel, sites, dataset)
        for r in reports:
            r.output_sqnr_db = at_output.get(r.tensor, math.inf)
        result.layers = reports
        result.first_below = next((r.tensor for r in reports if r.accumulated_sqnr_db < threshold_db), None)
        result.ranked = [r.tensor for r in sorted(reports, key=lambda r: (r.output_sqnr_db, r.local_sqnr_db))]
    return result


def _output_referred(fmodel: onnx.ModelProto, qmodel: onnx.ModelProto, sites: list, dataset, samples: int = 8) -> dict:
    """tensor -> SQNR that its Q/DQ alone leaves at its consumer's output (worst consumer), from
    :mod:`qdq.analysis` on the float model with the file's own Q/DQ sites and scales.  Consumers are
    found by name: the float model as qdq prepared it shares the file's node names."""
    from .analysis import analyze
    from .data import first_feeds
    from .placement import Placement
    from .ranges import Range

    fm = _as_quantized(fmodel, qmodel)
    idx = GraphIndex.build(fm)
    by_name = {n.name: i for i, n in enumerate(idx.nodes) if n.name}
    qidx = GraphIndex.build(qmodel, infer_shapes=False)
    plan, ranges = Placement(), {}
    for s in sites:
        for dq, _ in qidx.consumer_nodes(qidx.nodes[s.position].output[0]):
            for c, i in qidx.consumer_nodes(dq.output[0]):
                pos = by_name.get(c.name)
                if pos is None or i >= len(idx.nodes[pos].input) or idx.nodes[pos].input[i] != s.tensor:
                    continue
                plan.add(s.tensor, pos, i, "file")
                if idx.nodes[pos].op_type in WEIGHTED and pos not in plan.quantized_layers:
                    plan.quantized_layers.append(pos)
        if s.tensor in plan.activations:
            ranges[s.tensor] = Range(s.amax, "file", None)
    if not plan.activations:
        return {}
    a = analyze(fm, idx, plan, ranges, first_feeds(dataset, samples))
    out = {}
    for site in a.sites:
        out[site.tensor] = min(out.get(site.tensor, math.inf), site.sqnr_db)
    return out
