"""What ``qdq quantize`` did, as data (:class:`Summary`, the ``--json`` output), and the parts of it
built from the placement: what an imported ranges file applied, ``--ranges-out``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..calib.range_files import RangeFile, qdq_json_text
from ..graph.index import GraphIndex
from ..graph.placement import Placement, served_layers
from ..modelio import atomic_write_text


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
        return asdict(self)


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
