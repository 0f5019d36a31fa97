"""Per-layer sensitivity (``qdq sensitivity``), output-referred and from one ONNX Runtime pass.

For every quantized weighted layer, from :mod:`qdq.measure.analysis` on validation samples:

* ``input_db`` / ``weight_db`` / ``layer_db``: the SQNR its INT8 input, its INT8 weight, and both leave
  at the layer's own output (after the bias, BatchNorm and activation TensorRT fuses into it);
* ``contribution_db``: the estimated SQNR at the *model's* output if only this layer's input were
  INT8: its input noise times the propagation gain of its run of sites (:mod:`qdq.measure.mixed_precision`);
* its share of the model's multiply-accumulates.

Ranked by estimated output noise per MAC: the order mixed precision keeps layers in float.
``verify=N`` measures the N most harmful end to end (every layer INT8 but that one; the all-INT8 model
too) with two model builds and ONNX Runtime runs each (:func:`end_to_end`; ``tools/bench.py`` times
both ways).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import onnx

from ..calib.data import Dataset, Preprocess, first_feeds, model_inputs
from ..graph.placement import replace
from ..graph.writer import build_model
from ..errors import QdqError
from ..progress import progress
from .analysis import analyze
from .evaluate import Evaluator
from .metrics import json_safe, power_db
from .mixed_precision import GROUPS, propagation_gains

VALIDATION_SAMPLES = 16


@dataclass
class LayerSensitivity:
    node: str               # label (unique name) of the layer
    id: int                 # its node id in the float model
    op: str
    mac_share: float
    input_db: float         # SQNR its INT8 input leaves at the layer's output
    weight_db: float        # … its INT8 weight
    layer_db: float         # … both
    contribution_db: float  # estimated SQNR at the model's output with only this layer's input INT8
    all_but_db: float | None = None   # measured: every layer INT8 but this one (verify)


@dataclass
class SensitivityResult:
    layers: list            # LayerSensitivity, most harmful per MAC first
    samples: int
    full_db: float | None = None   # measured, every layer INT8 (verify)

    def to_dict(self) -> dict:
        return json_safe(asdict(self))


def sensitivity(result, data, *, preprocess: Preprocess | None = None, limit: int | None = None,
                verify: int = 0, quiet: bool = False) -> SensitivityResult:
    """Output-referred sensitivity of ``result`` (a :class:`qdq.pipeline.QuantizeResult`: its float
    model, index, placement, ranges, MACs per layer and ``variant()``) on ``data``."""
    plan = result.placement
    if not plan.quantized_layers:
        raise QdqError("no quantized weighted layer to analyse")
    fm, idx = result.float_model, result.index
    feeds = first_feeds(Dataset(data, model_inputs(fm), preprocess or Preprocess(), limit=limit), VALIDATION_SAMPLES)
    a = analyze(fm, idx, plan, result.ranges, feeds, quiet, groups=GROUPS)
    gains = propagation_gains(a, centred=False)
    macs = result.macs
    total = sum(macs.values()) or 1
    rows = []
    for layer in plan.quantized_layers:
        sites = a.layer_sites(layer)
        inputs = [s for s in sites if s.kind == "activation"]
        weight = next((s for s in sites if s.kind == "weight"), None)
        signal = sites[0].signal if sites else 0.0
        noise_in = sum(s.noise for s in inputs)
        contribution = sum(gains.get(s.tensor, 1.0) * s.noise / s.signal for s in inputs if s.signal > 0)
        both = a.layers.get(layer)
        rows.append(LayerSensitivity(idx.labels[layer], layer, idx.nodes[layer].op_type, macs.get(layer, 0) / total,
                                     power_db(signal, noise_in), weight.sqnr_db if weight else math.inf,
                                     both.sqnr_db if both else math.inf, power_db(1.0, contribution)))
    rows.sort(key=lambda r: -(10 ** (-r.contribution_db / 10)) / max(r.mac_share, 1e-12))
    out = SensitivityResult(rows, a.samples)
    if verify:
        measured = end_to_end(result, [r.id for r in rows[:verify]], feeds, only=False, quiet=quiet)
        out.full_db = measured.pop(None)
        for r in rows[:verify]:
            r.all_but_db = measured[r.id]["all_but"]
    return out


def end_to_end(result, layers: list, feeds: list, only: bool = True, quiet: bool = False) -> dict:
    """Measured output SQNR, per layer id in ``layers``: with every quantized layer INT8 but that one
    (``all_but``) and, with ``only``, with only that one INT8 (``only``); key None: all INT8.
    Two model builds (:func:`variant`) and ONNX Runtime runs per layer."""
    plan = result.placement
    ev = Evaluator(result.float_model, feeds)

    def sqnr(keep_float):
        return ev.sqnr(variant(result, keep_float))

    out = {None: sqnr(set())}
    everything = set(plan.quantized_layers)
    with progress("end to end", len(layers), quiet) as advance:
        for layer in layers:
            out[layer] = {"all_but": sqnr({layer})}
            if only:
                out[layer]["only"] = sqnr(everything - {layer})
            advance()
    return out


def variant(result, keep_float: set) -> onnx.ModelProto:
    """``result``'s file (a :class:`qdq.pipeline.QuantizeResult`) with the layers ``keep_float`` (node
    ids) in float too: the placement redone with its own skips and user choices, its ranges made for
    that placement by its range book (methods per tensor, known bounds, imported ranges, scale groups
    shared anew, as mixed precision measured them), its bias corrections on the layers still INT8;
    trt10 form, unchecked (evaluated, never written)."""
    keep = dict(result.placement.skipped)
    keep.update({q: "float (variant)" for q in keep_float})
    p = replace(result.index, result.placement, keep) if keep_float else result.placement
    model, _ = build_model(result.float_model, result.index, p, result.book.ranges(p), "trt10", bias=result.bias,
                           check=False)
    return model
