"""The few causes that explain most of a Q/DQ file's loss, each said in one line with its evidence
and its fix.

Candidates, from a layer-by-layer comparison (:mod:`qdq.measure.comparison`) on the user's data:

* a range the user imported (recorded by qdq as ``method=imported (…)``) that clips more than
  :data:`CLIP_SHARE` of its values or is over :data:`WASTE_RATIO` × what calibration (mse) measures
  on the same data, wasting INT8 levels;
* any other range outside [1/:data:`FAR_RATIO`, :data:`FAR_RATIO`] × the calibrated amax;
* a gain or bias in the outputs (the "shifted and scaled" look) and the first tensor that carries it;
* the Q/DQ whose own noise costs most at its consumer's output.

Estimated recovery: for each range suspect, the file with that range set to the calibrated amax
(:func:`qdq.graph.rewrite.with_ranges`; its consumers' biases back to the float model's, since a bias
correction made for the old range would be stale) is run on the evidence's few samples beside the
file, as the device runs them.  (Adding each site's noise measured alone at the outputs does not
work here: a bias correction made for a clipped range removes most of its noise, so noise is not
additive across sites.)  The top cause is then checked on up to :data:`CHECK_SAMPLES` samples with
90 % intervals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..graph.index import GraphIndex
from ..graph.placement import Placement, scale_group
from ..graph.qdq_file import is_imported
from ..graph.rewrite import with_ranges
from .evaluate import Evaluator

CLIP_SHARE = 0.001      # an imported range clipping more than 0.1 % of its values is a suspect
WASTE_RATIO = 2.0       # an imported amax over 2x the calibrated one wastes over half the levels
FAR_RATIO = 4.0         # other ranges: suspect outside [1/4, 4] x the calibrated amax
GAIN_TOL, BIAS_TOL = 0.01, 0.02   # output gain beyond 1 ± 1 %, or bias beyond 2 % of the spread
MAX_SUSPECTS, MAX_CAUSES, CHECK_SAMPLES = 8, 6, 32
MIN_RECOVERY_DB = 0.5   # a range that is not the user's is named only when fixing it gains this much


@dataclass
class Cause:
    """One cause: ``kind`` (imported range | range | gain | layer), the tensor or output it is about,
    one line of text (evidence, effect, fix), the estimated output SQNR (dB) once fixed, and for the
    top cause the measured check ``{"before": Figure dict, "after": Figure dict}`` on the same samples."""

    kind: str
    subject: str
    text: str
    estimated_db: float | None = None
    measured: dict | None = None
    evidence: dict = field(default_factory=dict)


@dataclass
class Evidence:
    """What the diagnosis reads: the layer reports (graph order), output reports, the pooled output
    SQNR (dB), the float model as the file was made from it with its index, the file's own sites as a
    placement, samples, and the imported ranges' file name ("" unknown)."""

    layers: list
    outputs: list
    sqnr_db: float
    float_model: onnx.ModelProto
    idx: GraphIndex
    plan: Placement
    feeds: list
    ranges_file: str = ""


def diagnose(ev: Evidence, qmodel: onnx.ModelProto, device=None, task=None, check_feeds: list | None = None) -> list[Cause]:
    """The causes of ``qmodel``'s loss: imported ranges first, then the rest, each group most recoverable
    first (at most :data:`MAX_CAUSES`); ``device``
    and ``task`` as for :class:`qdq.measure.evaluate.Evaluator` (the check runs the file as the device
    does, on ``check_feeds``, default the evidence's samples)."""
    causes = _range_causes(ev, qmodel, device, task)
    if causes:
        _check(causes[0], ev, qmodel, device, task, check_feeds or ev.feeds)
    causes += _gain_cause(ev, causes) + _layer_cause(ev, causes)
    return causes[:MAX_CAUSES]


def _suspects(layers: list) -> list:
    """Layer reports whose range is suspect, most off first."""
    out = []
    for r in layers:
        if r.calibrated_amax <= 0 or r.amax <= 0:
            continue
        ratio = r.amax / r.calibrated_amax
        imported = is_imported(r.method)
        if (imported and (r.clipped > CLIP_SHARE or ratio > WASTE_RATIO)) or not 1 / FAR_RATIO <= ratio <= FAR_RATIO:
            out.append(r)
    return sorted(out, key=lambda r: -abs(math.log(r.amax / r.calibrated_amax)))[:MAX_SUSPECTS]


def _range_causes(ev: Evidence, qmodel: onnx.ModelProto, device, task) -> list:
    sus = [r for r in _suspects(ev.layers) if r.tensor in ev.plan.activations]
    if not sus:
        return []
    quick = Evaluator(ev.float_model, ev.feeds, "diagnosis sample", task, device)
    now = quick.sqnr(qmodel)
    causes = []
    for r in sus:
        est = ev.sqnr_db + quick.sqnr(_fixed(ev, qmodel, r.tensor, r.calibrated_amax)) - now
        imported = is_imported(r.method)
        if not imported and est - ev.sqnr_db < MIN_RECOVERY_DB:
            continue
        causes.append(Cause("imported range" if imported else "range", r.tensor, _range_text(r, est - ev.sqnr_db, ev),
                            est, evidence={"amax": r.amax, "calibrated_amax": r.calibrated_amax, "clipped": r.clipped,
                                           "levels_used": r.levels_used, "method": r.method}))
    return sorted(causes, key=lambda c: (c.kind != "imported range", -c.estimated_db))   # the user's own first


def _fixed(ev: Evidence, qmodel: onnx.ModelProto, tensor: str, amax: float) -> onnx.ModelProto:
    """``qmodel`` with ``tensor``'s range set to ``amax`` and its consumers' float biases back."""
    biases = {}
    for pos, _ in ev.plan.activations[tensor]:
        node = ev.idx.nodes[pos]
        if len(node.input) > 2 and node.input[2] and ev.idx.constant(node.input[2]) is not None:
            biases[node.name] = ev.idx.constant(node.input[2])
    return with_ranges(qmodel, {tensor: amax}, "calibrated (diagnosis)", biases)


def _range_text(r, gain_db: float, ev: Evidence) -> str:
    """One line: the range, what it does to the values, what calibration says, the fix."""
    ratio = r.amax / r.calibrated_amax
    does = f"clips {r.clipped:.1%} of its values" if ratio < 1 and r.clipped > CLIP_SHARE else \
        f"uses {r.levels_used:.0%} of the 256 levels (calibrated amax {ratio:.1f}x smaller)"
    effect = f"calibrated amax {r.calibrated_amax:.3g} would recover ≈ {gain_db:.1f} dB at the output" \
        if gain_db >= MIN_RECOVERY_DB else \
        f"calibrated amax {r.calibrated_amax:.3g} changes the output by ≈ {gain_db:+.1f} dB (it costs little here)"
    if is_imported(r.method):
        src = ev.ranges_file or "your ranges file"
        return (f"your range for '{r.tensor}' (±{r.amax:.3g}, imported from {src}) {does}; {effect}: "
                f"drop '{r.tensor}' from {src} (or set it to {r.calibrated_amax:.3g}) and quantize again")
    how = f", {r.method}" if r.method else ""
    return (f"the range of '{r.tensor}' (±{r.amax:.3g}{how}) is {ratio:.2g}x what calibration measures on this data "
            f"and {does}; {effect}: calibrate on data like this (qdq quantize --calib DATA)")


def _check(cause: Cause, ev: Evidence, qmodel: onnx.ModelProto, device, task, feeds: list) -> None:
    """Measure the top cause's fixed file beside the file, with intervals."""
    fixed = _fixed(ev, qmodel, cause.subject, cause.evidence["calibrated_amax"])
    evaluator = Evaluator(ev.float_model, feeds[:CHECK_SAMPLES], "diagnosis sample", task, device)
    before, after = evaluator.measure(qmodel), evaluator.measure(fixed)
    cause.measured = {"before": before.sqnr().to_dict(), "after": after.sqnr().to_dict(), "samples": before.samples}
    tf_b, tf_a, task = before.task_figures(), after.task_figures(), ""
    head = next(iter(tf_b), None)
    if head is not None and tf_b[head].value == tf_b[head].value:   # a task figure measured here
        cause.measured["task"] = {"figure": head, "before": tf_b[head].to_dict(), "after": tf_a[head].to_dict()}
        task = f"; {before.task.name} {head} {_share(tf_a[head].value)} against {_share(tf_b[head].value)}"
    b, a = cause.measured["before"], cause.measured["after"]
    cause.text += (f" [checked: the fixed file measures {a['value']:.2f} dB ({a['low']:.2f}–{a['high']:.2f}) against "
                   f"{b['value']:.2f} dB ({b['low']:.2f}–{b['high']:.2f}) now{task}, {before.samples} samples]")


def _share(v: float) -> str:
    return "unmeasured" if v != v else (f"{v:.1%}" if 0.0 <= v <= 1.0 else f"{v:.3g}")


def _gain_cause(ev: Evidence, named: list) -> list:
    """The outputs' gain or bias, and the first tensor (graph order) whose accumulated gain departs
    the same way by at least half as much."""
    worst = max(ev.outputs, key=lambda o: abs(o.metrics.get("gain", 1.0) - 1), default=None)
    if worst is None:
        return []
    g, b = worst.metrics.get("gain", 1.0), worst.metrics.get("bias", 0.0)
    if not (abs(g - 1) > GAIN_TOL or abs(b) > BIAS_TOL) or not np.isfinite(g):
        return []
    carrier = next((r for r in ev.layers if (r.gain - 1) * (g - 1) > 0 and abs(r.gain - 1) >= abs(g - 1) / 2), None)
    text = f"output '{worst.name}' is scaled by {g:.3f} (gain) and shifted by {b:+.3f} of its spread (bias)"
    if carrier is not None:
        why = " (its range is named above)" if carrier.tensor in {c.subject for c in named} else ""
        text += f": the scaling first appears at '{carrier.tensor}' (accumulated gain {carrier.gain:.3f}){why}"
    return [Cause("gain", worst.name, text, evidence={"gain": g, "bias": b,
                                                       "carrier": carrier.tensor if carrier else None})]


def _layer_cause(ev: Evidence, named: list) -> list:
    """The Q/DQ whose own noise costs most at its consumer's output, when it is not named already and
    is within 6 dB of the whole file's loss."""
    taken = {c.subject for c in named}
    rest = [r for r in ev.layers if r.tensor not in taken and math.isfinite(r.output_sqnr_db)]
    if not rest:
        return []
    r = min(rest, key=lambda r: r.output_sqnr_db)
    if r.output_sqnr_db > ev.sqnr_db + 6:
        return []
    consumer = r.consumers[0] if r.consumers else "its consumer"
    head = (f"'{r.tensor}''s Q/DQ alone leaves {r.output_sqnr_db:.1f} dB at the output of '{consumer}' (the lowest of "
            f"{len(ev.layers)} Q/DQ tensors; the file: {ev.sqnr_db:.1f} dB)")
    group = scale_group(ev.idx, ev.plan.activations, r.tensor)   # a group member carries its group's amax
    yours = next((c for c in named if c.kind == "imported range" and c.subject in group), None)
    fix = (f"its scale is your range for '{yours.subject}' (±{r.amax:.3g}), shared through one scale group: fixing "
           "that range fixes this one too" if yours else f"keep '{consumer}' in float (qdq quantize --exclude {consumer})")
    return [Cause("layer", r.tensor, f"{head}: {fix}", evidence={"at_consumer_db": r.output_sqnr_db})]
