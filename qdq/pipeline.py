"""The main job: float ONNX + data → TensorRT-ready Q/DQ ONNX, with a summary.

``quantize`` is a short orchestration of named passes over one prepared float model (data flows one
way: :mod:`qdq.calib` → :mod:`qdq.graph` → :mod:`qdq.measure`):

1. *prepare* (:func:`qdq.targets.prepare`), optional equalization, *place* (:mod:`qdq.graph.placement`);
2. *calibrate* (:mod:`qdq.calib.calibrate`), a seeded random fifth of the samples (up to 32, spread over
   sub-folders: :class:`qdq.calib.data.HoldOut`) held back: every other one chooses, the rest report;
3. *analyse* each site at its consumer's output (:mod:`qdq.measure.analysis`);
4. *bias correction*, kept where it measurably helps on the held-back samples;
5. *mixed precision* (:mod:`qdq.measure.mixed_precision`);
6. *FP16 remainder* for ``trt11`` (:mod:`qdq.measure.autocast`);
7. *build*: Q/DQ insertion and the FP16 cast on one graph, checked once (:func:`build_model`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .calib.calibrate import Calibration, calibrate
from .calib.data import Dataset, Feeds, HoldOut, Preprocess, first_feeds, model_inputs
from .calib.session import shared_weights
from .calib.range_files import RangeFile, check_sources, range_warnings, read_ranges
from .calib.ranges import DEFAULT_METHOD, MASSIVE_RATIO, METHODS, Range, clipped_fraction, compute_range, massive
from .errors import QdqError
from .graph.equalize import cross_layer_equalization, smooth_quant, smoothable
from .graph.index import GraphIndex
from .graph.placement import Placement, attention_units, calibration_tensors, place, replace, served_layers, why_none
from .graph.bypass import weights_only
from .graph.precision import FP16_OUTPUT_MIN_DB, remainder_fp16, runnable
from .graph.rewrite import set_metadata
from .graph.writer import build_model, share_ranges
from .graph.shapes import data_shapes, layer_tensors, measured_macs, shape_text, weighted_macs
from .measure.analysis import analyze
from .measure.autocast import fp16_plan, raise_floor
from .measure.comparison import compare
from .measure.heldback import HeldBack
from .measure.mixed_precision import GROUPS, by_unit, candidates, choose
from .measure.tasks import TaskOptions
from .measure.prepared import check_prepared
from .modelio import load_model, opset_of
from .progress import notice
from .report.summary import Summary, import_report, tensor_names
from .targets import TRT85_UNSUPPORTED, check_target, prepare
from .version import __version__

# fewer held-back samples than this and mixed precision is measured on calibration samples
MIN_HELD_BACK = 4
# from this many held-back samples on, half choose and half report (fewer: a decision on 4 samples is
# noise, measured: bias correction flipped on PP-OCRv4 det and cost 2.5 dB on held-out data)
SPLIT_HELD_BACK = 12
# what --method auto chooses among (entropy, the TensorRT calibrator's algorithm, clips saturated outputs)
AUTO_METHODS = ("mse", "percentile", "max")


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


@dataclass
class Options:
    """The choices of one ``quantize`` call (see its docstring), validated."""

    method: str = DEFAULT_METHOD
    percentile: float = 99.99
    batch_size: int = 1
    target: str = "trt10"
    exclude: tuple = ()
    preprocess: Preprocess | None = None
    limit: int | None = None
    providers: list | None = None
    quiet: bool = False
    force_ranges: bool = False
    mixed_precision: bool = True
    max_loss_db: float = 2.0
    min_int8_share: float = 0.85
    bias_correction: bool = True
    smoothquant: str = "auto"               # auto: LayerNorm → MatMul only | all | off (qdq.graph.equalize)
    equalize: bool = False
    remainder: str = "fp16"                 # how the held-back check runs the non-INT8 layers: fp16 | fp32
    task: TaskOptions = field(default_factory=TaskOptions)
    max_task_loss: float | None = None      # keep layers in float until the task agreement is within this of FP32
    int8_deconv: bool = False               # quantize ungrouped ConvTranspose (TensorRT 8.x/10.x)
    fallback_imported: bool = False         # let mixed precision float layers that read imported ranges

    def __post_init__(self):
        if self.method not in METHODS + ("auto",):
            raise QdqError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS + ('auto',))}")
        if self.smoothquant not in ("auto", "all", "off"):
            raise QdqError(f"--smoothquant must be auto, all or off, got {self.smoothquant!r}")
        if self.remainder not in ("fp16", "fp32"):
            raise QdqError(f"--remainder must be fp16 or fp32, got {self.remainder!r}")
        if self.max_task_loss is not None and not 0.0 <= self.max_task_loss <= 1.0:
            raise QdqError(f"--max-task-loss must be between 0 and 1, got {self.max_task_loss}")
        if self.batch_size < 1:
            raise QdqError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.min_int8_share <= 1.0:
            raise QdqError(f"--min-int8-share must be between 0 and 1, got {self.min_int8_share}")
        check_target(self.target)
        self.exclude = tuple(self.exclude or ())


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
    of FP32.  Every held-back figure is measured as the device runs the file: ``remainder="fp16"``
    runs the non-INT8 layers in FP16 but those the FP16 plan pins to FP32 (written to the file's
    ``qdq_fp32_nodes`` metadata for TensorRT 8.x/10.x), ``"fp32"`` as written.  ``smoothquant`` and
    ``equalize`` (cross-layer equalization) rescale the float model first (:mod:`qdq.graph.equalize`)."""
    with shared_weights():
        return _quantize(_Run(model, Options(**options), calib, ranges, calibration))


def _quantize(run: "_Run") -> QuantizeResult:
    run.prepare()
    run.calibrate()
    run.find_massive()
    run.fp16_remainder()
    run.held_back()
    run.choose_method()
    run.analyse()
    run.correct_bias()
    run.mixed_precision()
    run.check_ranges()
    run.final_check()
    return run.finish()


class _Run:
    """The state one ``quantize`` call builds up, pass by pass."""

    def __init__(self, model, opts: Options, calib, ranges, calibration: Calibration | None):
        self.opts, self.calib_path, self.model_arg = opts, calib, model
        self.source = str(model) if not isinstance(model, onnx.ModelProto) else (model.graph.name or "model")
        self.imported = ranges if ranges is None or isinstance(ranges, RangeFile) else read_ranges(ranges)
        self.given_calibration = calibration
        self.cal, self.split, self.analysis, self.check, self.choice = calibration or Calibration(), None, None, None, None
        self.fp16, self.bias, self.bias_mode, self.int8, self.warnings = None, {}, "off", None, []
        self.method, self.method_scores, self.accuracy, self._computed = opts.method, {}, None, {}
        self.none_held, self.mac_shapes, self.macs, self.tensor_methods = False, {}, {}, {}
        self.mac_unknown, self.mac_source, self.reached = [], "shape inference", None
        self.reporter, self.reported_int8 = None, []
        self.massive = {}

    def prepare(self) -> None:
        """The target's float model, equalized if asked, indexed and placed."""
        o, w = self.opts, self.warnings
        fm = prepare(self.model_arg, o.target, self.source, w)
        if o.target == "trt8" and sorted({n.op_type for n in fm.graph.node} & TRT85_UNSUPPORTED):
            w.append(f"ops {sorted({n.op_type for n in fm.graph.node} & TRT85_UNSUPPORTED)} are not parsed by "
                     "TensorRT 8.5; use --target trt10 or replace them")
        subgraphs = [n.name for n in fm.graph.node
                     if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)]
        if subgraphs:
            w.append(f"{len(subgraphs)} nodes with subgraphs (If/Loop/Scan: {', '.join(subgraphs[:3])}) are left "
                     "in float; only the main graph is quantized")
        self.float_model = self._equalized(fm)
        self.idx = GraphIndex.build(self.float_model)
        force = tuple(self.imported.amax) if self.imported is not None and o.force_ranges else ()
        self.plan = self.placed = place(self.idx, o.exclude, force=force, int8_deconv=o.int8_deconv)
        if not self.plan.quantized_layers:
            raise QdqError(f"{self.source}: no layer to quantize: {why_none(self.idx, self.plan)}")
        self._check_range_sources()

    def _equalized(self, fm: onnx.ModelProto) -> onnx.ModelProto:
        o = self.opts
        if o.equalize:
            fm, n = cross_layer_equalization(fm)
            if n:
                self.warnings.append(f"cross-layer equalization rescaled {n} Conv pairs")
        if o.smoothquant != "off" and self.calib_path is not None and smoothable(fm, o.smoothquant):
            feeds = first_feeds(Dataset(self.calib_path, model_inputs(fm), o.preprocess or Preprocess(), limit=o.limit), 16)
            fm, smoothed = smooth_quant(fm, feeds, layernorm_only=o.smoothquant == "auto")
            self.tensor_methods = {t: m for t, m in smoothed.items() if m}   # chosen with the smoothing
            if smoothed:
                self.warnings.append(f"SmoothQuant moved the channel ranges of {len(smoothed)} activations into the next layers' "
                                     "weights" + (" (LayerNorm scale and bias; --smoothquant off to skip)"
                                                  if o.smoothquant == "auto" else ""))
        return fm

    def _check_range_sources(self) -> None:
        """Every placed tensor has a range source; entries naming no tensor are said now."""
        imp, cal = self.imported, self.given_calibration
        text = check_sources(imp, cal.stats if cal is not None else None, list(self.plan.activations),
                             tensor_names(self.idx), self.calib_path is not None, self.source)
        if text:
            notice(text, self.opts.quiet)
            self.warnings.append(text)

    def calibrate(self) -> None:
        """One streaming pass; a seeded random fifth of the samples held back (all used when too few)."""
        o = self.opts
        if self.calib_path is not None:
            inputs = model_inputs(self.float_model)
            dataset = Dataset(self.calib_path, inputs, o.preprocess or Preprocess(), limit=o.limit)
            batch = 1 if any(s.shape and s.shape[0] is not None and s.shape[0] < o.batch_size for s in inputs) \
                else o.batch_size   # a fixed batch dim: run one sample at a time
            self.split = HoldOut(dataset)
            tensors = calibration_tensors(self.idx, self.plan)
            range_only = [t for t in self.idx.dtypes if self.idx.is_float(t) and t not in self.idx.constants] \
                if self.fp16_remainder_wanted else ()
            if self.given_calibration is None:
                self.cal = calibrate(self.float_model, self.split, tensors, range_only, batch, o.providers, o.quiet,
                                     shapes=layer_tensors(self.idx))
            else:
                for _ in self.split:   # the samples are needed, not their statistics
                    pass
            if len(self.split.held) < MIN_HELD_BACK:
                self._use_all_samples(inputs, tensors, range_only)
            first = (self.split.kept or self.split.held)[:2]
            user = self.model_arg if isinstance(self.model_arg, onnx.ModelProto) else load_model(self.model_arg)
            check_prepared(user, self.float_model, first, self.source)
        self._count_macs()

    def _count_macs(self) -> None:
        """Each weighted layer's MACs at the dims calibration ran it with (shape inference without data);
        a layer still unknown is named, never counted as 0."""
        first = (self.split.kept or self.split.held or [None])[0] if self.split is not None else None
        self.mac_shapes = data_shapes(first) if first is not None else {}
        if self.cal.shapes:
            macs, self.mac_source = measured_macs(self.idx, self.cal.shapes, self.cal.shape_samples), "data"
        else:
            macs, self.mac_source = weighted_macs(self.float_model, self.mac_shapes or None), "shape inference"
        self.mac_unknown = [self.idx.labels[p] for p, m in macs.items() if m is None]
        if self.mac_unknown:
            self.warnings.append(f"the MACs of {len(self.mac_unknown)} weighted layers are unknown at the input shapes "
                                 f"{shape_text(self.mac_shapes) or 'of the model'} ({', '.join(self.mac_unknown[:3])}"
                                 f"{' …' if len(self.mac_unknown) > 3 else ''}; pass --calib DATA to measure them): "
                                 "the INT8 share counts the known layers only")
        self.macs = {p: m for p, m in macs.items() if m is not None}

    def find_massive(self) -> None:
        """Tensors whose largest values stand orders of magnitude above the rest (max|x| ≥ 100 × the 99th
        percentile): said, and their consumers made one decision for mixed precision."""
        self.massive = {t: r for t in self.plan.activations if t in self.cal.stats
                        and (r := massive(self.cal.stats[t])) >= MASSIVE_RATIO}
        if self.massive:
            top = sorted(self.massive, key=self.massive.get, reverse=True)[:4]
            self.warnings.append("massive activations: " + ", ".join(f"{t!r} (max {self.massive[t]:.0f}x its 99th "
                                 "percentile)" for t in top) + (" …" if len(self.massive) > 4 else "") +
                                 ": a few tokens or channels carry values orders of magnitude above the rest; "
                                 "mixed precision decides on their consumers together")

    @property
    def fp16_remainder_wanted(self) -> bool:
        """trt11 writes an FP16 remainder; trt8/trt10 files run with one on the device (unless --remainder fp32)."""
        return self.opts.target == "trt11" or self.opts.remainder == "fp16"

    def _use_all_samples(self, inputs, tensors, range_only) -> None:
        """Too few samples to set some aside: calibrate on them too, and measure on (up to 16 + the few
        held back of) the calibration samples themselves."""
        split = self.split
        total = len(split.rest) + len(split.held)
        if self.given_calibration is None and split.held:
            calibrate(self.float_model, Feeds(inputs, split.held), tensors, range_only, 1, self.opts.providers, True,
                      into=self.cal)
        split.kept, split.held = (split.kept + split.held)[:6], split.rest + split.held
        self.none_held = True
        if self.opts.mixed_precision:
            self.warnings.append(f"only {self.cal.samples} samples: none held back; the file was measured on "
                                 f"{total} of the calibration samples themselves (20 or more let qdq hold some back)")

    def _ranges(self, plan: Placement, method: str | None = None) -> dict:
        """tensor -> Range for every activation of ``plan``: imported where given, else calibrated by
        ``method`` (the run's); then one amax per scale group."""
        imp, out, method = self.imported, {}, method or self.method
        for t in plan.activations:
            if imp is not None and t in imp.amax:
                a = imp.amax[t]
                out[t] = Range(a, f"imported ({imp.kind})", clipped_fraction(self.cal.stats[t], a) if t in self.cal.stats else None)
            else:   # candidates re-place the same tensors: each range is computed once
                key = (t, self.tensor_methods.get(t, method))
                if key not in self._computed:
                    self._computed[key] = compute_range(self.cal.stats[t], key[1], self.opts.percentile)
                out[t] = self._computed[key]
        return share_ranges(plan, out, self.cal, set(imp.amax) if imp is not None else ())

    def fp16_remainder(self) -> None:
        """Which nodes of the FP16 remainder stay FP32 (range, measured error, an output floor of 35 dB
        for now; :meth:`final_check` raises it to the file's own SQNR + 10 dB)."""
        if not self.fp16_remainder_wanted:
            return
        cal = self.cal
        if not cal.samples:
            self.warnings.append("no calibration data: FP16 overflow and precision of the remainder were not checked")
        extrema = cal.extrema | {t: (s.min, s.max) for t, s in cal.stats.items()}
        feeds = self.split.kept if self.split else []
        self.fp16 = fp16_plan(self.float_model, extrema, feeds, floor_db=FP16_OUTPUT_MIN_DB, idx=self.idx)

    def device(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A candidate (trt10 form) as the device runs it, ready for ONNX Runtime: the FP16 remainder with
        the plan's FP32 nodes (as written when there is no plan: --remainder fp32)."""
        if self.fp16 is None:
            return runnable(model)
        return remainder_fp16(model, set(self.fp16.names(self.idx)))

    def held_back(self) -> None:
        """The held-back samples' references, task and device view: with enough of them, every other one
        chooses (method auto, bias correction, mixed precision's stop, the FP16 floor) and the rest
        report the file's figure, so a selected figure is never the one printed."""
        held = self.split.held if self.split is not None else []
        if not held:
            return
        if len(held) >= SPLIT_HELD_BACK and not self.none_held:
            self.check = HeldBack(self.float_model, held[0::2], self.opts.task, self.device)
            self.reporter = HeldBack(self.float_model, held[1::2], self.opts.task, self.device, self.check.task)
        else:
            self.check = self.reporter = HeldBack(self.float_model, held, self.opts.task, self.device)

    def choose_method(self) -> None:
        """``auto``: of mse, percentile and max, the one whose all-INT8 file loses least on the held-back
        samples and on them scaled by 1.25 (noise powers added)."""
        if self.method != "auto":
            self.ranges = self._ranges(self.plan)
            return
        if self.check is None:
            self.method = DEFAULT_METHOD
            self.warnings.append(f"--method auto needs held-back samples; used {DEFAULT_METHOD}")
        else:
            for m in AUTO_METHODS:
                model = self.build(self.plan, self._ranges(self.plan, m), {})
                nsr = [10 ** (-ev.measure(model).sqnr().value / 10) for ev in (self.check.ev, self.check.robust())]
                self.method_scores[m] = -10 * np.log10(sum(nsr) / 2)
            self.method = max(self.method_scores, key=self.method_scores.get)
        self.ranges = self._ranges(self.plan)

    def analyse(self) -> None:
        """The output-referred analysis on kept samples."""
        o, split = self.opts, self.split
        if split is not None and split.kept and (o.bias_correction or o.mixed_precision):
            self.analysis = analyze(self.float_model, self.idx, self.plan, self.ranges, split.kept, o.quiet,
                                    groups=GROUPS if o.mixed_precision else 0)

    def build(self, plan: Placement, ranges: dict, bias: dict, check: bool = False) -> onnx.ModelProto:
        """A trt10 candidate for evaluation (not written)."""
        return build_model(self.float_model, self.idx, plan, ranges, "trt10", bias=bias, check=check)[0]

    def _weights_view(self, plan: Placement) -> onnx.ModelProto:
        """``plan``'s file with only its weights quantized, its biases correcting the weights' error alone
        (a correction of the activations' error would be a stale shift without them)."""
        bias = self.analysis.weight_bias if self.bias_mode == "full" and self.analysis is not None else self.bias
        return weights_only(self.build(plan, self._ranges(plan), bias))

    def correct_bias(self) -> None:
        """Full, weight-only or no bias correction: whichever measures best on the held-back samples."""
        a = self.analysis
        if a is None or not self.opts.bias_correction:
            return
        options = {"full": a.bias, "weights": a.weight_bias, "off": {}}
        if self.check is None:
            self.bias_mode = "full"
        else:   # kept only where it measurably helps on the held-back samples
            ev = self.check.ev
            scores = {mode: ev.measure(self.build(self.plan, self.ranges, options[mode])) for mode in ("full", "off")}
            if scores["full"].sqnr().value < scores["off"].sqnr().value + 1.0:   # not a clear win: try weight-only
                scores["weights"] = ev.measure(self.build(self.plan, self.ranges, options["weights"]))
            self.bias_mode = max(scores, key=lambda k: scores[k].sqnr().value)
            self.int8 = scores[self.bias_mode]
        self.bias = options[self.bias_mode]

    def mixed_precision(self) -> None:
        """Keep the costliest layers in float until within ``max_loss_db`` of the weights-only figure
        (and, with ``max_task_loss``, until the task agreement is within it of FP32)."""
        o = self.opts
        if not o.mixed_precision or self.check is None or self.analysis is None:
            return

        units = [u for u in attention_units(self.idx) if set(u) <= set(self.plan.quantized_layers)]
        readers = tuple(sorted({p for t in self.massive for p, _ in self.plan.activations[t]
                                if p in self.plan.quantized_layers}))
        units += [readers] if len(readers) > 1 else []
        every = candidates(self.analysis, self.plan.quantized_layers, self.bias_mode == "full")
        kept = self._imported_stay(every)
        held = set(every) - set(kept)   # a block with one MatMul reading imported ranges stays INT8 whole
        kept = {p: v for p, v in kept.items() if not any(p in u and held & set(u) for u in units)}
        cands, macs, expand = by_unit(kept, {p: self.macs.get(p, 0) for p in self.plan.quantized_layers}, units)

        def build(float_layers, weights=False):   # an attention block moves as a whole
            p = replace(self.idx, self.plan, {q: "float" for q in expand(float_layers)})
            return self._weights_view(p) if weights else self.build(p, self._ranges(p), self.bias)

        self.choice = c = choose(cands, macs, build, self.check.ev, o.max_loss_db, o.min_int8_share,
                                 total_macs=sum(self.macs.values()), int8=self.int8, task_ok=self._task_ok(),
                                 weights=lambda fl: build(fl, True))
        c.float_layers = {q: db for p, db in c.float_layers.items() for q in sorted(expand({p}))}
        if c.float_layers:
            self.plan = replace(self.idx, self.plan, {p: f"kept in float: its INT8 would cost {db:.2f} dB (mixed precision)"
                                                      for p, db in c.float_layers.items()})
            self.ranges = self._ranges(self.plan)

    def _imported_stay(self, cands: dict) -> dict:
        """Imported ranges are the user's decision: the layers reading them leave the candidates (unless
        ``fallback_imported``), and the user hears it when one of them is the costliest."""
        imp = self.imported
        if imp is None or self.opts.fallback_imported:
            return cands
        held = {p for t in imp.amax if t in self.plan.activations for p in served_layers(self.idx, self.plan, t)} & set(cands)
        if held and max(cands, key=cands.get) in held:
            costly = sorted(held, key=lambda p: -cands[p])[:3]
            self.warnings.append(f"the layers costing most in INT8 read your imported ranges "
                                 f"({', '.join(self.idx.labels[p] for p in costly)}); mixed precision keeps them in "
                                 "INT8 with your ranges (--fallback-imported lets it float them; the diagnosis says "
                                 "what each range costs)")
        return {p: c for p, c in cands.items() if p not in held}

    def _task_ok(self):
        """``max_task_loss`` as a test on a measurement: the lower end of the task's headline interval
        within it of what FP32 scores against itself."""
        o, task = self.opts, self.check.task if self.check else None
        if o.max_task_loss is None or task is None or task.name == "none":
            return None
        if task.detected and not o.task.confirmed:   # a guess never decides unseen
            self.warnings.append(f"--max-task-loss did not act: the task {task.name} was inferred ({task.reason}); "
                                 f"name it (--task {task.name}, or --task auto to accept the inference)")
            return None
        head = task.figures_of[0]
        best = self.check.ev.measure(self.float_model).task_figures()[head].value   # FP32 against itself
        return lambda m: m.task_figures()[head].low >= best - o.max_task_loss

    def check_ranges(self) -> None:
        """Warnings on the ranges: zero or constant tensors, and what an imported file lost."""
        self.warnings += range_warnings(self.ranges, self.cal.stats, self.imported, list(self.plan.activations))

    def final_check(self) -> None:
        """The FP16 plan's floor raised to the file's SQNR + 10 dB (≤ 0.4 dB added), then the file, its
        weights alone and the ×1.25 data measured on the held-back samples as the device runs them."""
        if self.check is None:
            return
        model = self.build(self.plan, self.ranges, self.bias)
        final = self.choice.final if self.choice is not None else self.check.ev.measure(model)
        floor = min(max(final.sqnr().value + 10, FP16_OUTPUT_MIN_DB), 50.0)
        if self.fp16 is not None and raise_floor(self.fp16, self.float_model, floor):
            final = self.check.ev.measure(model)
        rep = self.reporter
        if rep is not self.check:   # the figures printed, on samples no decision saw
            final = rep.ev.measure(model)
            if self.choice is not None:
                self.reported_int8 = [rep.ev.measure(self.build(self.placed, self._ranges(self.placed), self.bias)),
                                      rep.ev.measure(self._weights_view(self.placed))]
        w = rep.ev.measure(self._weights_view(self.plan))
        self.accuracy = rep.report(final, w, rep.robust().measure(model))
        self._target_warning(final, w)
        self.accuracy["chosen_on"] = 0 if rep is self.check else len(self.check.feeds)
        self.accuracy["remainder"] = "fp16" if self.fp16 is not None else "fp32"
        self.accuracy["held_back"] = not self.none_held
        self.accuracy["held_back_sources"] = [] if self.none_held else list(self.split.held_sources)

    def _target_warning(self, final, weights) -> None:
        """Mixed precision's target missed, said with the file's own held-back figures (the ones printed)."""
        o, c = self.opts, self.choice
        if c is None:
            return
        self.reached = reached = final.gap_low(weights) >= -o.max_loss_db
        if reached and c.task_reached:
            return
        what = f"{final.sqnr().value:.2f} dB on held-back samples" + ("" if reached else
               f", more than {o.max_loss_db:g} dB below its weights alone at {weights.sqnr().value:.2f} dB (lower end "
               "of the interval of the gap)")
        what += "" if c.task_reached else f", task agreement not within {o.max_task_loss:g} of FP32"
        self.warnings.append(f"mixed precision: {what}, with {c.int8_mac_share:.1%} of the MACs in INT8 "
                             f"(floor {o.min_int8_share:.0%})")

    def finish(self) -> QuantizeResult:
        """The file (Q/DQ, FP16 remainder, metadata) and its summary."""
        o, plan, idx = self.opts, self.plan, self.idx
        used_bias = {p: b for p, b in self.bias.items() if p in plan.quantized_layers}
        qmodel, notes = build_model(self.float_model, idx, plan, self.ranges, o.target, self.fp16, self.warnings,
                                    self.bias)
        total = sum(self.macs.values()) or 1
        int8_share = sum(self.macs.get(p, 0) for p in plan.quantized_layers) / total
        set_metadata(qmodel, self._metadata(int8_share, len(used_bias)))
        summary = self._summary(qmodel, notes, int8_share, len(used_bias), total)
        summary.diagnosis = self._diagnosis(qmodel)
        return QuantizeResult(qmodel, summary, self.ranges, plan, self.cal, self.float_model, idx, self.fp16,
                              self.analysis, used_bias, self.macs)

    def _diagnosis(self, qmodel: onnx.ModelProto) -> list:
        """With imported ranges: what they cost, from a layer-by-layer comparison on the held-back samples
        (the calibration samples when none are held back)."""
        if self.imported is None or self.split is None or not (self.split.held or self.split.kept) \
                or not self.plan.activations:
            return []
        feeds = Feeds(model_inputs(self.float_model), self.split.held or self.split.kept, "held-back samples")
        return compare(self.float_model, qmodel, feeds, layerwise=True, budget=False, quiet=True, task=self.opts.task,
                       remainder=self.opts.remainder).diagnosis

    def _metadata(self, int8_share: float, corrected: int) -> dict:
        """The ONNX metadata: how the file was made, its held-back figures, and the FP16 plan's FP32 nodes
        (TensorRT 8.x/10.x pin them with --layerPrecisions; qdq trt build does it for you)."""
        o, c, acc = self.opts, self.choice, self.accuracy
        calibrated = self.calib_path is not None or self.given_calibration is not None
        meta = {"qdq_version": __version__, "qdq_method": self.method if calibrated else "imported",
                "qdq_samples": self.cal.samples, "qdq_target": o.target,
                "qdq_percentile": o.percentile if self.method == "percentile" else "",
                "qdq_int8_mac_share": f"{int8_share:.4f}", "qdq_bias_correction": f"{self.bias_mode} ({corrected} layers)",
                "qdq_remainder": "fp16" if self.fp16 is not None else "fp32"}
        if self.mac_shapes:   # what qdq check and qdq trt build use for dynamic inputs
            meta["qdq_input_shapes"] = shape_text(self.mac_shapes)
        if self.macs:         # one count of each layer's MACs for the summary, inspect and the engine view
            meta["qdq_layer_macs"] = json.dumps({self.idx.labels[p]: m for p, m in self.macs.items()}, separators=(",", ":"))
        if self.fp16 is not None:
            meta["qdq_fp32_nodes"] = ",".join(self.fp16.pins(self.idx, self.plan.quantized_layers))
        if self.imported is not None and self.imported.path:
            meta["qdq_ranges_file"] = Path(self.imported.path).name   # the diagnosis names it
        if c is not None:
            meta["qdq_float_layers"] = ", ".join(self.idx.labels[p] for p in c.float_layers)
        if acc is not None:
            meta.update(qdq_heldout_output=acc["final_outputs"]["output"], qdq_heldout_sqnr_db=f"{acc['final_db']:.2f}", qdq_heldout_weights_only_db=f"{acc['final_weights_only_db']:.2f}",
                        qdq_heldout_interval_db="{:.2f}–{:.2f}".format(*acc["final_interval_db"]),
                        qdq_heldout_samples=str(acc["held_back_samples"]))
            if acc["task"]["figures"]:
                head, fig = next(iter(acc["task"]["figures"].items()))
                meta["qdq_heldout_task"] = f"{acc['task']['name']} {head} {fig['value']:.4f} ({fig['low']:.4f}–{fig['high']:.4f})"
        return meta

    def _accuracy(self) -> dict | None:
        """The held-back check and what mixed precision measured, for the summary."""
        if self.accuracy is None:
            return None
        acc, c, o = dict(self.accuracy), self.choice, self.opts
        first = c.int8 if c is not None else self.int8
        int8_db = first.sqnr().value if first is not None else acc["final_db"]
        weights_db = c.weights_only_db if c is not None else acc["final_weights_only_db"]
        if self.reported_int8:
            int8_db, weights_db = (m.sqnr().value for m in self.reported_int8)
        acc.update(int8_db=int8_db, weights_only_db=weights_db,
                   max_loss_db=o.max_loss_db, reached=self.reached if c is not None else None,
                   evaluations=len(c.steps) if c is not None else 0, method_scores=self.method_scores or None)
        return acc

    def _summary(self, qmodel, notes, int8_share: float, corrected: int, total: int) -> Summary:
        o, plan, idx, c = self.opts, self.plan, self.idx, self.choice
        return Summary(
            ranges_import=import_report(self.imported, self.placed, plan, idx, self.ranges, o.fallback_imported),
            model=self.source, target=o.target, method=self.method, opset=opset_of(qmodel), samples=self.cal.samples,
            quantized_layers=[idx.labels[i] for i in plan.quantized_layers],
            weighted_layers=len(plan.quantized_layers) + len(plan.skipped),
            skipped=[{"node": idx.labels[i], "op": idx.nodes[i].op_type, "reason": why} for i, why in plan.skipped],
            activations={t: {"amax": r.amax, "scale": r.scale, "method": r.method, "clipped": r.clipped,
                             "reason": plan.reasons.get(t, "")} for t, r in self.ranges.items()},
            weights={w: {"axis": s.axis, "amax_max": next(n.amax for n in notes if n.tensor == w)}
                     for w, s in plan.weights.items()},
            fp32_nodes=self.fp16.names(idx) if self.fp16 is not None else {},
            int8_mac_share=int8_share, bias_corrected=corrected, bias_correction=self.bias_mode,
            mac_shapes={k: list(v) for k, v in self.mac_shapes.items()}, mac_source=self.mac_source,
            mac_unknown=self.mac_unknown,
            float_layers=[{"node": idx.labels[p], "op": idx.nodes[p].op_type, "mac_share": self.macs.get(p, 0) / total,
                           "cost_db": db} for p, db in (c.float_layers.items() if c else [])],
            accuracy=self._accuracy(), warnings=self.warnings)
