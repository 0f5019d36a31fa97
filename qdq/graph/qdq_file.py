"""Reading a Q/DQ file back: its activation Q/DQ sites and ranges, and the precision the file asks
for each weighted layer, with the reason when it is float.

:func:`layer_precisions` is the one reading of "which layers does this file run in INT8, and why not
the others" that ``qdq inspect``, ``qdq check --layers`` (the file column of the engine view), the
quantize summary and the HTML report share.
"""
from __future__ import annotations

import json

from dataclasses import dataclass

import numpy as np
import onnx

from ..calib.ranges import QMAX
from ..modelio import metadata
from .index import GraphIndex
from .placement import WEIGHTED, skip_reason
from .shapes import layer_macs, static_shapes

MIXED_FLOAT = "float (mixed precision)"   # the file precision of a layer mixed precision kept in float


@dataclass
class QdqSite:
    """An activation QuantizeLinear: the tensor it reads, its scale and where it sits; ``dequantized``
    names its DequantizeLinear's output (the tensor its consumers read), ``method`` how the range was
    set as qdq recorded it ("imported (qdq-json)", "mse", …; "" for a file qdq did not write)."""

    tensor: str
    scale: float
    node: str
    consumers: list
    position: int
    dequantized: str = ""
    method: str = ""

    @property
    def imported(self) -> bool:
        return is_imported(self.method)

    @property
    def amax(self) -> float:
        return self.scale * QMAX


def is_imported(method: str) -> bool:
    """Whether a range ``method`` qdq recorded says the user imported it ("imported (json)", …)."""
    return method.startswith("imported")


def qdq_sites(model: onnx.ModelProto) -> list[QdqSite]:
    """Activation Q/DQ pairs of ``model`` (QuantizeLinear reading a non-constant tensor)."""
    idx = GraphIndex.build(model, infer_shapes=False)
    sites = []
    for pos, n in enumerate(model.graph.node):
        if n.op_type != "QuantizeLinear" or idx.constant(n.input[0]) is not None:
            continue
        scale = idx.constant(n.input[1])
        if scale is None or np.asarray(scale).size != 1:
            continue
        users = [idx.labels[c] for q_out in n.output for dq, _ in idx.consumers.get(q_out, [])
                 for dq_out in idx.nodes[dq].output for c, _ in idx.consumers.get(dq_out, [])]
        dq = [idx.nodes[d].output[0] for q_out in n.output for d, _ in idx.consumers.get(q_out, [])
              if idx.nodes[d].op_type == "DequantizeLinear"]
        # qdq writes "amax=… scale=… method=…" last, and a method may hold spaces: "imported (qdq-json)"
        method = n.doc_string.split("method=", 1)[1] if "method=" in n.doc_string else ""
        sites.append(QdqSite(n.input[0], float(np.asarray(scale).reshape(-1)[0]), n.name, users, pos,
                             dq[0] if dq else "", method))
    return sites


def model_ranges(model: onnx.ModelProto) -> dict:
    """amax (= scale · 127) of every activation Q/DQ in ``model``: tensor → amax."""
    return {s.tensor: s.amax for s in qdq_sites(model)}


def kept_float(model: onnx.ModelProto) -> set:
    """Names of the layers mixed precision kept in float, from the file's metadata."""
    meta = metadata(model)
    return {n.strip() for n in meta.get("qdq_float_layers", "").split(",") if n.strip()}


def recorded_macs(model: onnx.ModelProto) -> dict:
    """node name → MACs per sample as ``qdq quantize`` measured them on its data (metadata
    ``qdq_layer_macs``), {} for any other file."""
    text = metadata(model).get("qdq_layer_macs", "")
    try:
        macs = json.loads(text) if text else {}
    except ValueError:
        return {}
    return {k: int(v) for k, v in macs.items() if isinstance(v, (int, float))} if isinstance(macs, dict) else {}


def recorded_shapes(model: onnx.ModelProto) -> dict:
    """input → the shape the file was calibrated at (metadata ``qdq_input_shapes``, written by
    ``qdq quantize`` with :func:`qdq.graph.shapes.shape_text`), {} for any other file (or an entry that
    does not read as dims): what a build uses for dynamic inputs unless told otherwise."""
    out = {}
    for item in filter(None, metadata(model).get("qdq_input_shapes", "").split(", ")):
        name, _, dims = item.rpartition("=")
        try:
            out[name] = () if dims == "scalar" else tuple(int(d) for d in dims.split("x"))
        except ValueError:
            return {}
    return {k: v for k, v in out.items() if k}


def layer_precisions(model: onnx.ModelProto, shapes: dict | None = None, idx: GraphIndex | None = None) -> list[dict]:
    """Per weighted layer of the Q/DQ file ``model``, in graph order: ``{"node", "op", "int8", "file",
    "reason", "macs"}``.  A layer is INT8 in the file when both its inputs come straight from a
    DequantizeLinear; ``file`` is "int8", :data:`MIXED_FLOAT` or "float"; ``reason`` says why a float
    layer is float (mixed precision, a placement rule, or the input without Q/DQ).  MACs at ``shapes``
    (:func:`qdq.graph.shapes.static_shapes`; ``idx``, such an index, saves the inference), or without
    ``shapes`` the counts the file records from its calibration data (:func:`recorded_macs`)."""
    idx = idx or static_shapes(model, shapes)
    mixed, counted = kept_float(model), {} if shapes else recorded_macs(model)
    rows = []
    for n in idx.nodes:
        if n.op_type not in WEIGHTED:
            continue
        missing = [i for i, t in enumerate(n.input[:2]) if (p := idx.producer_node(t)) is None
                   or p.op_type != "DequantizeLinear"]
        int8 = not missing
        reason = None if int8 else _float_reason(idx, n, missing[0], n.name in mixed)
        macs = counted[n.name] if n.name in counted else layer_macs(idx.shapes, n)
        rows.append({"node": n.name, "op": n.op_type, "int8": int8, "reason": reason, "macs": macs,
                     "file": "int8" if int8 else (MIXED_FLOAT if n.name in mixed else "float")})
    return rows


def _float_reason(idx: GraphIndex, node, missing: int, mixed: bool) -> str:
    if mixed:
        return "kept in float by mixed precision (its INT8 cost most output noise per MAC)"
    w = idx.constant(node.input[1])
    if w is not None and w.dtype.kind == "f":
        rule = skip_reason(idx, node, w)
        if rule:
            return rule
    t = node.input[missing]
    paired = [c.name for q, _ in idx.consumer_nodes(t) if q.op_type == "QuantizeLinear"
              for dq, _ in idx.consumer_nodes(q.output[0]) for c, _ in idx.consumer_nodes(dq.output[0])]
    if paired:   # the tensor has a Q/DQ pair, but this layer reads it before the pair
        return (f"input {missing} ({t!r}) is read in float: its Q/DQ pair feeds only "
                f"{', '.join(repr(n) for n in paired[:3])}")
    return f"input {missing} ({t!r}) has no DequantizeLinear right before the layer"
