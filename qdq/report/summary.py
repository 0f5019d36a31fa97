"""What ``qdq quantize`` did, as data (:class:`Summary`, the ``--json`` output), and the parts of it
built from the placement: what an imported ranges file applied, ``--ranges-out``."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..calib.range_files import RangeFile, qdq_json_text
from ..graph.index import GraphIndex
from ..graph.placement import Placement, served_layers
from ..graph.shapes import shape_text
from ..measure.metrics import json_safe
from ..modelio import atomic_write_text, opset_of
from ..version import __version__


@dataclass
class Summary:
    """What ``quantize`` did; ``to_dict()`` is the ``--json`` output."""

    model: str
    target: str
    method: str
    opset: int
    samples: int
    quantized_layers: list
    weighted_layers: int
    skipped: list                      # [{"node", "op", "reason"}]
    activations: dict                  # tensor -> {"amax", "scale", "method", "clipped", "reason"}
    weights: dict                      # tensor -> {"axis", "amax_max"}
    warnings: list = field(default_factory=list)
    output: str | None = None
    ranges_import: dict | None = None   # what an imported ranges file applied, and what it could not
    diagnosis: list = field(default_factory=list)   # with imported ranges: causes of the loss (qdq.measure.diagnosis)
    fp32_nodes: dict = field(default_factory=dict)   # trt11: node -> why it stays FP32
    int8_mac_share: float = 0.0                     # share of the weighted layers' MACs in INT8
    mac_shapes: dict = field(default_factory=dict)  # input -> the shape the MACs were counted at (the data's)
    mac_source: str = "shape inference"             # where the layers' dims came from: data | shape inference
    mac_unknown: list = field(default_factory=list)  # layers whose MACs are unknown (left out of the share)
    bias_corrected: int = 0                         # layers whose bias took the mean INT8 error out
    bias_correction: str = "off"                    # full | weights | off, as measured best on held-back data
    float_layers: list = field(default_factory=list)  # mixed precision: [{"node", "op", "mac_share", "cost_db"}]
    accuracy: dict | None = None                    # held-back SQNR: INT8, weights only, the file written
    engine: dict | None = None                      # what TensorRT built (CLI, when TensorRT-RTX is installed)

    def to_dict(self) -> dict:
        """The summary as JSON takes it: NaN and ±inf as null (:func:`qdq.measure.metrics.json_safe`)."""
        return json_safe(asdict(self))


def tensor_names(idx: GraphIndex) -> set:
    """Every tensor a ranges file could name: typed, produced, or a graph input."""
    return set(idx.dtypes) | set(idx.producer) | set(idx.inputs)


def import_report(imported: RangeFile | None, placed: Placement, plan: Placement, idx: GraphIndex, ranges: dict,
                   fallback: bool) -> dict | None:
    """What an imported ranges file did: entries applied (written as given), the calibrated tensors
    that share a scale with them, and each entry not applied with its true reason (``placed``: the
    placement rules' plan, ``plan``: the file's, after mixed precision)."""
    if imported is None:
        return None
    known = tensor_names(idx)
    unused = []
    for t in sorted(t for t in imported.amax if t in known and t not in plan.activations):
        if t in placed.activations:
            layers = ", ".join(idx.labels[p] for p in sorted(served_layers(idx, placed, t))) or "its readers"
            why = (f"mixed precision kept the layers it feeds ({layers}) in float (--fallback-imported)" if fallback
                   else f"the layers it feeds ({layers}) were left in float")
        else:
            users = ", ".join(f"{n.op_type} {n.name!r}" for n, _ in idx.consumer_nodes(t)[:3]) or "no node"
            why = f"the placement rules put no Q/DQ there (read by {users}); --force-ranges applies it"
        unused.append({"tensor": t, "reason": why})
    applied = [t for t in imported.amax if t in plan.activations and ranges[t].amax == imported.amax[t]]
    shared, split = {}, []
    for group in plan.groups:
        mine = sorted(t for t in group if t in imported.amax and t in plan.activations)
        if len({imported.amax[t] for t in mine}) > 1:
            split.append(mine)
        elif mine:
            shared[mine[0]] = sorted(t for t in group if t not in imported.amax)
    return {"file": imported.path, "kind": imported.kind, "header": imported.header,
            "applied": len(applied), "unused": unused, "shared": shared, "unshared_groups": split,
            "not_in_model": sorted(t for t in imported.amax if t not in known),
            "zero": sorted(imported.zero), "asymmetric": sorted(imported.asymmetric)}


def write_ranges(summary: Summary, path) -> None:
    """``--ranges-out``: tensor → amax, method, fraction of calibration values clipped (JSON)."""
    entries = {t: {"amax": a["amax"], "method": a["method"], "clipped": a["clipped"]}
               for t, a in summary.activations.items()}
    atomic_write_text(Path(path), qdq_json_text(entries, summary.method, samples=summary.samples))


@dataclass(frozen=True)
class RunFacts:
    """What one ``quantize`` run decided, for its metadata and summary (``decided``: the pipeline's
    Decided; ``macs``: its Macs; ``placed``: the placement rules' plan)."""

    opts: object
    idx: GraphIndex
    placed: Placement
    decided: object
    macs: object
    samples: int
    imported: RangeFile | None
    calibrated: bool
    int8_share: float
    corrected: int                  # layers whose bias took the mean INT8 error out
    equalization: str = ""          # graph.equalize.record ("" none)


def metadata(f: RunFacts) -> dict:
    """The ONNX metadata: how the file was made, its held-back figures, and the FP16 plan's FP32 nodes
    (TensorRT 8.x/10.x pin them with --layerPrecisions; qdq trt build does it for you)."""
    o, d, idx = f.opts, f.decided, f.idx
    method, choice = d.method.method, d.mixed.choice if d.mixed is not None else None
    acc = d.figures.accuracy if d.figures is not None else None
    meta = {"qdq_version": __version__, "qdq_method": method if f.calibrated else "imported",
            "qdq_samples": f.samples, "qdq_target": o.graph.target,
            "qdq_percentile": o.ranges.percentile if method == "percentile" else "",
            "qdq_int8_mac_share": f"{f.int8_share:.4f}", "qdq_bias_correction": f"{d.bias.mode} ({f.corrected} layers)",
            "qdq_remainder": "fp16" if d.fp16 is not None else "fp32"}
    if f.equalization:   # how compare rebuilds the float model the file was made from
        meta["qdq_equalization"] = f.equalization
    if f.macs.shapes:   # what qdq check and qdq trt build use for dynamic inputs
        meta["qdq_input_shapes"] = shape_text(f.macs.shapes)
    if f.macs.counts:   # one count of each layer's MACs for the summary, inspect and the engine view
        meta["qdq_layer_macs"] = json.dumps({idx.labels[p]: m for p, m in f.macs.counts.items()}, separators=(",", ":"))
    if d.fp16 is not None:
        meta["qdq_fp32_nodes"] = ",".join(d.fp16.pins(idx, d.plan.quantized_layers))
    if f.imported is not None and f.imported.path:
        meta["qdq_ranges_file"] = Path(f.imported.path).name   # the diagnosis names it
    if choice is not None:
        meta["qdq_float_layers"] = ", ".join(idx.labels[p] for p in choice.float_layers)
    if acc is not None:
        meta.update(qdq_heldout_output=acc["final_outputs"]["output"], qdq_heldout_sqnr_db=f"{acc['final_db']:.2f}",
                    qdq_heldout_weights_only_db=f"{acc['final_weights_only_db']:.2f}",
                    qdq_heldout_interval_db="{:.2f}–{:.2f}".format(*acc["final_interval_db"]),
                    qdq_heldout_samples=str(acc["held_back_samples"]))
        if acc["task"]["figures"]:
            head, fig = next(iter(acc["task"]["figures"].items()))
            meta["qdq_heldout_task"] = (f"{acc['task']['name']} {head} {fig['value']:.4f} ({fig['low']:.4f}–{fig['high']:.4f})"
                                        if fig["value"] == fig["value"] else f"{acc['task']['name']} {head} unmeasured")
    return meta


def _accuracy(f: RunFacts) -> dict | None:
    """The held-back check and what mixed precision measured, for the summary."""
    d = f.decided
    if d.figures is None:
        return None
    acc, c = dict(d.figures.accuracy), d.mixed.choice if d.mixed is not None else None
    # without mixed precision the file is the all-INT8 file: its own figure, on the samples that report
    int8_db = c.int8.sqnr().value if c is not None else acc["final_db"]
    weights_db = c.weights_only_db if c is not None else acc["final_weights_only_db"]
    if d.figures.reported_int8:
        int8_db, weights_db = (m.sqnr().value for m in d.figures.reported_int8)
    acc.update(int8_db=int8_db, weights_only_db=weights_db, max_loss_db=f.opts.accuracy.max_loss_db,
               reached=d.reached if c is not None else None, evaluations=len(c.steps) if c is not None else 0,
               method_scores=d.method.scores or None)
    if d.bounds.tried:
        acc["known_ranges"] = {"tensors": list(d.bounds.tried), "taken": bool(d.bounds.bounds),
                               "gap_low_db": d.bounds.gap_low}
    return acc


def summarize(f: RunFacts, source: str, qmodel, notes: list, warnings: list) -> Summary:
    """The summary of the file ``qmodel`` (``notes``: the writer's, one per Q/DQ written)."""
    o, d, idx = f.opts, f.decided, f.idx
    plan, c = d.plan, d.mixed.choice if d.mixed is not None else None
    total = sum(f.macs.counts.values()) or 1
    return Summary(
        ranges_import=import_report(f.imported, f.placed, plan, idx, d.ranges, o.accuracy.fallback_imported),
        model=source, target=o.graph.target, method=d.method.method, opset=opset_of(qmodel), samples=f.samples,
        quantized_layers=[idx.labels[i] for i in plan.quantized_layers],
        weighted_layers=len(plan.quantized_layers) + len(plan.skipped),
        skipped=[{"node": idx.labels[i], "op": idx.nodes[i].op_type, "reason": why} for i, why in plan.skipped],
        activations={t: {"amax": r.amax, "scale": r.scale, "method": r.method, "clipped": r.clipped,
                         "reason": plan.reasons.get(t, "")} for t, r in d.ranges.items()},
        weights={w: {"axis": s.axis, "amax_max": next(n.amax for n in notes if n.tensor == w)}
                 for w, s in plan.weights.items()},
        fp32_nodes=d.fp16.names(idx) if d.fp16 is not None else {},
        int8_mac_share=f.int8_share, bias_corrected=f.corrected, bias_correction=d.bias.mode,
        mac_shapes={k: list(v) for k, v in f.macs.shapes.items()}, mac_source=f.macs.source, mac_unknown=f.macs.unknown,
        float_layers=[{"node": idx.labels[p], "op": idx.nodes[p].op_type, "mac_share": f.macs.counts.get(p, 0) / total,
                       "cost_db": db} for p, db in (c.float_layers.items() if c else [])],
        accuracy=_accuracy(f), warnings=warnings)
