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
g_j = N_j / Σ_{i∈j} r_i, and layer i's estimated contribution is c_i = g_j·r_i.  Layers go to float in decreasing c_i / MACs_i.
Noise powers of independent sites add at the output, so removing a prefix of the ranking leaves an
estimated N − Σ c_i; the smallest prefix estimated to reach the target is built and measured, the
estimate is rescaled to the measurement, and layers are added until the measurement meets the target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..graph.bypass import weights_only
from .metrics import Evaluator, power_db

MAX_ROUNDS = 5
GROUPS = 4
# aim a little inside the target: the held-back samples are few
MARGIN_DB = 0.25


@dataclass
class Choice:
    """What mixed precision decided and measured (dB on the held-back samples)."""

    float_layers: dict = field(default_factory=dict)   # layer id -> estimated dB its INT8 would cost
    int8_db: float = math.nan            # all layers INT8
    weights_only_db: float = math.nan    # all layers INT8, activation Q/DQ bypassed
    final_db: float = math.nan           # the file written
    final_weights_only_db: float = math.nan
    int8_mac_share: float = 1.0          # of all weighted layers' MACs
    reached: bool = True
    steps: list = field(default_factory=list)   # (layers kept float, measured dB, its weights-only dB)


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


def choose(candidates: dict, macs: dict, build, ev: Evaluator, max_loss_db: float = 2.0,
           min_int8_share: float = 0.85, total_macs: int | None = None, int8_db: float | None = None) -> Choice:
    """``candidates``: layer id -> estimated contribution of its INT8 input to the output noise
    (see :func:`propagation_gains`); ``macs``: layer id -> MACs of every quantized layer;
    ``total_macs``: of all weighted layers, those in float by the placement rules included;
    ``build(float_layers) -> model`` builds the file with those layers in float; ``int8_db`` is the
    all-INT8 file's SQNR when already measured."""
    total = total_macs or sum(macs.values()) or 1
    int8 = sum(macs.values())
    out = Choice()
    full = build(set())
    out.int8_db = ev.sqnr(full) if int8_db is None else int8_db
    out.weights_only_db = ev.sqnr(weights_only(full))
    out.final_db, out.final_weights_only_db = out.int8_db, out.weights_only_db
    out.steps.append((0, out.int8_db, out.weights_only_db))
    if out.int8_db >= out.weights_only_db - max_loss_db:
        return out
    ranked = sorted((p for p in candidates if macs.get(p)), key=lambda p: -candidates[p] / macs[p])
    r_sum = sum(candidates[p] for p in ranked) or 1.0
    alpha = max(_noise(out.int8_db) - _noise(out.weights_only_db), 0.0) / r_sum
    chosen, measured, w_db = [], out.int8_db, out.weights_only_db
    for _ in range(MAX_ROUNDS):
        target = _noise(w_db - max_loss_db + MARGIN_DB)
        estimate = _noise(measured)
        added = False
        for p in ranked:
            if p in chosen:
                continue
            if estimate <= target:
                break
            if (int8 - sum(macs[q] for q in chosen) - macs[p]) / total < min_int8_share:
                continue          # over the MAC floor: a cheaper layer further down may still fit
            chosen.append(p)
            estimate -= alpha * candidates[p]
            added = True
        if not added:
            break
        model = build(set(chosen))
        measured = ev.sqnr(model)
        if measured >= w_db - max_loss_db:   # reached the last weights-only figure: measure this one's
            w_db = ev.sqnr(weights_only(model))
        out.steps.append((len(chosen), measured, w_db))
        if measured >= w_db - max_loss_db:
            break
        left = sum(candidates[p] for p in ranked if p not in chosen) or 1.0
        alpha = max(_noise(measured) - _noise(w_db), 0.0) / left
    out.final_db, out.final_weights_only_db = measured, w_db
    out.reached = measured >= w_db - max_loss_db
    out.int8_mac_share = (int8 - sum(macs[q] for q in chosen)) / total
    for p in chosen:   # what this layer's INT8 input would add back to the final file's noise
        out.float_layers[p] = power_db(1.0, _noise(measured)) - power_db(1.0, _noise(measured) + alpha * candidates[p])
    return out
