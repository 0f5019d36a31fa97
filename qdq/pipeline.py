"""The main job: float ONNX + data → TensorRT-ready Q/DQ ONNX, with a summary.

Data flows one way: data (:mod:`qdq.data`) → statistics (:mod:`qdq.calibrate`, :mod:`qdq.stats`)
→ ranges (:mod:`qdq.ranges`) → placement (:mod:`qdq.placement`) → rewritten graph
(:mod:`qdq.rewrite`, :mod:`qdq.precision`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from . import __version__
from .calibrate import Calibration, calibrate
from .data import Dataset, Feeds, HoldOut, Preprocess, first_feeds, model_inputs
from .errors import QdqError
from .graph import GraphIndex
from .modelio import atomic_write_text, convert_opset, load_model, opset_of
from .mixed_precision import GROUPS
from .placement import Placement, calibration_tensors, place
from .range_files import RangeFile, read_ranges
from .ranges import DEFAULT_METHOD, METHODS, Range, clipped_fraction, compute_range
from .rewrite import insert_qdq, set_metadata

TARGETS = {
    # name: (lowest opset, highest opset it is converted down to, scale dtype)
    "trt10": (17, None, np.float32),
    "trt8": (13, 17, np.float32),
    "trt11": (19, None, np.float16),
}
# samples on which the FP16 remainder's precision is measured (qdq.autocast)
FP16_SAMPLES = 4
# fewer held-back samples than this and mixed precision is measured on calibration samples
MIN_HELD_BACK = 4
# Ops TensorRT 8.5's ONNX parser does not know (added in 8.6 or later).
TRT85_UNSUPPORTED = {"LayerNormalization", "GroupNormalization", "GridSample", "ReverseSequence",
                     "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "Col2Im", "STFT"}


@dataclass
class Summary:
    """What ``quantize`` did; ``to_dict()`` is the ``--json`` output."""

    model: str
    target: str
    method: str
    opset: int
    samples: int
    quantized_layers: list
    weighted_layers: int
    skipped: list                      # [{"node", "op", "reason"}]
    activations: dict                  # tensor -> {"amax", "scale", "method", "clipped", "reason"}
    weights: dict                      # tensor -> {"axis", "amax_max"}
    warnings: list = field(default_factory=list)
    output: str | None = None
    ranges_import: dict | None = None   # what an imported ranges file applied, and what it could not
    fp32_nodes: dict = field(default_factory=dict)   # trt11: node -> why it stays FP32
    int8_mac_share: float = 0.0                     # share of the weighted layers' MACs in INT8
    bias_corrected: int = 0                         # layers whose bias took the mean INT8 error out
    bias_correction: str = "off"                    # full | weights | off, as measured best on held-back data
    float_layers: list = field(default_factory=list)  # mixed precision: [{"node", "op", "mac_share", "cost_db"}]
    accuracy: dict | None = None                    # held-back SQNR: INT8, weights only, the file written
    engine: dict | None = None                      # what TensorRT built (CLI, when TensorRT-RTX is installed)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class QuantizeResult:
    model: onnx.ModelProto
    summary: Summary
    ranges: dict            # activation tensor -> Range (after scale sharing)
    placement: Placement
    calibration: Calibration | None
    float_model: onnx.ModelProto | None = None   # the float model at the target opset
    index: GraphIndex | None = None
    fp16: object | None = None                   # trt11: the qdq.autocast.Fp16Plan of the remainder
    analysis: object | None = None               # the qdq.analysis.Analysis of the full placement
    bias: dict = field(default_factory=dict)     # layer id -> bias correction applied


def target_opset(model: onnx.ModelProto, target: str) -> int:
    lo, hi, _ = TARGETS[target]
    v = opset_of(model)
    if v < lo:
        return lo
    if hi is not None and v > hi:
        return hi
    return v


def prepare(model, target: str = "trt10", source: str = "model", warnings: list | None = None) -> onnx.ModelProto:
    """Load (if a path) the float model and make it ready to quantize, without changing what it
    computes: the target's opset; Constant nodes as initializers; every node named uniquely;
    BatchNormalization folded into the Conv before it (:func:`qdq.surgery.fold_batchnorm`); an FP16
    model computed in FP32 inside (its inputs and outputs keep their FP16 type), since Q/DQ before
    opset 19 take FP32 scales and statistics are best gathered in FP32."""
    from .surgery import constants_to_initializers, export_graph, fold_batchnorm, import_graph, name_nodes

    if target not in TARGETS:
        raise QdqError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if not isinstance(model, onnx.ModelProto):
        source = str(model)
        model = load_model(model)
    model = convert_opset(model, target_opset(model, target), source)
    graph = import_graph(model)
    constants_to_initializers(graph)
    renamed = name_nodes(graph)
    fold_batchnorm(graph, fp16_scales=TARGETS[target][2] == np.float16)
    model = export_graph(graph, model, "preparation")
    if renamed and warnings is not None:
        warnings.append(f"{renamed} nodes shared a name with another node and were renamed (name_1, name_2, …)")
    if any(t == onnx.TensorProto.FLOAT16 for t in GraphIndex.build(model).dtypes.values()):
        from .precision import cast_float

        declared = {v.name: np.float16 for v in list(model.graph.input) + list(model.graph.output)
                    if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
        model = cast_float(model, np.float32, pass_name="FP16 model to FP32", io_types=declared)
        if warnings is not None:
            warnings.append("the model is FP16: it is calibrated and quantized in FP32 inside, its inputs and "
                            "outputs stay FP16")
    return model


def quantize(model, calib=None, *, method: str = DEFAULT_METHOD, percentile: float = 99.99, batch_size: int = 1,
             target: str = "trt10", exclude=(), preprocess: Preprocess | None = None, limit: int | None = None,
             providers=None, quiet: bool = False, ranges=None, force_ranges: bool = False,
             calibration: Calibration | None = None, mixed_precision: bool = True, max_loss_db: float = 2.0,
             min_int8_share: float = 0.85, bias_correction: bool = True, smoothquant: bool = False,
             equalize: bool = False) -> QuantizeResult:
    """Calibrate ``model`` (path or ModelProto) on ``calib`` (path, see :class:`qdq.data.Dataset`)
    and return the Q/DQ model with its summary.  Nothing is written to disk.

    ``ranges`` (a path or :class:`qdq.range_files.RangeFile`) supplies amax values that win over
    calibration; tensors it does not cover are calibrated on ``calib``.  With ``force_ranges`` its
    tensors get Q/DQ even where the placement rules would not put one.  ``calibration`` reuses the
    statistics of an earlier pass (e.g. ``result.calibration``) instead of running a new one.

    Accuracy by default, with calibration data: every 5th sample (up to 16) is held back from range
    fitting; :mod:`qdq.analysis` measures each site at its consumer's output on 8 of the others;
    ``bias_correction`` folds each layer's mean INT8 error into its bias (:mod:`qdq.bias_correction`);
    ``mixed_precision`` keeps the layers whose INT8 costs most per MAC in float until the held-back
    output SQNR is within ``max_loss_db`` of the weights-only figure, the INT8 share of MACs never
    below ``min_int8_share`` (:mod:`qdq.mixed_precision`).  ``smoothquant`` and ``equalize``
    (cross-layer equalization) rescale the float model first (:mod:`qdq.equalize`)."""
    if method not in METHODS:
        raise QdqError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if batch_size < 1:
        raise QdqError(f"--batch-size must be >= 1, got {batch_size}")
    if not 0.0 <= min_int8_share <= 1.0:
        raise QdqError(f"--min-int8-share must be between 0 and 1, got {min_int8_share}")
    source = str(model) if not isinstance(model, onnx.ModelProto) else (model.graph.name or "model")
    warnings = []
    float_model = prepare(model, target, source, warnings)
    if target == "trt8":
        bad = sorted({n.op_type for n in float_model.graph.node} & TRT85_UNSUPPORTED)
        if bad:
            warnings.append(f"ops {bad} are not parsed by TensorRT 8.5; use --target trt10 or replace them")
    subgraphs = [n.name for n in float_model.graph.node
                 if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)]
    if subgraphs:
        warnings.append(f"{len(subgraphs)} nodes with subgraphs (If/Loop/Scan: {', '.join(subgraphs[:3])}) are left "
                        "in float; only the main graph is quantized")
    if equalize or smoothquant:
        from .equalize import cross_layer_equalization, smooth_quant

        if equalize:
            float_model, n = cross_layer_equalization(float_model)
            if n:
                warnings.append(f"cross-layer equalization rescaled {n} Conv pairs")
        if smoothquant and calib is not None:
            feeds = first_feeds(Dataset(calib, model_inputs(float_model), preprocess or Preprocess(), limit=limit), 16)
            float_model, n = smooth_quant(float_model, feeds)
            if n:
                warnings.append(f"SmoothQuant moved the channel ranges of {n} activations into the next layers' weights")
    idx = GraphIndex.build(float_model)
    imported = None
    if ranges is not None:
        imported = ranges if isinstance(ranges, RangeFile) else read_ranges(ranges)
    plan = place(idx, exclude, force=tuple(imported.amax) if imported is not None and force_ranges else ())
    if not plan.quantized_layers:
        raise QdqError(f"{source}: no layer to quantize (no Conv/ConvTranspose/Gemm/MatMul with float inputs"
                       f"{' left after --exclude' if exclude else ''})")
    missing = [t for t in plan.activations if imported is None or t not in imported.amax]
    if calibration is not None:
        lacking = [t for t in missing if t not in calibration.stats]
        if lacking:
            raise QdqError(f"the given calibration has no statistics for {lacking[0]!r}; calibrate again")
    elif missing and calib is None:
        raise QdqError(f"no range for {len(missing)} tensors (e.g. {missing[0]!r})"
                       + (f" in {imported.path}" if imported else "") + ": pass --calib DATA to calibrate them")

    cal, split = calibration or Calibration(), None
    if calib is not None:
        inputs = model_inputs(float_model)
        dataset = Dataset(calib, inputs, preprocess or Preprocess(), limit=limit)
        if any(s.shape and s.shape[0] is not None and s.shape[0] < batch_size for s in inputs):
            batch_size = 1  # a fixed batch dim: run one sample at a time
        split = HoldOut(dataset)
        if calibration is None:
            range_only = [t for t in idx.dtypes if idx.is_float(t) and t not in idx.constants] if target == "trt11" else ()
            cal = calibrate(float_model, split, calibration_tensors(idx, plan), range_only, batch_size, providers, quiet)
        else:
            for _ in split:   # the samples are needed, not their statistics
                pass
        if len(split.held) < MIN_HELD_BACK:
            # too few samples to set some aside: calibrate on them too, and measure on calibration samples
            if calibration is None and split.held:
                extra = calibrate(float_model, Feeds(inputs, split.held), calibration_tensors(idx, plan), range_only,
                                  1, providers, True)
                cal.merge(extra)
            split.kept, split.held = (split.kept + split.held)[:6], split.kept + split.held
            if mixed_precision:
                warnings.append(f"only {len(split.held)} samples: none held back, mixed precision was measured on "
                                "calibration samples")

    ranges = _ranges(plan, cal, imported, method, percentile)
    analysis = choice = None
    if split is not None and split.kept and (bias_correction or mixed_precision):
        from .analysis import analyze

        analysis = analyze(float_model, idx, plan, ranges, split.kept, quiet, groups=GROUPS if mixed_precision else 0)
    bias, bias_mode, ev, int8_db = {}, "off", None, None
    if analysis is not None and split.held:
        from .metrics import Evaluator

        ev = Evaluator(float_model, split.held, "held-back sample")
    if analysis is not None and bias_correction:
        options = {"full": analysis.bias, "weights": analysis.weight_bias, "off": {}}
        if ev is None:
            bias_mode = "full"
        else:   # kept only where it measurably helps on the held-back samples
            def score(mode):
                return ev.sqnr(build_model(float_model, idx, plan, ranges, "trt10", bias=options[mode], check=False)[0])

            scores = {mode: score(mode) for mode in ("full", "off")}
            if scores["full"] < scores["off"] + 1.0:   # not a clear win: the weight-only correction may be
                scores["weights"] = score("weights")
            bias_mode = max(scores, key=scores.get)
            int8_db = scores[bias_mode]
        bias = options[bias_mode]
    macs = _layer_macs(float_model)
    if mixed_precision and ev is not None:
        choice = _mixed_precision(float_model, idx, plan, cal, imported, method, percentile, exclude, analysis, bias,
                                  ev, max_loss_db, min_int8_share, bias_mode == "full", macs, int8_db)
        if choice.float_layers:
            plan = place(idx, exclude, {p: f"kept in float: its INT8 would cost {db:.2f} dB (mixed precision)"
                                        for p, db in choice.float_layers.items()}, plan.force)
            ranges = _ranges(plan, cal, imported, method, percentile)
        if not choice.reached:
            warnings.append(f"mixed precision: {choice.final_db:.2f} dB on held-back samples, more than {max_loss_db:g} dB "
                            f"below the weights-only {choice.final_weights_only_db:.2f} dB, with {choice.int8_mac_share:.1%} "
                            f"of the MACs in INT8 (floor {min_int8_share:.0%})")
    for t, r in ranges.items():
        st = cal.stats.get(t)
        if r.amax == 0.0:
            warnings.append(f"tensor {t!r} has a zero range; given scale 1")
        elif st is not None and st.min == st.max:
            warnings.append(f"tensor {t!r} is constant ({st.min:g}) on the calibration data")
    if imported is not None and imported.note:
        warnings.append(imported.note)
    if imported is not None and imported.kind == "ort-cache":
        lost = [t for t in plan.activations if t in imported.amax and t in cal.stats
                and -cal.stats[t].min > imported.amax[t] * 1.001]
        if lost:
            warnings.append(f"{len(lost)} imported ranges are smaller than the negative values the calibration data "
                            f"reaches (lost in ONNX Runtime's .cache): {', '.join(lost[:5])}" + (" …" if len(lost) > 5 else ""))
    if imported is not None and imported.asymmetric:
        warnings.append(f"{len(imported.asymmetric)} asymmetric [min, max] ranges made symmetric max(|min|, |max|): "
                        + ", ".join(imported.asymmetric[:5]) + (" …" if len(imported.asymmetric) > 5 else ""))

    fp16 = None
    if target == "trt11":
        from .autocast import fp16_plan
        from .precision import FP16_OUTPUT_MIN_DB

        if not cal.samples:
            warnings.append("no calibration data: FP16 overflow and precision of the remainder were not checked")
        extrema = cal.extrema | {t: (s.min, s.max) for t, s in cal.stats.items()}
        # FP16 noise 10 dB under the INT8 noise adds at most 0.4 dB
        floor = FP16_OUTPUT_MIN_DB if choice is None else min(max(choice.final_db + 10, FP16_OUTPUT_MIN_DB), 50.0)
        fp16 = fp16_plan(float_model, extrema, (split.kept[:FP16_SAMPLES] if split else []), floor_db=floor, idx=idx)
        if fp16.keep:
            names = list(fp16.names(idx))
            warnings.append(f"{len(names)} nodes stay FP32 (range or measured FP16 error): {', '.join(names[:5])}"
                            + (" …" if len(names) > 5 else ""))
    used_bias = {p: b for p, b in bias.items() if p in plan.quantized_layers}
    qmodel, notes = build_model(float_model, idx, plan, ranges, target, fp16, warnings, bias)
    total = sum(macs.values()) or 1
    int8_share = sum(macs.get(p, 0) for p in plan.quantized_layers) / total
    meta = {"qdq_version": __version__, "qdq_method": method if (calib is not None or calibration is not None) else "imported",
            "qdq_samples": cal.samples, "qdq_target": target, "qdq_percentile": percentile if method == "percentile" else "",
            "qdq_int8_mac_share": f"{int8_share:.4f}", "qdq_bias_correction": f"{bias_mode} ({len(used_bias)} layers)"}
    if choice is not None:
        meta.update(qdq_float_layers=", ".join(idx.labels[p] for p in choice.float_layers),
                    qdq_heldout_sqnr_db=f"{choice.final_db:.2f}", qdq_heldout_weights_only_db=f"{choice.final_weights_only_db:.2f}")
    set_metadata(qmodel, meta)
    summary = Summary(
        ranges_import=_import_report(imported, plan, idx),
        model=source, target=target, method=method, opset=opset_of(qmodel), samples=cal.samples,
        quantized_layers=[idx.labels[i] for i in plan.quantized_layers],
        weighted_layers=len(plan.quantized_layers) + len(plan.skipped),
        skipped=[{"node": idx.labels[i], "op": idx.nodes[i].op_type, "reason": why} for i, why in plan.skipped],
        activations={t: {"amax": r.amax, "scale": r.scale, "method": r.method, "clipped": r.clipped,
                         "reason": plan.reasons.get(t, "")} for t, r in ranges.items()},
        weights={w: {"axis": s.axis, "amax_max": next(n.amax for n in notes if n.tensor == w)}
                 for w, s in plan.weights.items()},
        fp32_nodes=fp16.names(idx) if fp16 is not None else {},
        int8_mac_share=int8_share, bias_corrected=len(used_bias), bias_correction=bias_mode,
        float_layers=[{"node": idx.labels[p], "op": idx.nodes[p].op_type, "mac_share": macs.get(p, 0) / total,
                       "cost_db": db} for p, db in (choice.float_layers.items() if choice else [])],
        accuracy=None if choice is None else {
            "held_back_samples": len(split.held), "int8_db": choice.int8_db, "weights_only_db": choice.weights_only_db,
            "final_db": choice.final_db, "final_weights_only_db": choice.final_weights_only_db,
            "max_loss_db": max_loss_db, "reached": choice.reached, "evaluations": len(choice.steps)},
        warnings=warnings)
    return QuantizeResult(qmodel, summary, ranges, plan, cal, float_model, idx, fp16, analysis, used_bias)


def _ranges(plan: Placement, cal: Calibration, imported: RangeFile | None, method: str, percentile: float) -> dict:
    """tensor -> Range for every activation of ``plan``: imported where given, else calibrated; then
    one amax per scale group."""
    ranges = {}
    for t in plan.activations:
        if imported is not None and t in imported.amax:
            a = imported.amax[t]
            ranges[t] = Range(a, f"imported ({imported.kind})", clipped_fraction(cal.stats[t], a) if t in cal.stats else None)
        else:
            ranges[t] = compute_range(cal.stats[t], method, percentile)
    return share_ranges(plan, ranges, cal)


def _layer_macs(float_model: onnx.ModelProto) -> dict:
    """node id -> multiply-accumulates of each weighted layer (dynamic dims at batch 1 and 640)."""
    from .inspection import _static_shapes, layer_macs
    from .placement import WEIGHTED

    sidx = _static_shapes(float_model, None)
    return {i: layer_macs(sidx, n) or 0 for i, n in enumerate(sidx.nodes) if n.op_type in WEIGHTED}


def _mixed_precision(float_model, idx, plan, cal, imported, method, percentile, exclude, analysis, bias, ev,
                     max_loss_db, min_int8_share, centred, macs, int8_db=None):
    """The layers to keep in float (see :mod:`qdq.mixed_precision`)."""
    from .mixed_precision import choose, propagation_gains

    def build(float_layers):
        p = place(idx, exclude, {q: "float" for q in float_layers}, plan.force) if float_layers else plan
        r = _ranges(p, cal, imported, method, percentile)
        model, _ = build_model(float_model, idx, p, r, "trt10", bias=bias, check=False)
        return model

    gains = propagation_gains(analysis, centred)
    candidates = {}
    for layer in plan.quantized_layers:
        sites = [s for s in analysis.layer_sites(layer) if s.kind == "activation" and s.signal > 0]
        if sites:
            candidates[layer] = sum(gains.get(s.tensor, 1.0) * (s.centred if centred else s.noise) / s.signal for s in sites)
    return choose(candidates, {p: macs.get(p, 0) for p in plan.quantized_layers}, build, ev,
                  max_loss_db, min_int8_share, total_macs=sum(macs.values()), int8_db=int8_db)


def variant(result: QuantizeResult, keep_float: set, check: bool = False) -> onnx.ModelProto:
    """``result``'s file with the layers ``keep_float`` (node ids) in float too: the placement redone
    with ``result``'s own skips, ranges as ``result`` chose them (new tensors from its calibration),
    its bias corrections on the layers still INT8."""
    idx, plan = result.index, result.placement
    keep = dict(plan.skipped)
    keep.update({q: "float (variant)" for q in keep_float})
    p = place(idx, (), keep, plan.force) if keep_float else plan
    ranges = {t: result.ranges[t] if t in result.ranges else compute_range(result.calibration.stats[t], result.summary.method)
              for t in p.activations}
    model, _ = build_model(result.float_model, idx, p, share_ranges(p, ranges, result.calibration), "trt10",
                           bias=result.bias, check=check)
    return model


def share_ranges(plan: Placement, ranges: dict, cal: Calibration) -> dict:
    """Tensors of one scale group (a Concat's inputs and output, MaxPool/Resize in and out) take
    the largest amax of the group."""
    ranges = dict(ranges)
    for group in plan.groups:
        shared = max(ranges[t].amax for t in group)
        for t in group:
            r = ranges[t]
            clipped = clipped_fraction(cal.stats[t], shared) if t in cal.stats else None
            ranges[t] = Range(amax=shared, method=f"{r.method} (shared)", clipped=clipped)
    return ranges


def build_model(float_model: onnx.ModelProto, idx: GraphIndex, plan: Placement, ranges: dict, target: str,
                fp16=None, warnings: list | None = None, bias: dict | None = None, check: bool = True):
    """The Q/DQ model for ``plan`` with ``ranges`` (tensor → Range): Q/DQ insertion with the bias
    corrections ``bias`` (layer id → mean error per channel) and, for trt11, the FP16 remainder with
    the nodes of ``fp16`` (a :class:`qdq.autocast.Fp16Plan`) kept FP32.
    Returns (model, notes); appends what the user should know to ``warnings``.  ``check=False`` skips
    the final full check, for candidates that are only evaluated."""
    warnings = [] if warnings is None else warnings
    qmodel, notes = insert_qdq(float_model, plan, {t: r.amax for t, r in ranges.items() if t in plan.activations},
                               {t: r.method for t, r in ranges.items()}, bias=bias, check=check)
    for n in notes:
        if n.floored and n.tensor in plan.weights:
            warnings.append(f"weight {n.tensor!r} has all-zero (dead) channels or scales below the float32 range; "
                            "those channels got a positive placeholder scale")
    if target == "trt11":
        from .precision import cast_float

        # names are unique after prepare(), and Q/DQ insertion keeps them: they carry the node ids over
        kept = {idx.nodes[i].name for i in (fp16.keep if fp16 is not None else {})}
        qmodel = cast_float(qmodel, np.float16, {i for i, n in enumerate(qmodel.graph.node) if n.name in kept})
    return qmodel, notes


def fp16_model(model, dataset, quiet: bool = False) -> onnx.ModelProto:
    """The FP16 model TensorRT runs for ``model``: the cast ``--target trt11`` applies (FP32 I/O;
    nodes kept FP32 where ``dataset`` shows FP16 would overflow or cost precision), at opset 19."""
    from .autocast import fp16_plan
    from .precision import cast_float

    m = prepare(model, "trt11")
    idx = GraphIndex.build(m)
    floats = [t for t in idx.dtypes if idx.is_float(t) and t not in idx.constants]
    cal = calibrate(m, dataset, [], floats, quiet=quiet)
    plan = fp16_plan(m, cal.extrema, first_feeds(dataset, FP16_SAMPLES), idx=idx)
    return cast_float(m, np.float16, set(plan.keep))


def _import_report(imported: RangeFile | None, plan: Placement, idx: GraphIndex) -> dict | None:
    if imported is None:
        return None
    known = set(idx.dtypes) | set(idx.producer) | set(idx.inputs)
    applied = [t for t in imported.amax if t in plan.activations]
    return {"file": imported.path, "kind": imported.kind, "header": imported.header, "applied": len(applied),
            "unused": sorted(t for t in imported.amax if t in known and t not in plan.activations),
            "not_in_model": sorted(t for t in imported.amax if t not in known),
            "zero": sorted(imported.zero), "asymmetric": sorted(imported.asymmetric)}


def write_ranges(summary: Summary, path) -> None:
    """``--ranges-out``: tensor → amax, method, fraction of calibration values clipped (JSON)."""
    from .range_files import qdq_json_text

    entries = {t: {"amax": a["amax"], "method": a["method"], "clipped": a["clipped"]}
               for t, a in summary.activations.items()}
    atomic_write_text(Path(path), qdq_json_text(entries, summary.method, samples=summary.samples))
