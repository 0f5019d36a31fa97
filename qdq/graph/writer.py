"""The file writer: a float model, a placement and its ranges → the Q/DQ ONNX (and, for ``trt11``, its
FP16 remainder), in one graph-surgeon pass checked once.  Candidates evaluated but never written
skip the check."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..calib.calibrate import Calibration
from ..calib.range_files import RangeFile
from ..calib.ranges import Range, clipped_fraction, compute_range
from .index import GraphIndex
from .placement import Placement
from .precision import cast_graph, emulate_in_place, opsets_of
from .rewrite import insert_qdq, set_docs
from .surgery import export_graph, export_lent, import_graph, tidy


@dataclass(frozen=True)
class RangeBook:
    """The ranges of any placement of one model: the user's where ``imported`` gives them (as given),
    else the op's known range for the tensors of ``bounds`` (amax 1: softmax, sigmoid, tanh), else
    computed from ``cal``'s statistics by ``method`` (by the method the smoothing chose, per tensor,
    in ``tensor_methods``), each (tensor, method) computed once for every candidate; then one amax
    per scale group (:func:`share_ranges`)."""

    cal: Calibration
    method: str
    percentile: float = 99.99
    imported: RangeFile | None = None
    tensor_methods: dict = field(default_factory=dict)
    bounds: dict = field(default_factory=dict)   # tensor -> op: its Q/DQ takes the op's known range, amax 1
    computed: dict = field(default_factory=dict, repr=False, compare=False)   # (tensor, method) -> Range

    def ranges(self, plan: Placement) -> dict:
        """tensor -> Range for every activation of ``plan``."""
        imp, out = self.imported, {}
        for t in plan.activations:
            if imp is not None and t in imp.amax:
                out[t] = fixed_range(self.cal, t, imp.amax[t], f"imported ({imp.kind})")
                continue
            if t in self.bounds:
                out[t] = fixed_range(self.cal, t, 1.0, f"bound ({self.bounds[t]})")
                continue
            key = (t, self.tensor_methods.get(t, self.method))
            if key not in self.computed:
                self.computed[key] = compute_range(self.cal.stats[t], key[1], self.percentile)
            out[t] = self.computed[key]
        return share_ranges(plan, out, self.cal, set(imp.amax) if imp is not None else ())

    def using(self, method: str) -> "RangeBook":
        """The same book by another method (its computed ranges shared)."""
        return dataclasses.replace(self, method=method, computed=self.computed)

    def bounded(self, bounds: dict) -> "RangeBook":
        """The same book with the tensors of ``bounds`` (tensor → op) at their op's known range."""
        return dataclasses.replace(self, bounds=dict(bounds), computed=self.computed)


def share_ranges(plan: Placement, ranges: dict, cal: Calibration, given=frozenset()) -> dict:
    """Tensors of one scale group (a Concat's inputs and output, MaxPool/Resize in and out) take one
    amax: the largest of the group, or the user's where the group holds ranges they gave (``given``:
    those tensors), which are never changed; a group whose given ranges differ is left unshared."""
    ranges = dict(ranges)
    for group in plan.groups:
        mine = {ranges[t].amax for t in group if t in given}
        if len(mine) > 1:
            continue
        shared = mine.pop() if mine else max(ranges[t].amax for t in group)
        for t in group:
            r = ranges[t]
            if t in given:
                continue
            ranges[t] = fixed_range(cal, t, shared, f"{r.method} (shared)")
    return ranges


def fixed_range(cal: Calibration, t: str, amax: float, method: str) -> Range:
    """``t``'s range at an ``amax`` not computed from its data, with the share of its calibration values
    beyond it (None when ``cal`` has no statistics of ``t``)."""
    stats = cal.stats.get(t)
    return Range(amax, method, clipped_fraction(stats, amax) if stats is not None else None)


def build_model(float_model: onnx.ModelProto, idx: GraphIndex, plan: Placement, ranges: dict, target: str,
                fp16=None, warnings: list | None = None, bias: dict | None = None, check: bool = True) -> tuple:
    """The Q/DQ model for ``plan`` with ``ranges`` (tensor → Range), in one graph-surgeon pass: Q/DQ
    insertion with the bias corrections ``bias`` (layer id → mean error per channel) and, for trt11,
    the FP16 remainder with the nodes of ``fp16`` (a :class:`qdq.measure.autocast.Fp16Plan`) kept
    FP32; ``idx`` indexes ``float_model``.  Returns (model, notes); appends what the user should know
    to ``warnings``.  ``check=False`` skips the final full check, for candidates only evaluated."""
    graph = import_graph(idx)
    nodes = list(graph.nodes)
    notes, docs = insert_qdq(graph, nodes, plan, {t: r.amax for t, r in ranges.items() if t in plan.activations},
                             {t: r.method for t, r in ranges.items()}, bias=bias, codes=idx.weight_codes)
    if target == "trt11":
        cast_graph(graph, opsets_of(float_model), np.float16, [nodes[i] for i in (fp16.keep if fp16 is not None else {})])
    qmodel = export_graph(graph, float_model, "Q/DQ insertion" + (" and FP16 cast" if target == "trt11" else ""), check)
    set_docs(qmodel, docs)
    for n in notes:
        if n.floored and n.tensor in plan.weights and warnings is not None:
            warnings.append(f"weight {n.tensor!r} has all-zero (dead) channels or scales below the float32 range; "
                            "those channels got a positive placeholder scale")
    return qmodel, notes


def device_view(float_model: onnx.ModelProto, idx: GraphIndex, plan: Placement, ranges: dict, bias: dict,
                keep_names, weights_alone: bool = False) -> tuple:
    """The trt10 file :func:`build_model` makes for ``plan``, as weakly typed TensorRT runs it with
    ``--int8 --fp16`` (what :func:`qdq.graph.precision.remainder_fp16` makes of that file: the float
    nodes in FP16 but those named in ``keep_names``, emulated in FP32 with explicit FP16 rounding), on
    one graph and exported for an ONNX Runtime session only: (model, lent) for
    :func:`qdq.calib.session.session_for`.  ``weights_alone``: only the weights quantized (what
    :func:`qdq.graph.bypass.weights_only` makes of the file: its activation Q/DQ pass values through).
    Never written, never checked."""
    graph = import_graph(idx)
    nodes = list(graph.nodes)
    if weights_alone:
        plan = dataclasses.replace(plan, activations={}, groups=[])
    insert_qdq(graph, nodes, plan, {t: r.amax for t, r in ranges.items() if t in plan.activations},
               {t: r.method for t, r in ranges.items()}, bias=bias, codes=idx.weight_codes)
    tidy(graph)
    opsets = opsets_of(float_model)
    keep = set(keep_names)
    cast_graph(graph, opsets, np.float16, [n for n in graph.nodes if n.name in keep])
    emulate_in_place(graph, opsets)
    tidy(graph)
    return export_lent(graph, float_model)
