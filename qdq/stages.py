"""The passes of ``qdq quantize`` before any choice is made, each from what the earlier ones returned to a
frozen result: *prepare* (target opset, names, BatchNorm folded, equalization, placement), *calibrate*
(one streaming pass; a seeded random fifth of the samples held back, :class:`qdq.calib.data.HoldOut`),
*count MACs* (at the data's dims), *massive activations*, the *FP16 remainder*'s plan, and the
*held-back* references.  :mod:`qdq.pipeline` composes them with the choices of
:mod:`qdq.measure.choices` and the writer."""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from .calib.calibrate import Calibration, calibrate
from .calib.data import Dataset, Feeds, HoldOut, Preprocess, first_feeds, model_inputs
from .calib.range_files import check_sources
from .calib.session import hold
from .calib.ranges import MASSIVE_RATIO, massive
from .errors import QdqError
from .graph.equalize import cross_layer_equalization, record, smooth_quant, smoothable, smoothing_note
from .graph.index import GraphIndex
from .graph.placement import Placement, calibration_tensors, place, why_none
from .graph.precision import FP16_OUTPUT_MIN_DB, remainder_fp16, runnable
from .graph.shapes import data_shapes, layer_tensors, measured_macs, shape_text, weighted_macs
from .measure.autocast import fp16_plan
from .measure.heldback import HeldBack
from .measure.prepared import check_prepared
from .modelio import subgraphs
from .options import Options
from .progress import notice
from .report.summary import tensor_names
from .targets import TRT85_UNSUPPORTED, prepare

# fewer held-back samples than this and mixed precision is measured on calibration samples
MIN_HELD_BACK = 4
# from this many held-back samples on, half choose and half report (fewer: a decision on 4 samples is
# noise, measured: bias correction flipped on PP-OCRv4 det and cost 2.5 dB on held-out data)
SPLIT_HELD_BACK = 12


@dataclass(frozen=True)
class Prepared:
    """The float model as quantized (target opset, names, BatchNorm folded, equalized), indexed and placed."""

    source: str
    float_model: onnx.ModelProto
    idx: GraphIndex
    placed: Placement               # the placement rules' plan (before mixed precision)
    tensor_methods: dict            # tensor -> range method the smoothing chose with it
    equalization: str = ""          # graph.equalize.record of what was equalized ("" none)


@dataclass(frozen=True)
class Samples:
    """The calibration and the samples set aside (``none_held``: too few, all calibrated on)."""

    cal: Calibration
    split: HoldOut | None = None
    none_held: bool = False

    @property
    def held_sources(self) -> list | None:
        return None if self.none_held or self.split is None else list(self.split.held_sources)


@dataclass(frozen=True)
class Macs:
    counts: dict                    # layer id -> MACs (known ones)
    shapes: dict                    # input -> the shape they were counted at (the data's)
    source: str                     # data | shape inference
    unknown: list                   # labels of the layers whose MACs are unknown


def prepare_model(model, calib, imported, given, opts: Options, warnings: list) -> Prepared:
    """The target's float model, equalized if asked, indexed and placed; every placed tensor has a range source."""
    source = str(model) if not isinstance(model, onnx.ModelProto) else (model.graph.name or "model")
    fm = prepare(model, opts.graph.target, source, warnings)
    ops = sorted({n.op_type for n in fm.graph.node} & TRT85_UNSUPPORTED)
    if opts.graph.target == "trt8" and ops:
        warnings.append(f"ops {ops} are not parsed by TensorRT 8.5; use --target trt10 or replace them")
    flow = [n.name for n in fm.graph.node if subgraphs(n)]
    if flow:
        warnings.append(f"{len(flow)} nodes with subgraphs (If/Loop/Scan: {', '.join(flow[:3])}) are left "
                        "in float; only the main graph is quantized")
    fm, methods, done = equalized(fm, calib, opts, warnings)
    fm = hold(fm)   # the weights preparation changed (BatchNorm folded, smoothed) held like the rest
    idx = GraphIndex.build(fm)
    force = tuple(imported.amax) if imported is not None and opts.ranges.force_ranges else ()
    plan = place(idx, opts.graph.exclude, force=force, int8_deconv=opts.graph.int8_deconv)
    if not plan.quantized_layers:
        raise QdqError(f"{source}: no layer to quantize: {why_none(idx, plan)}")
    text = check_sources(imported, given.stats if given is not None else None, list(plan.activations),
                         tensor_names(idx), calib is not None, source)
    if text:
        notice(text, opts.quiet)
        warnings.append(text)
    return Prepared(source, fm, idx, plan, methods, done)


def equalized(fm: onnx.ModelProto, calib, opts: Options, warnings: list) -> tuple:
    """Cross-layer equalization and SmoothQuant when asked: (model, tensor -> range method chosen with it,
    :func:`qdq.graph.equalize.record` of both)."""
    methods, smoothed = {}, {}
    if opts.graph.equalize:
        fm, n = cross_layer_equalization(fm)
        if n:
            warnings.append(f"cross-layer equalization rescaled {n} Conv pairs")
    if opts.graph.smoothquant != "off" and calib is not None and smoothable(fm):
        feeds = first_feeds(Dataset(calib, model_inputs(fm), opts.data.preprocess or Preprocess(), limit=opts.data.limit), 16)
        fm, smoothed = smooth_quant(fm, feeds, layernorm_only=opts.graph.smoothquant == "auto")
        methods = {t: d.method for t, d in smoothed.items() if d.method}
        if smoothed:
            warnings.append(smoothing_note(smoothed, opts.graph.smoothquant))
    return fm, methods, record(smoothed, opts.graph.equalize)


def remainder_wanted(opts: Options) -> bool:
    """trt11 writes an FP16 remainder; trt8/trt10 files run with one on the device (unless --remainder fp32)."""
    return opts.graph.target == "trt11" or opts.accuracy.remainder == "fp16"


def calibrate_samples(prep: Prepared, model, calib, given: Calibration | None, opts: Options, warnings: list) -> Samples:
    """One streaming pass; a seeded random fifth of the samples held back (all used when too few); the
    prepared model checked against the user's on the first two samples."""
    if calib is None:
        return Samples(given or Calibration())
    idx, fm = prep.idx, prep.float_model
    inputs = model_inputs(fm)
    dataset = Dataset(calib, inputs, opts.data.preprocess or Preprocess(), limit=opts.data.limit)
    batch = 1 if any(s.shape and s.shape[0] is not None and s.shape[0] < opts.data.batch_size for s in inputs) \
        else opts.data.batch_size   # a fixed batch dim: run one sample at a time
    split = HoldOut(dataset)
    tensors = calibration_tensors(idx, prep.placed)
    range_only = [t for t in idx.dtypes if idx.is_float(t) and t not in idx.constants] if remainder_wanted(opts) else ()
    if given is None:
        cal = calibrate(fm, split, tensors, range_only, batch, opts.data.providers, opts.quiet, shapes=layer_tensors(idx))
    else:
        cal = given
        for _ in split:   # the samples are needed, not their statistics
            pass
    none_held = len(split.held) < MIN_HELD_BACK
    if none_held:   # too few to set some aside: calibrate on them too, measure on calibration samples
        total = len(split.rest) + len(split.held)
        if given is None and split.held:
            calibrate(fm, Feeds(inputs, split.held), tensors, range_only, 1, opts.data.providers, True, into=cal)
        split.kept, split.held = (split.kept + split.held)[:6], split.rest + split.held
        if opts.accuracy.mixed_precision:
            warnings.append(f"only {cal.samples} samples: none held back; the file was measured on {total} of the "
                            "calibration samples themselves (20 or more let qdq hold some back)")
    check_prepared(model, fm, (split.kept or split.held)[:2], prep.source)
    return Samples(cal, split, none_held)


def count_macs(prep: Prepared, samples: Samples, warnings: list) -> Macs:
    """Each weighted layer's MACs at the dims calibration ran it with (shape inference without data);
    a layer still unknown is named, never counted as 0."""
    split, cal, idx = samples.split, samples.cal, prep.idx
    first = (split.kept or split.held or [None])[0] if split is not None else None
    shapes = data_shapes(first) if first is not None else {}
    if cal.shapes:
        macs, source = measured_macs(idx, cal.shapes, cal.shape_samples), "data"
    else:
        macs, source = weighted_macs(prep.float_model, shapes or None), "shape inference"
    unknown = [idx.labels[p] for p, m in macs.items() if m is None]
    if unknown:
        warnings.append(f"the MACs of {len(unknown)} weighted layers are unknown at the input shapes "
                        f"{shape_text(shapes) or 'of the model'} ({', '.join(unknown[:3])}{' …' if len(unknown) > 3 else ''}; "
                        "pass --calib DATA to measure them): the INT8 share counts the known layers only")
    return Macs({p: m for p, m in macs.items() if m is not None}, shapes, source, unknown)


def massive_readers(prep: Prepared, cal: Calibration, warnings: list) -> tuple:
    """Tensors whose largest values stand orders of magnitude above the rest (max|x| ≥ 100 × the 99th
    percentile) are said; their quantized readers (layer ids) become one decision for mixed precision."""
    plan = prep.placed
    found = {t: r for t in plan.activations if t in cal.stats and (r := massive(cal.stats[t])) >= MASSIVE_RATIO}
    if found:
        top = sorted(found, key=found.get, reverse=True)[:4]
        warnings.append("massive activations: " + ", ".join(f"{t!r} (max {found[t]:.0f}x its 99th percentile)"
                        for t in top) + (" …" if len(found) > 4 else "") + ": a few tokens or channels carry values "
                        "orders of magnitude above the rest; mixed precision decides on their consumers together")
    return tuple(sorted({p for t in found for p, _ in plan.activations[t] if p in plan.quantized_layers}))


def fp16_remainder(prep: Prepared, samples: Samples, opts: Options, warnings: list):
    """Which nodes of the FP16 remainder stay FP32 (range, measured error, an output floor of 35 dB for
    now; the final figures raise it to the file's own SQNR + 10 dB)."""
    if not remainder_wanted(opts):
        return None
    cal = samples.cal
    if not cal.samples:
        warnings.append("no calibration data: FP16 overflow and precision of the remainder were not checked")
    extrema = cal.extrema | {t: (s.min, s.max) for t, s in cal.stats.items()}
    feeds = samples.split.kept if samples.split else []
    return fp16_plan(prep.float_model, extrema, feeds, floor_db=FP16_OUTPUT_MIN_DB, idx=prep.idx)


def held_back(prep: Prepared, samples: Samples, fp16, opts: Options) -> tuple:
    """The held-back samples' references, task and device view (the FP16 remainder with the plan's FP32
    nodes): from 12 on, every other one chooses (method auto, bias correction, mixed precision's stop,
    the FP16 floor) and the rest report the file's figures.  (check, reporter), or (None, None)."""
    held = samples.split.held if samples.split is not None else []
    if not held:
        return None, None
    idx, fm = prep.idx, prep.float_model

    def device(model):   # reads the plan as it stands: the final figures raise its floor
        return runnable(model) if fp16 is None else remainder_fp16(model, set(fp16.names(idx)))

    if len(held) >= SPLIT_HELD_BACK and not samples.none_held:
        check = HeldBack(fm, held[0::2], opts.accuracy.task, device)
        return check, HeldBack(fm, held[1::2], opts.accuracy.task, device, check.task)
    check = HeldBack(fm, held, opts.accuracy.task, device)
    return check, check
