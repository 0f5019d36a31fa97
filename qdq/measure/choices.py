"""The choices ``qdq quantize`` makes by measurement, each a pass from frozen inputs to a frozen result:
the range method (``auto``), bias correction, mixed precision, and the final figures.  Every
candidate is a trt10 file built from one float model (:class:`Candidates`) and measured on the
held-back samples that choose (:class:`qdq.measure.heldback.HeldBack`); the figures printed are
measured again on the samples that report, which no decision saw."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..calib.ranges import DEFAULT_METHOD
from ..graph.bypass import weights_only
from ..graph.index import GraphIndex
from ..graph.placement import Placement, attention_units, known_bounds, replace, served_layers
from ..graph.precision import FP16_OUTPUT_MIN_DB
from ..graph.writer import RangeBook, build_model, device_view
from ..trt.profile import device_speed
from .autocast import raise_floor
from .evaluate import DeviceModel, Measurement
from .heldback import HeldBack
from .mixed_precision import Choice, by_unit, candidates, choose, floor_hint
from .tasks import why_unmeasured

# what --method auto chooses among (entropy, the TensorRT calibrator's algorithm, clips saturated outputs)
AUTO_METHODS = ("mse", "percentile", "max")


@dataclass(frozen=True)
class Candidates:
    """The candidate files of one float model (``idx`` indexes it) with the ranges of ``book``: trt10
    form, unchecked (measured, never written).  ``keep`` (() → the FP16 plan's FP32 node names, read
    when called: the final figures raise its floor) builds what is measured as the device runs it on
    one graph (:func:`qdq.graph.writer.device_view`); None measures the file through the
    evaluator's own device view."""

    float_model: onnx.ModelProto
    idx: GraphIndex
    book: RangeBook
    keep: object = None

    def build(self, plan: Placement, bias: dict, book: RangeBook | None = None) -> onnx.ModelProto:
        book = book or self.book
        return build_model(self.float_model, self.idx, plan, book.ranges(plan), "trt10", bias=bias, check=False)[0]

    def device(self, plan: Placement, bias: dict, book: RangeBook | None = None):
        """What an evaluator measures for ``plan``: a :class:`DeviceModel`, or the file."""
        if self.keep is None:
            return self.build(plan, bias, book)
        ranges = (book or self.book).ranges(plan)
        return DeviceModel(*device_view(self.float_model, self.idx, plan, ranges, bias, self.keep()))

    def weights_view(self, plan: Placement, bias: dict):
        """``plan``'s file with only its weights quantized, as an evaluator measures it (``bias``: the
        corrections of the weights' error alone; a correction of the activations' error would be a
        stale shift without them)."""
        if self.keep is None:
            return weights_only(self.build(plan, bias))
        return DeviceModel(*device_view(self.float_model, self.idx, plan, {}, bias, self.keep(), weights_alone=True))


@dataclass(frozen=True)
class MethodChoice:
    method: str
    scores: dict = field(default_factory=dict)   # method -> dB (held-back and ×1.25 noise powers added)
    warning: str | None = None
    int8: Measurement | None = None   # the chosen method's all-INT8 file, uncorrected, on the choosing samples


def choose_method(cands: Candidates, plan: Placement, check: HeldBack | None, method: str) -> MethodChoice:
    """``auto``: of :data:`AUTO_METHODS`, the one whose all-INT8 file loses least on the held-back
    samples and on them scaled by 1.25 (noise powers added: −10·log10((10^(−a/10) + 10^(−b/10)) / 2))."""
    if method != "auto":
        return MethodChoice(method)
    if check is None:
        return MethodChoice(DEFAULT_METHOD, warning=f"--method auto needs held-back samples; used {DEFAULT_METHOD}")
    scores, held = {}, {}
    for m in AUTO_METHODS:
        model = cands.device(plan, {}, cands.book.using(m))
        held[m] = check.ev.measure(model)
        nsr = [10 ** (-x.sqnr().value / 10) for x in (held[m], check.robust().measure(model))]
        scores[m] = -10 * np.log10(sum(nsr) / 2)
    best = max(scores, key=scores.get)
    return MethodChoice(best, scores, int8=held[best])


@dataclass(frozen=True)
class BoundChoice:
    bounds: dict = field(default_factory=dict)   # tensor -> op: the tensors whose Q/DQ take its known range
    tried: tuple = ()                            # the tensors measured at their known range
    gap_low: float | None = None                 # lower end of the paired gap, known − calibrated (dB)
    int8: Measurement | None = None   # the all-INT8 file with the ranges chosen, uncorrected, on the choosing samples


def choose_bounds(cands: Candidates, plan: Placement, check: HeldBack | None,
                  base: Measurement | None = None) -> BoundChoice:
    """The known range (amax 1) for the activations of ``plan`` a softmax, sigmoid or tanh produces
    (:func:`qdq.graph.placement.known_bounds`) whose calibration data reach half of it (below, the
    bound costs a bit of resolution by construction), your ranges never replaced: taken, all together,
    when the all-INT8 file with them measures better on the held-back samples than with the calibrated
    ranges: the lower end of the 90 % interval of the paired gap above 0 (a point figure from a few
    samples would follow noise).  A calibrated amax below 1 gives the small probabilities finer
    steps; the bound never clips the peaks data it did not see would reach.  ``base``: the all-INT8
    file with the calibrated ranges, uncorrected, when already measured on the choosing samples."""
    book, imp = cands.book, cands.book.imported
    stats = book.cal.stats
    tried = {t: op for t, op in known_bounds(cands.idx, plan).items()
             if (imp is None or t not in imp.amax) and t in stats and stats[t].amax >= 0.5}
    if not tried or check is None:
        return BoundChoice(tried=tuple(tried), int8=base)
    base = base if base is not None else check.ev.measure(cands.device(plan, {}))
    known = check.ev.measure(cands.device(plan, {}, book.bounded(tried)))
    gap = known.gap_low(base)
    return BoundChoice(tried if gap > 0 else {}, tuple(tried), gap, known if gap > 0 else base)


@dataclass(frozen=True)
class BiasChoice:
    mode: str = "off"                      # full | weights | off
    bias: dict = field(default_factory=dict)          # layer id -> the correction folded into its bias
    weight_bias: dict = field(default_factory=dict)   # the weights' error alone: for weights-only views
    int8: Measurement | None = None        # the all-INT8 file so corrected, on the choosing samples (if measured)

    def for_weights(self) -> dict:
        """The corrections a weights-only view of a file so corrected carries."""
        return self.weight_bias if self.mode == "full" else self.bias


def correct_bias(cands: Candidates, plan: Placement, analysis, check: HeldBack | None, enabled: bool,
                 off: Measurement | None = None) -> BiasChoice:
    """Full, weight-only or no bias correction (``analysis``: :class:`qdq.measure.analysis.Analysis`):
    whichever measures best on the held-back samples (weight-only tried when full is not 1 dB better
    than none); full without held-back samples.  ``off``: the uncorrected all-INT8 file's measurement
    on them, when already made."""
    if analysis is None or not enabled:
        return BiasChoice(int8=off)
    options = {"full": analysis.bias, "weights": analysis.weight_bias, "off": {}}
    if check is None:
        return BiasChoice("full", options["full"], analysis.weight_bias)
    scores = {"full": check.ev.measure(cands.device(plan, options["full"])),
              "off": off if off is not None else check.ev.measure(cands.device(plan, {}))}
    if scores["full"].sqnr().value < scores["off"].sqnr().value + 1.0:   # not a clear win: try weight-only
        scores["weights"] = check.ev.measure(cands.device(plan, options["weights"]))
    mode = max(scores, key=lambda k: scores[k].sqnr().value)
    return BiasChoice(mode, options[mode], analysis.weight_bias, scores[mode])


@dataclass(frozen=True)
class Mixed:
    """Mixed precision's outcome: the file's placement, and what was decided (None: it did not run)."""

    plan: Placement
    choice: Choice | None = None
    warnings: tuple = ()


def mixed_precision(cands: Candidates, plan: Placement, analysis, check: HeldBack, bias: BiasChoice, macs: dict,
                    readers: tuple, opts, task_ok=None) -> Mixed:
    """Keep the costliest layers in float until within ``opts.max_loss_db`` (``opts``: the run's
    :class:`qdq.options.AccuracyOptions`) of the weights-only figure
    (and, with ``task_ok``, until it passes): attention blocks, and ``readers`` (the quantized readers
    of massive activations), move as a whole; layers reading imported ranges stay INT8 unless
    ``opts.fallback_imported``.  ``macs``: layer id -> MACs (known ones)."""
    idx = cands.idx
    units = [u for u in attention_units(idx) if set(u) <= set(plan.quantized_layers)]
    units += [readers] if len(readers) > 1 else []
    every = candidates(analysis, plan.quantized_layers, bias.mode == "full")
    kept, warnings = _imported_stay(every, cands.book, idx, plan, opts.fallback_imported)
    held = set(every) - set(kept)   # a block with one MatMul reading imported ranges stays INT8 whole
    kept = {p: v for p, v in kept.items() if not any(p in u and held & set(u) for u in units)}
    cands_, unit_macs, expand = by_unit(kept, {p: macs.get(p, 0) for p in plan.quantized_layers}, units)

    def build(float_layers, weights=False):   # an attention block moves as a whole
        p = replace(idx, plan, {q: "float" for q in expand(float_layers)})
        return cands.weights_view(p, bias.for_weights()) if weights else cands.device(p, bias.bias)

    speed = _device_speed(idx, plan, opts.device_profile, cands_) if opts.device_profile else None
    c = choose(cands_, unit_macs, build, check.ev, opts.max_loss_db, opts.min_int8_share,
               total_macs=sum(macs.values()), int8=bias.int8, task_ok=task_ok, weights=lambda fl: build(fl, True),
               speed=speed)
    if speed is not None:
        slow = [idx.labels[p] for p, v in speed.items() if v <= 0]
        warnings.append(f"device profile ({opts.device_profile}): {len(speed)} layers timed; "
                        + (f"not faster in INT8, so first to keep in float: {', '.join(slow[:5])}" if slow
                           else "every one faster in INT8"))
    hint = floor_hint(cands_, unit_macs, c, opts.min_int8_share, sum(macs.values()), speed)
    if hint is not None:
        warnings.append(_floor_text(idx, plan, macs, [q for p in hint[0] for q in sorted(expand({p}))], hint[1],
                                     opts.min_int8_share))
    c.float_layers = {q: db for p, db in c.float_layers.items() for q in sorted(expand({p}))}
    if c.float_layers:
        plan = replace(idx, plan, {p: f"kept in float: its INT8 would cost {db:.2f} dB (mixed precision)"
                                   for p, db in c.float_layers.items()})
    return Mixed(plan, c, tuple(warnings))


def _floor_text(idx: GraphIndex, plan: Placement, macs: dict, layers: list, share: float, floor: float) -> str:
    """The MAC floor stopped mixed precision: the layers whose INT8 costs more than their MACs' share
    (:func:`qdq.measure.mixed_precision.floor_hint`), the share left without them, the option."""
    placed = 1.0 - sum(macs.get(p, 0) for p in plan.quantized_layers) / (sum(macs.values()) or 1)
    names = ", ".join(idx.labels[p] for p in layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
    return (f"mixed precision stopped at its floor of {floor:.0%} INT8 MACs"
            + (f" (the placement rules keep {placed:.1%} of the MACs in float)" if placed > 1.0 - floor else "")
            + f"; {len(layers)} layers add more than their share of the MACs in output noise, by the analysis "
            f"({names}): keeping them in float leaves {share:.1%} of the MACs in INT8, which "
            f"--min-int8-share {math.floor(share * 100) / 100:.2f} allows (mixed precision then measures the file)")


def _device_speed(idx: GraphIndex, plan: Placement, folder, layers: dict) -> dict:
    """layer id (of ``layers``) -> the share of its FP16 time INT8 saves on the device."""
    weighted = {idx.nodes[p].name: idx.nodes[p].op_type for p in plan.quantized_layers}
    by_node = device_speed(folder, weighted, {n.name for n in idx.nodes})
    return {p: by_node[idx.nodes[p].name] for p in layers if idx.nodes[p].name in by_node}


def _imported_stay(cands: dict, book: RangeBook, idx: GraphIndex, plan: Placement, fallback: bool) -> tuple:
    """Imported ranges are the user's decision: the layers reading them leave the candidates (unless
    ``fallback``), and the user hears it when one of them is the costliest.  Returns (candidates, warnings)."""
    imp = book.imported
    if imp is None or fallback:
        return cands, []
    held = {p for t in imp.amax if t in plan.activations for p in served_layers(idx, plan, t)} & set(cands)
    warnings = []
    if held and max(cands, key=cands.get) in held:
        costly = sorted(held, key=lambda p: -cands[p])[:3]
        warnings.append(f"the layers costing most in INT8 read your imported ranges "
                        f"({', '.join(idx.labels[p] for p in costly)}); mixed precision keeps them in "
                        "INT8 with your ranges (--fallback-imported lets it float them; the diagnosis says "
                        "what each range costs)")
    return {p: c for p, c in cands.items() if p not in held}, warnings


def task_test(check: HeldBack, float_model: onnx.ModelProto, max_task_loss: float | None, confirmed: bool) -> tuple:
    """``max_task_loss`` as a test on a measurement: the lower end of the task's headline interval
    within it of what FP32 scores against itself.  Returns (test or None, warning or None): a task
    qdq inferred and the user did not confirm never decides."""
    task = check.task if check else None
    if max_task_loss is None or task is None or task.name == "none":
        return None, None
    if task.detected and not confirmed:
        return None, (f"--max-task-loss did not act: the task {task.name} was inferred ({task.reason}); "
                      f"name it (--task {task.name}, or --task auto to accept the inference)")
    head = task.figures_of[0]
    best = check.ev.measure(float_model).task_figures()[head].value   # FP32 against itself
    if best != best:
        return None, (f"--max-task-loss did not act: the task's {head} is unmeasured on the held-back samples "
                      f"({why_unmeasured(head)}); calibrate on data where the model finds something")
    return (lambda m: m.task_figures()[head].low >= best - max_task_loss), None


@dataclass(frozen=True)
class Figures:
    """The file's held-back figures as printed: ``accuracy`` (:meth:`HeldBack.report` and the run's
    facts), the all-INT8 and weights-only files re-measured on the reporting samples, the target."""

    accuracy: dict
    reported_int8: tuple = ()
    final: Measurement | None = None
    weights: Measurement | None = None


def final_figures(cands: Candidates, plan: Placement, placed: Placement, bias: BiasChoice, mixed: Mixed | None,
                  check: HeldBack, reporter: HeldBack, fp16, held_sources: list | None) -> Figures:
    """The FP16 plan's floor raised to the file's SQNR + 10 dB (≤ 0.4 dB added; ``fp16`` is changed in
    place), then the file, its weights alone and the ×1.25 data measured on the reporting samples
    as the device runs them (``placed``: the placement rules' plan, for the all-INT8 figures;
    ``held_sources``: the held-back samples' names, None when none were held back)."""
    scaled = reporter.robust()   # its float references first, while no candidate's weights are held
    choice = mixed.choice if mixed is not None else None
    if choice is not None:
        final = choice.final
    elif bias.int8 is not None and plan is placed:   # the all-INT8 file, as bias correction measured it
        final = bias.int8
    else:
        final = check.ev.measure(cands.device(plan, bias.bias))
    floor = min(max(final.sqnr().value + 10, FP16_OUTPUT_MIN_DB), 50.0)
    raised = fp16 is not None and raise_floor(fp16, cands.float_model, floor)
    model = cands.device(plan, bias.bias)   # built after the floor (the plan may pin more nodes), not held across it
    if raised:
        final = check.ev.measure(model)
    if reporter is not check:   # the figures printed, on samples no decision saw
        final = reporter.ev.measure(model)
    robust = scaled.measure(model)
    del model   # the views below are built without the file's candidate held
    reported = ()
    if reporter is not check and choice is not None:
        reported = (reporter.ev.measure(cands.device(placed, bias.bias)),
                    reporter.ev.measure(cands.weights_view(placed, bias.for_weights())))
    weights = reporter.ev.measure(cands.weights_view(plan, bias.for_weights()))
    acc = reporter.report(final, weights, robust)
    acc.update(chosen_on=0 if reporter is check else len(check.feeds), remainder="fp16" if fp16 is not None else "fp32",
               held_back=held_sources is not None, held_back_sources=list(held_sources or []))
    return Figures(acc, reported, final, weights)


def target_warning(figures: Figures, choice: Choice, max_loss_db: float, max_task_loss, min_int8_share: float) -> tuple:
    """Whether mixed precision's target was reached on the file's own printed figures (the lower end of
    the interval of file − weights-only within ``max_loss_db``), and the warning when it or the task's
    was missed: (reached, warning or None)."""
    final, weights = figures.final, figures.weights
    reached = final.gap_low(weights) >= -max_loss_db
    if reached and choice.task_reached:
        return reached, None
    what = f"{final.sqnr().value:.2f} dB on held-back samples" + ("" if reached else
           f", more than {max_loss_db:g} dB below its weights alone at {weights.sqnr().value:.2f} dB (lower end "
           "of the interval of the gap)")
    what += "" if choice.task_reached else f", task agreement not within {max_task_loss:g} of FP32"
    return reached, (f"mixed precision: {what}, with {choice.int8_mac_share:.1%} of the MACs in INT8 "
                     f"(floor {min_int8_share:.0%})")
