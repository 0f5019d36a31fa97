"""Mixed precision by default: keep in float (FP16 on TensorRT) the layers whose INT8 costs most per
multiply-accumulate saved, until the model is within ``max_loss_db`` of what its INT8 weights alone
cost, never letting the INT8 share of MACs fall below ``min_int8_share``.

Measured on calibration samples held back from range fitting (:class:`qdq.measure.metrics.Evaluator`): the output SQNR
of the candidate file and of its weights-only version (activation Q/DQ bypassed: ``qdq compare``'s
"weights only" figure).

The order: :mod:`qdq.measure.analysis` gives each layer's activation-input noise at the layer's own output
(after bias correction), r_i.  How much of it reaches the model's output depends on where the layer
sits (early layers of a detector can pass it on whole, late ones a tenth of it), so the
activation sites are split into ``GROUPS`` runs in graph order, each measured alone at the model's
outputs in the analysis pass (its Q/DQ only, weights float): run j's noise N_j gives the gain
g_j = N_j / Σ_{i∈j} r_i, and layer i's estimated contribution is c_i = g_j·r_i.  Layers go to float in decreasing c_i / MACs_i
(with the device's layer timings, MACs count by the time INT8 saves there: :func:`rank`).
Noise powers of independent sites add at the output, so removing a prefix of the ranking leaves an
estimated N − Σ c_i; the smallest prefix estimated to reach the target is built and measured, the
estimate is rescaled to the measurement, and layers are added until the measurement meets the target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..graph.bypass import weights_only
from .evaluate import Evaluator, Measurement
from .metrics import power_db

# a layer whose INT8 adds less than this share of the file's noise (0.004 dB) is never floated
NEGLIGIBLE = 1e-3
MAX_ROUNDS = 5
GROUPS = 4
# aim a little inside the target: the held-back samples are few
MARGIN_DB = 0.25


@dataclass
class Choice:
    """What mixed precision decided and measured (dB on the held-back samples, point estimates; the
    measurements themselves, with their intervals, in ``final`` and ``final_weights_only``)."""

    float_layers: dict = field(default_factory=dict)   # layer id -> estimated dB its INT8 would cost
    int8_db: float = math.nan            # all layers INT8
    weights_only_db: float = math.nan    # all layers INT8, activation Q/DQ bypassed
    final_db: float = math.nan           # the file written
    final_weights_only_db: float = math.nan
    int8_mac_share: float = 1.0          # of all weighted layers' MACs
    reached: bool = True                 # the interval's lower end of final − weights-only ≥ −max_loss_db
    task_reached: bool = True            # the task agreement criterion, when one was given
    steps: list = field(default_factory=list)   # (layers kept float, measured dB, its weights-only dB)
    final: Measurement | None = None
    final_weights_only: Measurement | None = None
    int8: Measurement | None = None


def _noise(db: float) -> float:
    return 10 ** (-db / 10) if math.isfinite(db) else 0.0


def propagation_gains(analysis, centred: bool = True) -> dict:
    """activation tensor -> end-to-end gain: each run of sites measured alone at the model's outputs
    (:attr:`qdq.measure.analysis.Analysis.groups`) over the sum of its sites' local noise ratios."""
    local = {}
    for s in analysis.sites:
        if s.kind != "weight" and s.signal > 0:
            local[s.tensor] = local.get(s.tensor, 0.0) + (s.centred if centred else s.noise) / s.signal
    gains = {}
    for run, site in analysis.groups:
        r = sum(local.get(t, 0.0) for t in run)
        g = site.noise / site.signal / r if r > 0 and site.signal > 0 else 1.0
        gains.update({t: g for t in run})
    return gains


def candidates(analysis, layers, centred: bool = True) -> dict:
    """layer id → estimated contribution c_i of its INT8 activation input(s) to the output noise (see
    the module doc), for each of ``layers`` with a measured activation site."""
    gains = propagation_gains(analysis, centred)
    out = {}
    for layer in layers:
        sites = [s for s in analysis.layer_sites(layer) if s.kind == "activation" and s.signal > 0]
        if sites:
            out[layer] = sum(gains.get(s.tensor, 1.0) * (s.centred if centred else s.noise) / s.signal for s in sites)
    return out


def by_unit(candidates: dict, macs: dict, units: list):
    """``candidates`` and ``macs`` (layer id → value) with each unit (a tuple of layer ids that move
    together: an attention block's two MatMuls, which TensorRT fuses only as a whole; overlapping units
    join) merged into its first layer, values added; and ``expand(layers) -> set`` naming every member of the units given."""
    merged_units = []
    for u in map(set, units):   # overlapping units (a block reading a massive tensor) become one
        for other in [m for m in merged_units if m & u]:
            merged_units.remove(other)
            u |= other
        merged_units.append(u)
    head = {m: min(u) for u in merged_units for m in u}
    members = {min(u): u for u in merged_units}
    merged = []
    for values in (candidates, macs):
        out = {}
        for p, v in values.items():
            out[head.get(p, p)] = out.get(head.get(p, p), 0) + v
        merged.append(out)

    def expand(layers) -> set:
        return {m for p in layers for m in members.get(p, {p})}
    return merged[0], merged[1], expand


def choose(candidates: dict, macs: dict, build, ev: Evaluator, max_loss_db: float = 2.0,
           min_int8_share: float = 0.85, total_macs: int | None = None, int8: Measurement | None = None,
           task_ok=None, weights=None, speed: dict | None = None) -> Choice:
    """``candidates``: layer id -> estimated contribution of its INT8 input to the output noise
    (see :func:`propagation_gains`); ``macs``: layer id -> MACs of every quantized layer;
    ``total_macs``: of all weighted layers, those in float by the placement rules included;
    ``build(float_layers) -> model`` builds the file with those layers in float; ``int8`` is the
    all-INT8 file's measurement when already made; ``weights(float_layers) -> model`` its weights-only
    view (default: :func:`qdq.graph.bypass.weights_only` of ``build``'s file; a file whose biases
    correct activation errors needs its weight-only correction there).  The target is reached when the lower end of the
    interval of (file − weights-only) is within ``max_loss_db``; then, if ``task_ok(measurement)`` says
    the task agreement is not yet enough, layers are added in the same order until it is.  ``speed``:
    the device's timings, for :func:`rank`."""
    total, int8_macs = total_macs or sum(macs.values()) or 1, sum(macs.values())
    weights = weights or (lambda fl: weights_only(build(fl)))
    out = Choice()
    out.int8 = m = int8 if int8 is not None else ev.measure(build(set()))
    w = ev.measure(weights(set()))
    out.int8_db, out.weights_only_db = m.sqnr().value, w.sqnr().value
    out.steps.append((0, out.int8_db, out.weights_only_db))
    ranked = rank(candidates, macs, speed)
    fits = _mac_floor(macs, int8_macs, total, min_int8_share)
    chosen, alpha = [], max(_noise(out.int8_db) - _noise(out.weights_only_db), 0.0) / (sum(candidates[p] for p in ranked) or 1.0)
    for _ in range(MAX_ROUNDS):
        if m.gap_low(w) >= -max_loss_db:
            break
        slack = (m.sqnr().value - w.sqnr().value) - m.gap_low(w)   # point minus lower end of the gap
        target = _noise(w.sqnr().value - max_loss_db + slack + MARGIN_DB)
        added = _add_until(ranked, chosen, candidates, alpha, _noise(m.sqnr().value), target, fits)
        if not added:
            break
        m, w = _measure_step(build, weights, set(chosen), ev, w, max_loss_db)
        out.steps.append((len(chosen), m.sqnr().value, w.sqnr().value))
        left = sum(candidates[p] for p in ranked if p not in chosen) or 1.0
        alpha = max(_noise(m.sqnr().value) - _noise(w.sqnr().value), 0.0) / left
    out.reached = m.gap_low(w) >= -max_loss_db
    if task_ok is not None:
        m, w = _task_stage(ranked, chosen, fits, (build, weights), ev, m, w, task_ok, out, max_loss_db)
    out.final, out.final_weights_only = m, w
    out.final_db, out.final_weights_only_db = m.sqnr().value, w.sqnr().value
    out.int8_mac_share = (int8_macs - sum(macs[q] for q in chosen)) / total
    for p in chosen:   # what this layer's INT8 input would add back to the final file's noise
        out.float_layers[p] = power_db(1.0, _noise(out.final_db)) - power_db(1.0, _noise(out.final_db) + alpha * candidates[p])
    return out


def floor_hint(candidates: dict, macs: dict, choice: Choice, min_int8_share: float, total_macs: int,
               speed: dict | None = None) -> tuple | None:
    """When the MAC floor stopped :func:`choose` short of its target: the layers next in ranking order
    whose INT8 adds more than their share of the MACs in output noise (by the analysis: a larger share
    of the candidates' estimated noise than of their MACs), and the INT8 share of all ``total_macs``
    left with them in float too: (layer ids, share), or None when the target was reached, no such
    layer is left, or they fit under the floor (then the floor did not stop it).  Never measured:
    what the user may choose to allow."""
    if choice.reached:
        return None
    ranked = [p for p in rank(candidates, macs, speed) if p not in choice.float_layers]
    noise, work = sum(candidates[p] for p in ranked) or 1.0, sum(macs[p] for p in ranked) or 1
    costly = []
    for p in ranked:
        if candidates[p] / noise <= macs[p] / work:
            break
        costly.append(p)
    share = (sum(macs.values()) - sum(macs[q] for q in list(choice.float_layers) + costly)) / (total_macs or 1)
    return (costly, share) if costly and share < min_int8_share else None


def rank(candidates: dict, macs: dict, speed: dict | None = None) -> list:
    """Layer ids in the order they go to float: most output noise per multiply-accumulate INT8 speeds up
    first.  Without ``speed`` every MAC counts; with it (layer id -> the share of its FP16 time INT8
    saves on the device, :func:`qdq.trt.profile.device_speed`) a layer's MACs count by its share over the
    median share of the layers timed, so a layer that is no faster in INT8 (share ≤ 0) goes first and
    layers without a timing count as typical."""
    typical = sorted(v for v in (speed or {}).values() if v > 0)
    median = typical[len(typical) // 2] if typical else 1.0

    def key(p):
        if speed and p in speed and speed[p] <= 0:   # no faster in INT8: the most slowed first
            return (0, speed[p], -candidates[p])
        useful = macs[p] * (speed[p] / median if speed and p in speed else 1.0)
        return (1, -candidates[p] / useful, 0.0)
    return sorted((p for p in candidates if macs.get(p)), key=key)


def _mac_floor(macs: dict, int8_macs: int, total: int, min_int8_share: float):
    """fits(chosen, p): keeping ``p`` in float too leaves at least ``min_int8_share`` of the MACs INT8."""
    def fits(chosen, p):
        return (int8_macs - sum(macs[q] for q in chosen) - macs[p]) / total >= min_int8_share
    return fits


def _add_until(ranked, chosen, candidates, alpha, estimate, target, fits) -> bool:
    """Add layers in ranking order until the estimated noise reaches ``target``; True if any."""
    added = False
    for p in ranked:
        if p in chosen:
            continue
        if estimate <= target:
            break
        if not fits(chosen, p):
            continue          # over the MAC floor: a cheaper layer further down may still fit
        if alpha * candidates[p] < NEGLIGIBLE * estimate:
            continue          # its INT8 costs nothing measurable: floating it would only lose MACs
        chosen.append(p)
        estimate -= alpha * candidates[p]
        added = True
    return added


def _measure_step(build, weights, float_layers: set, ev, w, max_loss_db):
    """The candidate's measurement, and its own weights-only one once it reaches the last one's."""
    m = ev.measure(build(float_layers))
    if m.gap_low(w) >= -max_loss_db:
        w = ev.measure(weights(float_layers))
    return m, w


def _task_stage(ranked, chosen, fits, builders, ev, m, w, task_ok, out, max_loss_db):
    """More layers in float, doubling the batch, until ``task_ok`` or the MAC floor."""
    batch = 1
    while not task_ok(m):
        more = []
        for p in ranked:
            if p not in chosen and len(more) < batch and fits(chosen + more, p):
                more.append(p)
        if not more:
            break
        chosen += more
        m, w = _measure_step(*builders, set(chosen), ev, w, max_loss_db)
        out.steps.append((len(chosen), m.sqnr().value, w.sqnr().value))
        batch *= 2
    out.task_reached = task_ok(m)
    return m, w
