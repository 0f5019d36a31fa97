"""``qdq inspect``: a Q/DQ model's pairs, its INT8 coverage (:func:`qdq.graph.qdq_file.layer_precisions`)
and TensorRT lint rules."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..calib.ranges import QMAX
from ..graph.placement import WEIGHTED, attention_units, weight_axis
from ..graph.qdq_file import layer_precisions
from ..graph.shapes import static_shapes

ERROR, WARNING = "error", "warning"
# id: (level, what it checks)
RULES = {
    "QDQ001": (ERROR, "zero-point must be 0 (TensorRT: 'Non-zero zero point is not supported')"),
    "QDQ002": (ERROR, "scales must be positive and finite"),
    "QDQ003": (ERROR, "a graph output is produced by a Q/DQ node"),
    "QDQ004": (WARNING, "quantized inputs of a Concat have different scales (TensorRT inserts reformats)"),
    "QDQ005": (ERROR, "per-channel axis does not match the consumer's weight layout"),
    "QDQ006": (ERROR, "opset or scale dtype does not suit the target TensorRT"),
    "QDQ007": (ERROR, "a QuantizeLinear without a DequantizeLinear consumer"),
    "QDQ008": (ERROR, "zero-point is not INT8 (TensorRT takes symmetric INT8 only)"),
    "QDQ009": (ERROR, "DequantizeLinear of an INT32 tensor (e.g. a quantized bias): TensorRT's parser rejects it"),
    "QDQ010": (WARNING, "an attention block half INT8 (TensorRT fuses Q·Kᵀ → Softmax → ·V only as a whole)"),
}


@dataclass
class Finding:
    rule: str
    node: str
    message: str

    @property
    def level(self) -> str:
        return RULES[self.rule][0]


@dataclass
class Inspection:
    pairs: list = field(default_factory=list)        # one dict per Q/DQ (activation) or weight DQ
    coverage: dict = field(default_factory=dict)     # {"int8_macs", "total_macs", "share", "layers", ...}
    float_layers: list = field(default_factory=list)  # {"node", "op", "macs", "reason"}
    findings: list = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(f.level == ERROR for f in self.findings)

    def to_dict(self) -> dict:
        return {"pairs": self.pairs, "coverage": self.coverage, "float_layers": self.float_layers,
                "findings": [{"rule": f.rule, "level": f.level, "node": f.node, "message": f.message}
                             for f in self.findings], "errors": self.errors}


def inspect_model(model: onnx.ModelProto, target: str | None = None, shapes: dict | None = None) -> Inspection:
    """Q/DQ pairs, INT8 coverage of the weighted layers, and lint findings for ``target``."""
    idx = static_shapes(model, shapes)
    ins = Inspection()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            pair = _pair(idx, n)
            if pair is not None:
                ins.pairs.append(pair)
            ins.findings += _lint_qdq(idx, n, target, opset)
        elif n.op_type == "Concat":
            ins.findings += _lint_concat(idx, n)
    layers = layer_precisions(model, idx=idx)
    ins.findings += _lint_attention(idx, layers)
    known = [r for r in layers if r["macs"] is not None]
    total = sum(r["macs"] for r in known)
    int8 = sum(r["macs"] for r in known if r["int8"])
    ins.float_layers = [{"node": r["node"], "op": r["op"], "macs": r["macs"], "reason": r["reason"]}
                        for r in layers if not r["int8"]]
    ins.coverage = {"int8_macs": int8, "total_macs": total, "share": int8 / total if total else 0.0,
                    "layers": len(layers), "float_layers": len(ins.float_layers),
                    "unknown_shape_layers": len(layers) - len(known),
                    "activation_pairs": sum(p["kind"] == "activation" for p in ins.pairs),
                    "weight_pairs": sum(p["kind"] == "weight" for p in ins.pairs)}
    return ins


def _lint_attention(idx, layers: list) -> list:
    """QDQ010: attention blocks whose two MatMuls the file puts in different precisions."""
    int8 = {r["node"]: r["int8"] for r in layers}
    out = []
    for qk, av in attention_units(idx):
        a, b = idx.nodes[qk].name, idx.nodes[av].name
        if int8.get(a) != int8.get(b):
            out.append(Finding("QDQ010", a, f"attention block {a!r} → {b!r}: {a!r} is "
                               f"{'INT8' if int8.get(a) else 'float'}, {b!r} {'INT8' if int8.get(b) else 'float'}; "
                               "quantize both or neither"))
    return out


def _const(idx, name):
    v = idx.constant(name)
    return None if v is None else np.asarray(v)


def _pair(idx, n) -> dict | None:
    """The listing of a QuantizeLinear or a weight DequantizeLinear (an activation DQ is listed with
    its Q): tensor, consumers, amax and per-channel scales."""
    scale, data = _const(idx, n.input[1]), _const(idx, n.input[0])
    zp = _const(idx, n.input[2]) if len(n.input) > 2 and n.input[2] else None
    is_weight = n.op_type == "DequantizeLinear" and data is not None
    if n.op_type != "QuantizeLinear" and not is_weight:
        return None
    users = [(c.name, c.op_type) for c, _ in idx.consumer_nodes(n.output[0])]
    if n.op_type == "QuantizeLinear":
        users = [(c.name, c.op_type) for dq, _ in idx.consumer_nodes(n.output[0]) for c, _ in idx.consumer_nodes(dq.output[0])]
    s = scale.astype(np.float64).reshape(-1) if scale is not None else np.array([math.nan])
    return {"tensor": n.input[0], "node": n.name, "kind": "weight" if is_weight else "activation",
            "consumers": [f"{u} ({op})" for u, op in users],
            "amax": float(np.max(s) * QMAX), "scale_min": float(np.min(s)), "scale_median": float(np.median(s)),
            "scale_max": float(np.max(s)), "channels": int(s.size),
            "axis": next((a.i for a in n.attribute if a.name == "axis"), None),
            "scale_dtype": str(scale.dtype) if scale is not None else "?",
            "zero_point_dtype": str(zp.dtype) if zp is not None else "uint8 (default)"}


def _lint_qdq(idx, n, target: str | None, opset: int) -> list:
    """Rules QDQ001–003 and 005–009 on one Q or DQ node."""
    scale, data = _const(idx, n.input[1]), _const(idx, n.input[0])
    if scale is None:
        return []
    zp = _const(idx, n.input[2]) if len(n.input) > 2 and n.input[2] else None
    is_weight = n.op_type == "DequantizeLinear" and data is not None
    out = []
    if zp is None or zp.dtype != np.int8:
        out.append(Finding("QDQ008", n.name, f"zero-point dtype is {'uint8 (omitted)' if zp is None else zp.dtype}"))
    elif np.any(zp != 0):
        out.append(Finding("QDQ001", n.name, f"zero-point {zp.reshape(-1)[:4].tolist()} is not 0"))
    if np.any(~np.isfinite(scale.astype(np.float64))) or np.any(scale <= 0):
        out.append(Finding("QDQ002", n.name, f"scale min {float(np.min(scale)):g}: must be > 0 and finite"))
    if n.output[0] in idx.outputs:
        out.append(Finding("QDQ003", n.name, f"graph output {n.output[0]!r} comes from {n.op_type}; leave outputs in float"))
    if n.op_type == "QuantizeLinear" and not any(c.op_type == "DequantizeLinear" for c, _ in idx.consumer_nodes(n.output[0])):
        out.append(Finding("QDQ007", n.name, f"{n.output[0]!r} is never dequantized"))
    if is_weight and data.dtype == np.int32:
        out.append(Finding("QDQ009", n.name, f"{n.input[0]!r} is INT32; keep biases float"))
    if is_weight and scale.size > 1:
        axis = next((a.i for a in n.attribute if a.name == "axis"), None)
        for c, k in idx.consumer_nodes(n.output[0]):
            if c.op_type in WEIGHTED and k == 1:
                want = weight_axis(c, data) % data.ndim
                if axis is None or axis % data.ndim != want or scale.size != data.shape[want]:
                    out.append(Finding("QDQ005", n.name, f"axis {axis} with {scale.size} scales; {c.op_type} "
                                       f"{c.name!r} needs axis {want} ({data.shape[want]} channels)"))
    msg = _target_problem(target, opset, scale.dtype) if target is not None else None
    if msg:
        out.append(Finding("QDQ006", n.name, msg))
    return out


def _lint_concat(idx, n) -> list:
    """Rule QDQ004: the quantized inputs of a Concat should share one scale."""
    scales = set()
    for t in n.input:
        p = idx.producer_node(t)
        s = _const(idx, p.input[1]) if p is not None and p.op_type == "DequantizeLinear" else None
        if s is not None:
            scales.add(float(np.asarray(s).reshape(-1)[0]))
    if len(scales) > 1:
        return [Finding("QDQ004", n.name, f"{len(scales)} different input scales ({min(scales):.4g} … "
                        f"{max(scales):.4g}); share one scale")]
    return []


def _target_problem(target: str, opset: int, scale_dtype) -> str | None:
    if target == "trt8":
        if not 13 <= opset <= 17:
            return f"opset {opset}: TensorRT 8.5/8.6 need opset 13–17"
        if scale_dtype != np.float32:
            return f"{scale_dtype} scale: TensorRT 8.x needs FP32 scales"
    elif target == "trt10":
        if opset < 13:
            return f"opset {opset}: per-channel Q/DQ needs opset >= 13"
        if scale_dtype == np.float16 and opset < 19:
            return f"FP16 scale at opset {opset}: FP16 scales need opset 19"
    elif target == "trt11":
        if scale_dtype == np.float16 and opset < 19:
            return f"FP16 scale at opset {opset}: FP16 scales need opset 19"
        if opset < 13:
            return f"opset {opset}: per-channel Q/DQ needs opset >= 13"
    return None
