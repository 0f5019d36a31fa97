"""The main job: float ONNX + data → TensorRT-ready Q/DQ ONNX, with a summary.

Data flows one way: data (:mod:`qdq.data`) → statistics (:mod:`qdq.calibrate`, :mod:`qdq.stats`)
→ ranges (:mod:`qdq.ranges`) → placement (:mod:`qdq.placement`) → rewritten graph
(:mod:`qdq.rewrite`, :mod:`qdq.precision`).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from . import __version__
from .calibrate import Calibration, calibrate
from .data import Dataset, Preprocess, model_inputs
from .errors import QdqError
from .graph import GraphIndex
from .modelio import PROTOBUF_LIMIT, atomic_write_text, convert_opset, load_model, opset_of
from .placement import Placement, place
from .range_files import RangeFile, read_ranges
from .ranges import DEFAULT_METHOD, METHODS, Range, clipped_fraction, compute_range
from .rewrite import insert_qdq, set_metadata

TARGETS = {
    # name: (lowest opset, highest opset it is converted down to, scale dtype)
    "trt10": (17, None, np.float32),
    "trt8": (13, 17, np.float32),
    "trt11": (19, None, np.float16),
}
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


def target_opset(model: onnx.ModelProto, target: str) -> int:
    lo, hi, _ = TARGETS[target]
    v = opset_of(model)
    if v < lo:
        return lo
    if hi is not None and v > hi:
        return hi
    return v


def prepare(model, target: str = "trt10", source: str = "model") -> onnx.ModelProto:
    """Load (if a path) and convert the float model to the target's opset."""
    if target not in TARGETS:
        raise QdqError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if not isinstance(model, onnx.ModelProto):
        source = str(model)
        model = load_model(model)
    else:
        model = copy.deepcopy(model)
    model = convert_opset(model, target_opset(model, target), source)
    return model


def quantize(model, calib=None, *, method: str = DEFAULT_METHOD, percentile: float = 99.99, batch_size: int = 1,
             target: str = "trt10", exclude=(), preprocess: Preprocess | None = None, limit: int | None = None,
             providers=None, quiet: bool = False, ranges=None, force_ranges: bool = False,
             calibration: Calibration | None = None) -> QuantizeResult:
    """Calibrate ``model`` (path or ModelProto) on ``calib`` (path, see :class:`qdq.data.Dataset`)
    and return the Q/DQ model with its summary.  Nothing is written to disk.

    ``ranges`` (a path or :class:`qdq.range_files.RangeFile`) supplies amax values that win over
    calibration; tensors it does not cover are calibrated on ``calib``.  With ``force_ranges`` its
    tensors get Q/DQ even where the placement rules would not put one.  ``calibration`` reuses the
    statistics of an earlier pass (e.g. ``result.calibration``) instead of running a new one."""
    if method not in METHODS:
        raise QdqError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if batch_size < 1:
        raise QdqError(f"--batch-size must be >= 1, got {batch_size}")
    source = str(model) if not isinstance(model, onnx.ModelProto) else (model.graph.name or "model")
    float_model = prepare(model, target, source)
    warnings = []
    if target == "trt8":
        bad = sorted({n.op_type for n in float_model.graph.node} & TRT85_UNSUPPORTED)
        if bad:
            warnings.append(f"ops {bad} are not parsed by TensorRT 8.5; use --target trt10 or replace them")
    subgraphs = [n.name for n in float_model.graph.node
                 if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)]
    if subgraphs:
        warnings.append(f"{len(subgraphs)} nodes with subgraphs (If/Loop/Scan: {', '.join(subgraphs[:3])}) are left "
                        "in float; only the main graph is quantized")
    idx = GraphIndex.build(float_model)
    plan = place(idx, exclude)
    if not plan.activations:
        raise QdqError(f"{source}: no layer to quantize (no Conv/ConvTranspose/Gemm/MatMul with float inputs"
                       f"{' left after --exclude' if exclude else ''})")
    imported = None
    if ranges is not None:
        imported = ranges if isinstance(ranges, RangeFile) else read_ranges(ranges)
        if force_ranges:
            _force(idx, plan, imported)
    missing = [t for t in plan.activations if imported is None or t not in imported.amax]
    if calibration is not None:
        lacking = [t for t in missing if t not in calibration.stats]
        if lacking:
            raise QdqError(f"the given calibration has no statistics for {lacking[0]!r}; calibrate again")
    elif missing and calib is None:
        raise QdqError(f"no range for {len(missing)} tensors (e.g. {missing[0]!r})"
                       + (f" in {imported.path}" if imported else "") + ": pass --calib DATA to calibrate them")
    cal = calibration or Calibration()
    if calibration is None and calib is not None:
        inputs = model_inputs(float_model)
        dataset = Dataset(calib, inputs, preprocess or Preprocess(), limit=limit)
        if any(s.shape and s.shape[0] is not None and s.shape[0] < batch_size for s in inputs):
            batch_size = 1  # a fixed batch dim: run one sample at a time
        range_only = [t for t in idx.dtypes if idx.is_float(t) and t not in idx.constants] if target == "trt11" else ()
        cal = calibrate(float_model, dataset, plan.activations, range_only, batch_size, providers, quiet)

    ranges = {}
    for t in plan.activations:
        if imported is not None and t in imported.amax:
            a = imported.amax[t]
            ranges[t] = Range(a, f"imported ({imported.kind})", clipped_fraction(cal.stats[t], a) if t in cal.stats else None)
        else:
            ranges[t] = compute_range(cal.stats[t], method, percentile)
    for group in plan.groups:
        shared = max(ranges[t].amax for t in group)
        for t in group:
            r = ranges[t]
            clipped = clipped_fraction(cal.stats[t], shared) if t in cal.stats else None
            ranges[t] = Range(amax=shared, method=f"{r.method} (shared)", clipped=clipped)
    for t, r in ranges.items():
        st = cal.stats.get(t)
        if r.amax == 0.0:
            warnings.append(f"tensor {t!r} has a zero range; given scale 1")
        elif st is not None and st.min == st.max:
            warnings.append(f"tensor {t!r} is constant ({st.min:g}) on the calibration data")
    if imported is not None and imported.asymmetric:
        warnings.append(f"{len(imported.asymmetric)} asymmetric [min, max] ranges made symmetric max(|min|, |max|): "
                        + ", ".join(imported.asymmetric[:5]) + (" …" if len(imported.asymmetric) > 5 else ""))

    qmodel, notes = build_model(float_model, idx, plan, ranges, target, cal, warnings)
    if target == "trt11" and calib is None and calibration is None:
        warnings.append("no calibration data: FP16 overflow of the remainder was not checked")
    set_metadata(qmodel, {"qdq_version": __version__, "qdq_method": method if (calib is not None or calibration is not None) else "imported",
                          "qdq_samples": cal.samples,
                          "qdq_target": target, "qdq_percentile": percentile if method == "percentile" else ""})
    try:
        if qmodel.ByteSize() <= PROTOBUF_LIMIT:
            onnx.checker.check_model(qmodel)
    except Exception as e:  # a bug of ours, not the user's: say so plainly
        raise QdqError(f"internal error: the rewritten model fails onnx.checker ({str(e).splitlines()[0][:200]}); "
                       "please report it with the model") from None

    summary = Summary(
        ranges_import=_import_report(imported, plan, idx),
        model=source, target=target, method=method, opset=opset_of(qmodel), samples=cal.samples,
        quantized_layers=plan.quantized_layers,
        weighted_layers=len(plan.quantized_layers) + len(plan.skipped),
        skipped=[{"node": n, "op": op, "reason": why} for n, op, why in plan.skipped],
        activations={t: {"amax": r.amax, "scale": r.scale, "method": r.method, "clipped": r.clipped,
                         "reason": plan.reasons.get(t, "")} for t, r in ranges.items()},
        weights={w: {"axis": s.axis, "amax_max": next(n.amax for n in notes if n.tensor == w)}
                 for w, s in plan.weights.items()},
        warnings=warnings)
    return QuantizeResult(qmodel, summary, ranges, plan, cal, float_model, idx)


def build_model(float_model: onnx.ModelProto, idx: GraphIndex, plan: Placement, ranges: dict, target: str,
                cal: Calibration, warnings: list | None = None):
    """The Q/DQ model for ``plan`` with ``ranges`` (tensor → Range): Q/DQ insertion and, for trt11,
    the FP16 cast.  Returns (model, notes); appends what the user should know to ``warnings``."""
    warnings = [] if warnings is None else warnings
    qmodel = copy.deepcopy(float_model)
    scale_dtype = TARGETS[target][2]
    notes = insert_qdq(qmodel, plan, {t: r.amax for t, r in ranges.items() if t in plan.activations},
                       {t: r.method for t, r in ranges.items()}, idx.constants, scale_dtype)
    for n in notes:
        if n.floored and n.tensor in plan.weights:
            warnings.append(f"weight {n.tensor!r} has all-zero (dead) channels or scales below the "
                            f"{np.dtype(scale_dtype).name} range; those channels got a positive placeholder scale")
    if target == "trt11":
        from .precision import cast_to_fp16

        kept = cast_to_fp16(qmodel, cal.extrema | {t: (s.min, s.max) for t, s in cal.stats.items()},
                            {t for t in idx.dtypes if idx.is_float(t)})
        if kept:
            warnings.append(f"{len(kept)} tensors exceed the FP16 range and stay FP32: {', '.join(kept[:5])}"
                            + (" …" if len(kept) > 5 else ""))
    return qmodel, notes


def fp16_model(model, dataset, quiet: bool = False) -> onnx.ModelProto:
    """The FP16 model TensorRT runs for ``model``: the cast ``--target trt11`` applies (FP32 I/O,
    tensors whose range on ``dataset`` would overflow FP16 kept FP32), at opset 19."""
    from .precision import cast_to_fp16

    m = prepare(model, "trt11")
    idx = GraphIndex.build(m)
    floats = [t for t in idx.dtypes if idx.is_float(t) and t not in idx.constants]
    cal = calibrate(m, dataset, [], floats, quiet=quiet)
    cast_to_fp16(m, cal.extrema, {t for t in idx.dtypes if idx.is_float(t)})
    return m


def _force(idx: GraphIndex, plan: Placement, imported: RangeFile) -> None:
    """``--force-ranges``: Q/DQ on every float consumer of each imported tensor placement skipped."""
    for t in imported.amax:
        if t in plan.activations or t in idx.constants or not idx.is_float(t):
            continue
        for node, i in idx.consumers.get(t, []):
            plan.add(t, node.name, i, "range forced by --force-ranges")


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
