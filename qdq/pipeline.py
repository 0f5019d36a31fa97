"""The main job: float ONNX + data → TensorRT-ready Q/DQ ONNX, with a summary.

``quantize`` composes passes, each a function from frozen results to a frozen result, in the order
their types make (data flows one way: :mod:`qdq.calib` → :mod:`qdq.graph` → :mod:`qdq.measure` →
:mod:`qdq.report`):

1. :mod:`qdq.stages`: *prepare* and *place* (:class:`~qdq.stages.Prepared`), *calibrate* with a seeded
   random fifth of the samples held back (:class:`~qdq.stages.Samples`), *MACs* at the data's dims,
   *massive activations*, the *FP16 remainder*'s plan, the *held-back* references (every other one
   chooses from 12 on, the rest report);
2. :mod:`qdq.measure.choices`: the range *method*, the output-referred *analysis*, *bias correction*,
   *mixed precision*, the file's *figures* (:class:`Decided`);
3. :mod:`qdq.graph.writer`: the file, checked once; :mod:`qdq.report.summary`: its metadata and summary.

The float weights are held once, in one store (:func:`qdq.calib.session.shared_weights`): the float model is a
skeleton whose large initializers every pass and every ONNX Runtime session read there
(:func:`qdq.calib.session.hold`); the models returned are whole.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from .calib.calibrate import Calibration
from .calib.data import Feeds, model_inputs
from .calib.range_files import RangeFile, range_warnings, read_ranges
from .calib.session import feed_large, fill, keep_held, model_bytes, release, shared_weights
from .graph.index import GraphIndex
from .graph.placement import Placement
from .graph.precision import has_fp16
from .graph.rewrite import set_metadata
from .graph.writer import RangeBook, build_model
from .measure.analysis import analyze
from .measure.choices import (BiasChoice, BoundChoice, Candidates, Figures, MethodChoice, Mixed, choose_bounds,
                              choose_method, correct_bias, final_figures, mixed_precision, target_warning, task_test)
from .measure.comparison import compare
from .measure.mixed_precision import GROUPS
from .report.summary import RunFacts, Summary, metadata, summarize
from . import stages as S
from .options import Options
from .stages import Prepared, Samples


@dataclass
class QuantizeResult:
    model: onnx.ModelProto
    summary: Summary
    ranges: dict            # activation tensor -> Range (after scale sharing)
    placement: Placement
    calibration: Calibration | None
    float_model: onnx.ModelProto | None = None   # the float model at the target opset
    index: GraphIndex | None = None
    fp16: object | None = None                   # trt11: the qdq.measure.autocast.Fp16Plan of the remainder
    analysis: object | None = None               # the qdq.measure.analysis.Analysis of the full placement
    bias: dict = field(default_factory=dict)     # layer id -> bias correction applied
    macs: dict = field(default_factory=dict)     # layer id -> multiply-accumulates
    book: RangeBook | None = None                # the ranges of any placement, made as ``ranges`` were


def quantize(model, calib=None, *, ranges=None, calibration: Calibration | None = None, **options) -> QuantizeResult:
    """Calibrate ``model`` (path or ModelProto) on ``calib`` (path, see :class:`qdq.calib.data.Dataset`)
    and return the Q/DQ model with its summary.  Nothing is written to disk.

    ``ranges`` (a path or :class:`qdq.calib.range_files.RangeFile`) supplies amax values that win over
    calibration; tensors it does not cover are calibrated on ``calib``.  With ``force_ranges`` its
    tensors get Q/DQ even where the placement rules would not put one.  ``calibration`` reuses the
    statistics of an earlier pass (e.g. ``result.calibration``) instead of running a new one.

    ``options`` (:class:`Options`): ``method`` (mse, percentile, entropy, max, or auto: whichever of
    mse, percentile and max measures best on the held-back samples and on them scaled by 1.25), ``percentile``,
    ``batch_size``, ``target`` (trt10, trt8, trt11), ``exclude`` patterns, ``preprocess``, ``limit``,
    ``providers``, ``quiet``, ``force_ranges``, and the accuracy passes: with calibration data a seeded
    random fifth of the samples (up to 32, spread over sub-folders) is held back from range fitting (with 12
    or more, every other one makes the choices below and the rest report the file's figures); :mod:`qdq.measure.analysis` measures each
    site at its consumer's output on 6 of the others; ``bias_correction`` folds each layer's mean INT8
    error into its bias; ``mixed_precision`` keeps the layers whose INT8 costs most per MAC in float
    until the held-back output SQNR is within ``max_loss_db`` of the weights-only figure, the INT8 share
    of MACs never below ``min_int8_share`` (the target counts as reached on the lower end of the
    interval of the gap, not its point estimate); ``max_task_loss`` then keeps more layers in float
    until the held-back task agreement (``task``, :class:`qdq.measure.tasks.TaskOptions`) is within it
    of FP32; ``device_profile`` (a folder with the device's trtexec profiles of both engines) counts a
    layer's MACs by the time INT8 saves there (:func:`qdq.measure.mixed_precision.rank`).  Every held-back figure is measured as the device runs the file: ``remainder="fp16"``
    runs the non-INT8 layers in FP16 but those the FP16 plan pins to FP32 (written to the file's
    ``qdq_fp32_nodes`` metadata for TensorRT 8.x/10.x), ``"fp32"`` as written.  ``smoothquant`` and
    ``equalize`` (cross-layer equalization) rescale the float model first (:mod:`qdq.graph.equalize`)."""
    opts = Options.of(**options)
    imported = ranges if ranges is None or isinstance(ranges, RangeFile) else read_ranges(ranges)
    with shared_weights():
        result = _quantize(model, calib, imported, calibration, opts)
        # whole models for the caller; the float weights move out of the store, not copied beside it
        fill(result.model)
        fill(result.float_model, move=True)
        return result


def _quantize(model, calib, imported: RangeFile | None, given: Calibration | None, opts: Options) -> QuantizeResult:
    """The passes in the order their types make: each takes what the earlier ones returned."""
    warnings: list = []
    prep = S.prepare_model(model, calib, imported, given, opts, warnings)
    release(nbytes := model_bytes(prep.float_model))
    feed_large(nbytes)
    samples = S.calibrate_samples(prep, model, calib, given, opts, warnings)
    keep_held(prep.float_model)   # what the preparation replaced served only the check of the user's model
    release(nbytes)
    macs = S.count_macs(prep, samples, warnings)
    readers = S.massive_readers(prep, samples.cal, warnings)
    fp16 = S.fp16_remainder(prep, samples, opts, warnings)
    release(nbytes)
    check, reporter = S.held_back(prep, samples, fp16, opts)
    decided = _decide(prep, samples, macs, readers, fp16, check, reporter, imported, opts, warnings)
    release(nbytes)
    result = _finish(prep, samples, macs, decided, imported, given is not None or calib is not None, opts, warnings)
    release(nbytes)   # before the caller serializes the file: the next peak, on top of what is left
    return result


@dataclass(frozen=True)
class Decided:
    """What the measurements chose: the range method, known ranges, bias correction, mixed precision, the
    file's figures."""

    method: MethodChoice
    bounds: BoundChoice
    bias: BiasChoice
    mixed: Mixed | None
    plan: Placement
    ranges: dict
    book: RangeBook                 # the ranges of any placement, as the file's were made
    analysis: object | None
    fp16: object | None             # the qdq.measure.autocast.Fp16Plan of the remainder
    figures: Figures | None
    reached: bool | None


def _decide(prep, samples, macs, readers, fp16, check, reporter, imported, opts: Options, warnings: list) -> Decided:
    """Method, known ranges, analysis, bias correction, mixed precision, range warnings and the file's figures."""
    acc = opts.accuracy
    book = RangeBook(samples.cal, opts.ranges.method, opts.ranges.percentile, imported, prep.tensor_methods)
    nbytes = model_bytes(prep.float_model)
    keep = None if fp16 is None or has_fp16(prep.float_model) else (lambda: fp16.names(prep.idx))
    method = choose_method(Candidates(prep.float_model, prep.idx, book, keep), prep.placed, check, opts.ranges.method)
    warnings += [method.warning] if method.warning else []
    cands = Candidates(prep.float_model, prep.idx, book.using(method.method), keep)
    bounds = choose_bounds(cands, prep.placed, check, method.int8)
    if bounds.bounds:
        cands = Candidates(prep.float_model, prep.idx, cands.book.bounded(bounds.bounds), keep)
    split, analysis = samples.split, None
    if split is not None and split.kept and (acc.bias_correction or acc.mixed_precision):
        analysis = analyze(prep.float_model, prep.idx, prep.placed, cands.book.ranges(prep.placed), split.kept,
                           opts.quiet, groups=GROUPS if acc.mixed_precision else 0)
        release(nbytes)
    bias = correct_bias(cands, prep.placed, analysis, check, acc.bias_correction, bounds.int8)
    release(nbytes)
    mixed = None
    if acc.mixed_precision and check is not None and analysis is not None:
        task_ok, why = task_test(check, prep.float_model, acc.max_task_loss, acc.task.confirmed)
        warnings += [why] if why else []
        mixed = mixed_precision(cands, prep.placed, analysis, check, bias, macs.counts, readers, acc, task_ok)
        warnings += mixed.warnings
        release(nbytes)
    plan = mixed.plan if mixed is not None else prep.placed
    ranges = cands.book.ranges(plan)
    warnings += range_warnings(ranges, samples.cal.stats, imported, list(plan.activations))
    figures = reached = None
    if check is not None:
        figures = final_figures(cands, plan, prep.placed, bias, mixed, check, reporter, fp16, samples.held_sources)
        if mixed is not None:
            reached, why = target_warning(figures, mixed.choice, acc.max_loss_db, acc.max_task_loss, acc.min_int8_share)
            warnings += [why] if why else []
    return Decided(method, bounds, bias, mixed, plan, ranges, cands.book, analysis, fp16, figures, reached)


def _finish(prep, samples, macs, d: Decided, imported, calibrated: bool, opts: Options, warnings: list) -> QuantizeResult:
    """The file (Q/DQ, FP16 remainder, metadata) and its summary."""
    plan, idx = d.plan, prep.idx
    used_bias = {p: b for p, b in d.bias.bias.items() if p in plan.quantized_layers}
    qmodel, notes = build_model(prep.float_model, idx, plan, d.ranges, opts.graph.target, d.fp16, warnings, d.bias.bias)
    total = sum(macs.counts.values()) or 1
    int8_share = sum(macs.counts.get(p, 0) for p in plan.quantized_layers) / total
    facts = RunFacts(opts, idx, prep.placed, d, macs, samples.cal.samples, imported, calibrated, int8_share, len(used_bias),
                     prep.equalization)
    set_metadata(qmodel, metadata(facts))
    summary = summarize(facts, prep.source, qmodel, notes, warnings)
    summary.diagnosis = _diagnosis(prep, samples, qmodel, imported, plan, opts)
    return QuantizeResult(qmodel, summary, d.ranges, plan, samples.cal, prep.float_model, idx, d.fp16, d.analysis,
                          used_bias, macs.counts, d.book)


def _diagnosis(prep: Prepared, samples: Samples, qmodel, imported, plan: Placement, opts: Options) -> list:
    """With imported ranges: what they cost, from a layer-by-layer comparison on the held-back samples
    (the calibration samples when none are held back)."""
    split = samples.split
    if imported is None or split is None or not (split.held or split.kept) or not plan.activations:
        return []
    feeds = Feeds(model_inputs(prep.float_model), split.held or split.kept, "held-back samples")
    return compare(prep.float_model, qmodel, feeds, layerwise=True, budget=False, quiet=True, task=opts.accuracy.task,
                   remainder=opts.accuracy.remainder, float_prepared=True).diagnosis
