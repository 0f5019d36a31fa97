"""Explain the INT8 error: the quantized model against the float (FP32) or FP16 model, on the same
inputs, per graph output and tensor by tensor.

* Outputs: SQNR, cosine, max/mean |error|, bias (shift) and gain (scale), top-1/top-5 agreement when
  an output looks like class scores (rank 2, ≥ 10 columns).
* Layer by layer (``layerwise``): for every tensor that carries an activation Q/DQ, the *accumulated*
  SQNR (the quantized model's tensor after its own Q/DQ, as its consumers read it, vs the reference
  model's tensor: bounded by the noise of every Q/DQ up to there, its own included), the *local* SQNR (the reference tensor
  fake-quantized with that Q/DQ's scale, nothing else quantized), the SQNR that Q/DQ alone leaves *at
  its consumer's output* (after the bias and activation TensorRT fuses; :mod:`qdq.measure.analysis`), the share
  of values clipped and of the 256 INT8 levels used by the values reaching that Q in the quantized
  model, and the amax calibration (``mse``, :mod:`qdq.calib.ranges`) would give on the same data.
  Tensors are ranked by the consumer-output figure: noise on a depthwise conv's input looks small on
  the tensor and large where it lands.  :mod:`qdq.measure.diagnosis` turns these into causes.
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

from ..calib.data import Dataset, Feeds, Preprocess, batches, first_feeds, model_inputs
from ..calib.ranges import QMAX, Range, compute_range, fake_quant
from ..calib.polygraphy_io import SavedRun
from ..calib.session import run_session, session_for, shared_weights
from ..calib.stats import TensorStats
from ..errors import QdqError
from ..graph.bypass import activations_only, weights_only, without_bias_correction
from ..graph.index import GraphIndex
from ..graph.placement import WEIGHTED, Placement
from ..graph.precision import has_fp16, remainder_fp16, runnable
from ..graph.qdq_file import QdqSite, qdq_sites
from ..modelio import load_model, metadata
from ..progress import progress
from ..targets import prepared_for
from .analysis import analyze
from .autocast import fp16_keep_names, fp16_model
from .diagnosis import CHECK_SAMPLES, Evidence, diagnose
from .evaluate import Measurement, figure_outputs, signal_noise
from .metrics import ErrorAccumulator, json_safe
from .tasks import EVIDENCE_SAMPLES, TaskOptions, choose_task_on


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
    method: str = ""                   # how the file's range was set, as qdq recorded it ("imported (…)", "mse", …)
    calibrated_amax: float = 0.0       # what calibration (mse) measures on the compared data
    gain: float = 1.0                  # accumulated: least-squares slope of the quantized tensor on the reference
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
    task: dict | None = None                       # {"name", "reason", "figures", "per_sample"} (qdq.measure.tasks)
    sqnr: dict | None = None                       # the worst output: {"value", "low", "high", "samples", "output",
                                                   # "outputs", "pooled": {…}, "per_output": {name: {…}}}
    remainder: str = "fp32"                        # how the quantized file's non-INT8 layers ran
    diagnosis: list = field(default_factory=list)  # causes, most recoverable first (qdq.measure.diagnosis.Cause)

    def to_dict(self, histograms: bool = False) -> dict:
        d = asdict(self)
        if d["layers"] and not histograms:
            for layer in d["layers"]:
                layer.pop("hist", None)
        return json_safe(d)


class _LayerAcc:
    def __init__(self, site: QdqSite):
        self.site = site
        self.acc = ErrorAccumulator()
        self.local = ErrorAccumulator()
        self.clipped = 0
        self.count = 0
        self.levels = np.zeros(256, dtype=bool)
        self.stats = TensorStats(site.tensor)

    def add(self, ref: np.ndarray, q: np.ndarray, dq: np.ndarray) -> None:
        """``ref``: the reference tensor; ``q``: the quantized model's tensor entering the Q; ``dq``: the
        same after its DequantizeLinear."""
        s = self.site.scale
        ref64, q64 = ref.astype(np.float64), q.astype(np.float64)
        self.acc.add(ref64, dq.astype(np.float64))
        # local: this tensor's own Q/DQ on the reference values, nothing else quantized
        self.local.add(ref64, fake_quant(ref64, s))
        codes = np.rint(q64 / s)
        self.clipped += int(((codes > QMAX) | (codes < -QMAX - 1)).sum())
        self.count += codes.size
        self.levels[np.clip(codes, -QMAX - 1, QMAX).astype(np.int64) + QMAX + 1] = True
        self.stats.update(ref.astype(np.float32))

    def report(self) -> LayerReport:
        s = self.site
        counts, width = self.stats.histogram()
        return LayerReport(s.tensor, s.consumers, s.position, s.amax, s.scale, self.acc.sqnr_db, self.local.sqnr_db,
                           self.clipped / max(self.count, 1), float(self.levels.mean()), method=s.method,
                           calibrated_amax=compute_range(self.stats, "mse").amax if self.count else 0.0,
                           gain=self.acc.gain, hist=[round(c) for c in counts], bin_width=width)


def compare(float_model, quant_model, data, *, reference: str = "fp32", layerwise: bool = False,
            threshold_db: float = 20.0, budget: bool = True, preprocess: Preprocess | None = None,
            limit: int | None = None, batch_size: int = 1, quiet: bool = False, task: TaskOptions | None = None,
            remainder: str = "fp16", float_prepared: bool = False, outputs=None,
            reference_outputs=None) -> CompareResult:
    """Run float/FP16 reference and quantized models on ``data`` (a path, or samples already fed:
    :class:`qdq.calib.data.Feeds`) and measure where they differ: per
    output, pooled over samples with a 90 % interval, and by the task's agreement (``task``,
    :mod:`qdq.measure.tasks`).  ``remainder="fp16"`` runs a file with an FP32 remainder (trt8/trt10)
    as TensorRT does with ``--int8 --fp16``: its non-INT8 layers in FP16 except the ones it pins.
    ``float_prepared``: ``float_model`` is already the float model qdq made the file from (prepared and
    equalized: :func:`qdq.targets.prepared_for`), as ``quantize`` holds it.  ``outputs`` /
    ``reference_outputs``: Polygraphy ``--save-outputs`` files (``FILE[:RUNNER]``, or a :class:`SavedRun`) of a run on ``data``
    that stand in for running the quantized file / the reference here (:class:`SavedRun`)."""
    if reference not in ("fp32", "fp16"):
        raise QdqError(f"unknown reference {reference!r}; choose fp32 or fp16")
    with shared_weights():   # the float weights held once for the reference, budget and file sessions
        return _compare(float_model, quant_model, data, reference, layerwise, threshold_db, budget, preprocess, limit,
                        batch_size, quiet, task, remainder, float_prepared, outputs, reference_outputs)


def _compare(float_model, quant_model, data, reference, layerwise, threshold_db, budget, preprocess, limit,
             batch_size, quiet, task, remainder, float_prepared, outputs=None, reference_outputs=None) -> CompareResult:
    fmodel = float_model if isinstance(float_model, onnx.ModelProto) else load_model(float_model)
    qmodel = quant_model if isinstance(quant_model, onnx.ModelProto) else load_model(quant_model)
    f_out = [o.name for o in fmodel.graph.output]
    if f_out != [o.name for o in qmodel.graph.output]:
        raise QdqError(f"the models' outputs differ ({f_out} vs {[o.name for o in qmodel.graph.output]}); "
                       "compare a model with its own Q/DQ version")
    inputs = model_inputs(fmodel)
    dataset = data if isinstance(data, Feeds) else Dataset(data, inputs, preprocess or Preprocess(), limit=limit)
    if outputs is not None and (layerwise or batch_size != 1):
        raise QdqError("saved outputs are compared sample by sample as the device ran them: drop --layerwise "
                       "and --batch-size (run qdq compare on the file itself for those)")
    sites = _sites(fmodel, qmodel, inputs) if layerwise else []
    device, how = _device_view(fmodel, qmodel, dataset, remainder, quiet) if outputs is None else (None, "")
    made_from = (lambda: fmodel) if float_prepared else (lambda: prepared_for(fmodel, qmodel))
    saved = {k: v if isinstance(v, SavedRun) else SavedRun(v, f_out)
             for k, v in (("quant", outputs), ("ref", reference_outputs)) if v is not None}
    budget = budget and not saved   # the halves are files run here, not what a device saved
    runs = _sessions(fmodel, qmodel, dataset, reference, budget, sites, quiet, device, made_from, saved)
    acc = _Accumulators(f_out, "fp32" in runs, budget, sites, task or TaskOptions())
    with progress("comparing", dataset.count(), quiet) as advance:
        for sources, feed in batches(dataset, batch_size):
            res = {k: run_session(sess, feed, sources[0]) for k, sess in runs.items()}
            acc.add(res, feed, len(sources))
            advance(len(sources))
    for run in saved.values():
        run.finish()
    result = acc.result(reference, threshold_db)
    result.remainder = how if outputs is None else f"as the device ran it: {saved['quant'].path}"
    if layerwise:
        _layerwise(result, acc, made_from(), qmodel, sites, dataset, threshold_db, device)
    return result


def _sites(fmodel, qmodel, inputs) -> list:
    """The quantized file's activation Q/DQ sites on tensors the float model has too."""
    sites = qdq_sites(qmodel)
    if not sites:
        raise QdqError("the quantized model has no activation QuantizeLinear to compare layer by layer")
    known = {o for n in fmodel.graph.node for o in n.output} | {i.name for i in inputs}
    return [s for s in sites if s.tensor in known]


def _device_view(fmodel, qmodel, dataset, remainder: str, quiet: bool):
    """(model → model as the device runs it, ready for ONNX Runtime; a phrase saying how): a file with an FP16 remainder
    (trt11) runs as written; one with an FP32 remainder runs with it in FP16 but the nodes it pins
    (its ``qdq_fp32_nodes``; for a file qdq did not write, the FP16 plan made on ``dataset``)."""
    if remainder == "fp32":
        return runnable, "layers without Q/DQ in FP32 as written (--remainder fp32)"
    if has_fp16(qmodel):
        return runnable, "layers without Q/DQ in FP16 as the file casts them"
    meta = metadata(qmodel)
    if "qdq_fp32_nodes" in meta:
        keep = {n for n in meta["qdq_fp32_nodes"].split(",") if n}
    else:
        keep = set(fp16_keep_names(fmodel, dataset, quiet))
    how = f"layers without Q/DQ in FP16 as TensorRT 8.x/10.x runs them with --int8 --fp16, {len(keep)} pinned to FP32"
    return (lambda m: remainder_fp16(m, keep)), how


def _sessions(fmodel, qmodel, dataset, reference: str, budget: bool, sites: list, quiet: bool, device,
              made_from, saved: dict) -> dict:
    """ONNX Runtime sessions by role: ref (FP32 or FP16), quant, and fp32 / weights_only /
    activations_only where asked (the quantized ones through ``device``, the halves from ``made_from()``,
    the float model the file was made from); ref and quant also return the ``sites``' tensors, quant
    their dequantized tensors too.  ``saved`` (role -> :class:`SavedRun`) stands in for a role's session."""
    inner = [s.tensor for s in sites if s.tensor not in {i.name for i in dataset.inputs}]
    runs = dict(saved)
    if "ref" not in runs:
        ref = fp16_model(fmodel, dataset, quiet) if reference == "fp16" else fmodel
        runs["ref"] = session_for(runnable(ref), extra_outputs=inner)
    if reference == "fp16":   # the FP16 reference's own distance from FP32 (the device's, when it saved it)
        runs["fp32"] = session_for(runnable(fmodel))
    if "quant" not in runs:
        runs["quant"] = session_for(device(qmodel), extra_outputs=inner + [s.dequantized for s in sites if s.dequantized])
    if budget:   # the halves keep no bias correction: one made for both errors is stale with one alone
        fm = made_from()
        plain = without_bias_correction(qmodel, fm)
        runs["weights_only"] = session_for(device(weights_only(plain)))
        runs["activations_only"] = session_for(device(activations_only(plain, fm)))
    return runs


class _OutputPools:
    """Per output, pooled over samples: the file's error against the reference, the FP16 reference's
    against FP32, each budget half's, and top-1/top-5 agreement for logits of 10 or more classes."""

    def __init__(self, outputs: list, fp16: bool, budget: bool):
        self.out = {o: ErrorAccumulator() for o in outputs}
        self.fp16 = {o: ErrorAccumulator() for o in outputs} if fp16 else None
        self.budget = {k: {o: ErrorAccumulator() for o in outputs} for k in ("weights_only", "activations_only")} \
            if budget else None
        self.top = {o: [0, 0, 0] for o in outputs}  # top-1 hits, top-5 hits, rows

    def add(self, o: str, res: dict) -> None:
        """Output ``o`` of one run (``res``: role -> outputs)."""
        ref, q = res["ref"][o], res["quant"][o]
        self.out[o].add(ref, q)
        if self.fp16 is not None:
            self.fp16[o].add(res["fp32"][o], ref)
        for k, by in (self.budget or {}).items():
            by[o].add(ref, res[k][o])
        if ref.ndim == 2 and ref.shape[1] >= 10:
            r1 = ref.argmax(1)
            top5 = np.argsort(-q.astype(np.float64), axis=1)[:, :5]
            self.top[o][0] += int((q.argmax(1) == r1).sum())
            self.top[o][1] += int((top5 == r1[:, None]).any(1).sum())
            self.top[o][2] += ref.shape[0]

    def report(self, o: str) -> "OutputReport":
        rep = OutputReport(o, self.out[o].to_dict())
        if self.top[o][2]:
            rep.top1, rep.top5 = self.top[o][0] / self.top[o][2], self.top[o][1] / self.top[o][2]
        if self.fp16 is not None:
            rep.fp16_vs_fp32 = self.fp16[o].to_dict()
        return rep

    def budget_db(self) -> dict | None:
        """half -> output -> SQNR dB ("both": the file), or None without the halves."""
        if self.budget is None:
            return None
        out = {k: {o: a.sqnr_db for o, a in v.items()} for k, v in self.budget.items()}
        out["both"] = {o: a.sqnr_db for o, a in self.out.items()}
        return out


class _Accumulators:
    """Everything ``compare`` pools over samples: per output (:class:`_OutputPools`), per sample (the
    intervals' rows, the task's), per Q/DQ tensor."""

    def __init__(self, outputs: list, fp16: bool, budget: bool, sites: list, task: TaskOptions):
        self.names, self.samples, self.task_opts, self.task = outputs, 0, task, None
        self.rows, self.task_rows = [], []     # per sample: (signal, noise) per output figured; the task's counts
        self.figured = ()                      # the outputs SQNR figures are of (qdq.measure.evaluate.figure_outputs)
        self.pending = []                      # (ref, quantized, feed) of the samples before the task is chosen
        self.pools = _OutputPools(outputs, fp16, budget)
        self.layers = {s.tensor: _LayerAcc(s) for s in sites}

    def add(self, res: dict, feed: dict, samples: int) -> None:
        for k in ("ref", "quant"):
            res[k].update(feed)
        for o in self.names:
            self.pools.add(o, res)
        for t, la in self.layers.items():
            la.add(res["ref"][t], res["quant"][t], res["quant"][la.site.dequantized or t])
        self._add_rows(res["ref"], res["quant"], feed, samples)
        self.samples += samples

    def _add_rows(self, ref: dict, q: dict, feed: dict, samples: int) -> None:
        """Per-sample rows for the intervals and the task (a batch split into its samples); the task is
        chosen on the first samples' outputs (:func:`qdq.measure.tasks.choose_task_on`), theirs kept
        until then (the outputs only)."""
        items = [({o: ref[o] for o in self.names}, {o: q[o] for o in self.names}, feed)] if samples == 1 else [
            ({o: ref[o][k:k + 1] for o in self.names}, {o: q[o][k:k + 1] for o in self.names},
             {n: v[k:k + 1] for n, v in feed.items()}) for k in range(samples)]
        self.figured = self.figured or figure_outputs({o: ref[o] for o in self.names})
        for r, s, f in items:
            self.rows.append([signal_noise(r[o], s[o]) for o in self.figured])
        self.pending += items
        if self.task is not None or len(self.pending) >= EVIDENCE_SAMPLES:
            self._flush()

    def _flush(self) -> None:
        """Choose the task on the samples kept (once), then count their rows."""
        if self.task is None:
            self.task = choose_task_on([(r, f) for r, _, f in self.pending], self.task_opts)
        if self.task.name != "none":
            self.task_rows += [self.task.row(r, s, f) for r, s, f in self.pending]
        self.pending = []

    def result(self, reference: str, threshold_db: float) -> "CompareResult":
        if self.pending:   # fewer samples than the evidence wants
            self._flush()
        result = CompareResult(reference, self.samples, [self.pools.report(o) for o in self.names],
                               threshold_db=threshold_db)
        m = Measurement(np.array(self.rows).reshape(-1, len(self.figured), 2), self.task,
                        np.array(self.task_rows) if self.task_rows else None, self.figured)
        rows = m.rows[:, self.figured.index(m.worst)]
        result.sqnr = dict(m.sqnr().to_dict(), output=m.worst, outputs=len(self.figured),
                           pooled=m.pooled().to_dict(), per_output={k: f.to_dict() for k, f in m.per_output().items()},
                           per_sample=[float(10 * np.log10(r[0] / r[1])) if r[1] > 0 else math.inf for r in rows])
        if self.task is not None:
            result.task = {"name": self.task.name, "reason": self.task.reason,
                           "figures": {k: f.to_dict() for k, f in m.task_figures().items()},
                           "note": m.task_note(), "per_sample": m.per_sample()}
        result.budget = self.pools.budget_db()
        return result


def _layerwise(result, acc: _Accumulators, fm, qmodel, sites: list, dataset, threshold_db: float,
               device=None, samples: int = 8) -> None:
    """Layer reports in graph order with their output-referred figures, the first tensor below
    ``threshold_db`` (accumulated), the ranking, and the diagnosis (:mod:`qdq.measure.diagnosis`);
    ``fm``: the float model the file was made from."""
    reports = sorted((la.report() for la in acc.layers.values()), key=lambda r: r.position)
    idx = GraphIndex.build(fm)
    plan, ranges = _file_plan(idx, qmodel, sites)
    feeds = first_feeds(dataset, max(samples, CHECK_SAMPLES))
    at_output = {}
    if plan.activations:
        for site in analyze(fm, idx, plan, ranges, feeds[:samples]).sites:
            at_output[site.tensor] = min(at_output.get(site.tensor, math.inf), site.sqnr_db)
    for r in reports:
        r.output_sqnr_db = at_output.get(r.tensor, math.inf)
    result.layers = reports
    result.first_below = next((r.tensor for r in reports if r.accumulated_sqnr_db < threshold_db), None)
    result.ranked = [r.tensor for r in sorted(reports, key=lambda r: (r.output_sqnr_db, r.local_sqnr_db))]
    meta = metadata(qmodel)
    ev = Evidence(reports, result.outputs, result.sqnr["value"], fm, idx, plan, feeds[:2 * samples],
                  meta.get("qdq_ranges_file", ""))
    causes = diagnose(ev, qmodel, device, acc.task, check_feeds=feeds)
    result.diagnosis = [asdict(c) for c in causes]


def _file_plan(idx: GraphIndex, qmodel: onnx.ModelProto, sites: list) -> tuple[Placement, dict]:
    """The file's own activation Q/DQ sites as a placement on the float model ``idx`` indexes (with
    their ranges): consumers are found by name, as the float model qdq prepared shares the file's node
    names."""
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
    return plan, ranges
