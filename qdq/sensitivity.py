"""Sensitivity analysis and automatic mixed precision.

Per quantized weighted layer L (its activation-input and weight Q/DQ): the output SQNR on validation
data with only L quantized (everything else float), and with everything quantized except L.  One
calibration pass feeds every variant: variants differ only in which Q/DQ are written.

``fallback``: greedily keep the layers whose float fallback helps most (highest all-but-L SQNR) in
float (FP16 under ``--target trt11``) until the output SQNR reaches the target or ``max_fallback``
layers are out; each step re-measures the model actually built.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from .calibrate import run_session, session_for
from .data import Dataset, Preprocess, model_inputs
from .errors import QdqError
from .inspection import _static_shapes, layer_macs
from .metrics import ErrorAccumulator
from .pipeline import QuantizeResult, build_model, quantize
from .placement import WEIGHTED, Placement, WeightSpec
from .progress import progress


@dataclass
class LayerSensitivity:
    node: str               # label (unique name) of the layer
    id: int                 # its node id in the float model
    op: str
    mac_share: float
    only_db: float          # output SQNR with only this layer quantized
    all_but_db: float       # output SQNR with every layer but this one quantized


@dataclass
class SensitivityResult:
    full_db: float
    layers: list            # LayerSensitivity, most harmful first
    samples: int

    def to_dict(self) -> dict:
        from .comparison import _finite

        return _finite(asdict(self))


@dataclass
class FallbackResult:
    target_db: float
    before_db: float
    after_db: float
    fallback: list = field(default_factory=list)     # node ids kept in float, in the order chosen
    steps: list = field(default_factory=list)        # [(node, SQNR after excluding it)]
    int8_mac_share: float = 0.0
    reached: bool = False


def restrict(plan: Placement, layers: set) -> Placement:
    """The part of ``plan`` that belongs to ``layers`` (node ids) plus the Q/DQ that are not
    inputs of a weighted layer (residual shortcuts, pooling), which stay with any non-empty set."""
    weighted = set(plan.quantized_layers)
    out = Placement(quantized_layers=[n for n in plan.quantized_layers if n in layers], skipped=plan.skipped,
                    reasons=plan.reasons, groups=plan.groups)
    for t, users in plan.activations.items():
        kept = [(n, i) for n, i in users if n in layers or (n not in weighted and layers)]
        if kept:
            out.activations[t] = kept
    for w, spec in plan.weights.items():
        kept = [(n, i) for n, i in spec.consumers if n in layers]
        if kept:
            out.weights[w] = WeightSpec(w, spec.axis, kept)
    return out


class _Evaluator:
    """Output SQNR of candidate models on fixed validation samples against the float outputs."""

    def __init__(self, result: QuantizeResult, data, preprocess=None, limit=None, quiet=False):
        self.result = result
        fm = result.float_model
        self.feeds = [(src, feed) for src, feed in Dataset(data, model_inputs(fm), preprocess or Preprocess(), limit=limit)]
        sess = session_for(fm)
        self.refs = [run_session(sess, feed, src) for src, feed in self.feeds]
        self.quiet = quiet

    def sqnr(self, plan: Placement) -> float:
        r = self.result
        model, _ = build_model(r.float_model, r.index, plan, r.ranges, r.summary.target, r.fp16)
        sess = session_for(model)
        acc = ErrorAccumulator()
        for (src, feed), ref in zip(self.feeds, self.refs):
            out = run_session(sess, feed, src)
            for name, value in ref.items():
                acc.add(value, out[name])
        return acc.sqnr_db


def _mac_shares(result: QuantizeResult) -> dict:
    idx = _static_shapes(result.float_model, None)
    macs = {i: layer_macs(idx, n) or 0 for i, n in enumerate(idx.nodes) if n.op_type in WEIGHTED}
    total = sum(macs.values())
    return {k: (v / total if total else 0.0) for k, v in macs.items()}


def analyze(result: QuantizeResult, data, *, preprocess: Preprocess | None = None, limit: int | None = None,
            quiet: bool = False, ev: _Evaluator | None = None) -> SensitivityResult:
    """Per-layer sensitivity of ``result`` (a :func:`qdq.quantize` result) on validation ``data``."""
    ev = ev or _Evaluator(result, data, preprocess, limit, quiet)
    plan = result.placement
    layers = list(plan.quantized_layers)
    if not layers:
        raise QdqError("no quantized weighted layer to analyse")
    shares = _mac_shares(result)
    idx = result.index
    full = ev.sqnr(plan)
    rows = []
    with progress("sensitivity", len(layers), quiet) as advance:
        for node in layers:
            rows.append(LayerSensitivity(idx.labels[node], node, idx.nodes[node].op_type, shares.get(node, 0.0),
                                         ev.sqnr(restrict(plan, {node})),
                                         ev.sqnr(restrict(plan, set(layers) - {node}))))
            advance()
    rows.sort(key=lambda r: (-r.all_but_db, r.only_db))
    return SensitivityResult(full, rows, len(ev.feeds))


def fallback(result: QuantizeResult, sens: SensitivityResult, data, target_db: float, max_fallback: int = 5, *,
             preprocess: Preprocess | None = None, limit: int | None = None, quiet: bool = False,
             ev: _Evaluator | None = None) -> FallbackResult:
    """Greedy float fallback in the order of ``sens`` until ``target_db`` holds (see module doc)."""
    ev = ev or _Evaluator(result, data, preprocess, limit, quiet)
    plan = result.placement
    layers = set(plan.quantized_layers)
    shares = {r.id: r.mac_share for r in sens.layers}
    out = FallbackResult(target_db, sens.full_db, sens.full_db)
    current = sens.full_db
    for row in sens.layers:
        if current >= target_db or len(out.fallback) >= max_fallback:
            break
        out.fallback.append(row.id)
        current = ev.sqnr(restrict(plan, layers - set(out.fallback)))
        out.steps.append((row.node, current))
    out.after_db = current
    out.reached = current >= target_db
    out.int8_mac_share = sum(v for k, v in shares.items() if k not in out.fallback)
    return out


def quantize_to_target(model, calib, data, target_db: float, max_fallback: int = 5, *, exclude=(), quiet=False,
                       preprocess: Preprocess | None = None, val_limit: int | None = None, **kwargs):
    """``qdq quantize --target-sqnr``: quantize, analyse, fall back greedily, and rebuild with the
    chosen layers excluded, reusing the one calibration pass.  Returns (QuantizeResult, FallbackResult)."""
    first = quantize(model, calib, exclude=exclude, quiet=quiet, preprocess=preprocess, **kwargs)
    ev = _Evaluator(first, data, preprocess, val_limit, quiet)
    sens = analyze(first, data, quiet=quiet, ev=ev)
    fb = fallback(first, sens, data, target_db, max_fallback, quiet=quiet, ev=ev)
    if not fb.fallback:
        return first, fb
    # build exactly what was measured: the first placement without the fallback layers
    idx = first.index
    plan = restrict(first.placement, set(first.placement.quantized_layers) - set(fb.fallback))
    plan.skipped = list(first.placement.skipped) + [(n, f"kept in float by --target-sqnr {target_db:g}") for n in fb.fallback]
    model, _ = build_model(first.float_model, first.index, plan, first.ranges, first.summary.target, first.fp16)
    del model.metadata_props[:]
    model.metadata_props.extend(first.model.metadata_props)
    s = first.summary
    summary = replace(
        s, quantized_layers=[idx.labels[i] for i in plan.quantized_layers],
        skipped=[{"node": idx.labels[i], "op": idx.nodes[i].op_type, "reason": why} for i, why in plan.skipped],
        activations={t: a for t, a in s.activations.items() if t in plan.activations},
        weights={w: a for w, a in s.weights.items() if w in plan.weights},
        warnings=s.warnings + [
            f"--target-sqnr {target_db:g}: kept {len(fb.fallback)} layers in float ({', '.join(idx.labels[i] for i in fb.fallback)}); "
            f"output SQNR {fb.before_db:.2f} → {fb.after_db:.2f} dB; INT8 share of MACs {fb.int8_mac_share:.1%}"
            + ("" if fb.reached else f"; target not reached within --max-fallback {max_fallback}")])
    return QuantizeResult(model, summary, {t: r for t, r in first.ranges.items() if t in plan.activations}, plan,
                          first.calibration, first.float_model, first.index), fb
