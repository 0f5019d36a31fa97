"""Reading a Q/DQ model back: its Q/DQ pairs, INT8 coverage, and TensorRT lint rules."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import onnx

from .graph import GraphIndex
from .placement import WEIGHTED, _skip_reason, _weight_axis
from .ranges import QMAX

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
}


@dataclass
class QdqSite:
    """An activation QuantizeLinear: the tensor it reads, its scale and where it sits."""

    tensor: str
    scale: float
    node: str
    consumers: list
    position: int

    @property
    def amax(self) -> float:
        return self.scale * QMAX


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
        sites.append(QdqSite(n.input[0], float(np.asarray(scale).reshape(-1)[0]), n.name, users, pos))
    return sites


def model_ranges(model: onnx.ModelProto) -> dict:
    """amax (= scale · 127) of every activation Q/DQ in ``model``: tensor → amax."""
    return {s.tensor: s.amax for s in qdq_sites(model)}


def _static_shapes(model: onnx.ModelProto, shapes: dict | None) -> GraphIndex:
    """Shape inference with dynamic input dims fixed (batch 1, others 640 or ``shapes[name]``)."""
    m = copy.deepcopy(model)
    for i in m.graph.input:
        dims = i.type.tensor_type.shape.dim
        want = (shapes or {}).get(i.name)
        for k, d in enumerate(dims):
            if want is not None:
                d.dim_value = int(want[k])
            elif not d.HasField("dim_value") or d.dim_value <= 0:
                d.dim_value = 1 if k == 0 else 640
    return GraphIndex.build(m)


def _prod(dims) -> int | None:
    if dims is None or any(d is None for d in dims):
        return None
    return int(np.prod(dims)) if dims else 1


def layer_macs(idx: GraphIndex, node) -> int | None:
    """Multiply-accumulates of one Conv/ConvTranspose/Gemm/MatMul (None if shapes are unknown)."""
    w = idx.shapes.get(node.input[1])
    if node.op_type == "Conv":
        out = _prod(idx.shapes.get(node.output[0]))
        return None if out is None or not w else out * _prod(w[1:])
    if node.op_type == "ConvTranspose":
        x = _prod(idx.shapes.get(node.input[0]))
        return None if x is None or not w else x * _prod(w[1:])
    a = idx.shapes.get(node.input[0])
    out = _prod(idx.shapes.get(node.output[0]))
    if out is None or not a or a[-1] is None:
        return None
    trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
    k = a[0] if node.op_type == "Gemm" and trans_a else a[-1]
    return out * k


def inspect_model(model: onnx.ModelProto, target: str | None = None, shapes: dict | None = None) -> Inspection:
    """Q/DQ pairs, INT8 coverage of the weighted layers, and lint findings for ``target``."""
    idx = _static_shapes(model, shapes)
    ins = Inspection()
    outputs = set(idx.outputs)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def const(name):
        v = idx.constant(name)
        return None if v is None else np.asarray(v)

    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = const(n.input[1])
        zp = const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        axis = next((a.i for a in n.attribute if a.name == "axis"), None)
        data = const(n.input[0])
        is_weight = n.op_type == "DequantizeLinear" and data is not None
        if n.op_type == "QuantizeLinear" or is_weight:  # an activation DQ is reported with its Q
            users = [(c.name, c.op_type) for c, _ in idx.consumer_nodes(n.output[0])]
            if n.op_type == "QuantizeLinear":
                users = [(c.name, c.op_type) for dq, _ in idx.consumer_nodes(n.output[0])
                         for c, _ in idx.consumer_nodes(dq.output[0])]
            s = scale.astype(np.float64).reshape(-1) if scale is not None else np.array([math.nan])
            ins.pairs.append({
                "tensor": n.input[0], "node": n.name, "kind": "weight" if is_weight else "activation",
                "consumers": [f"{u} ({op})" for u, op in users],
                "amax": float(np.max(s) * QMAX), "scale_min": float(np.min(s)), "scale_median": float(np.median(s)),
                "scale_max": float(np.max(s)), "channels": int(s.size), "axis": axis,
                "scale_dtype": str(scale.dtype) if scale is not None else "?",
                "zero_point_dtype": str(zp.dtype) if zp is not None else "uint8 (default)"})
        # lint
        if scale is None:
            continue
        if zp is None or zp.dtype != np.int8:
            ins.findings.append(Finding("QDQ008", n.name, f"zero-point dtype is {'uint8 (omitted)' if zp is None else zp.dtype}"))
        elif np.any(zp != 0):
            ins.findings.append(Finding("QDQ001", n.name, f"zero-point {zp.reshape(-1)[:4].tolist()} is not 0"))
        if np.any(~np.isfinite(scale.astype(np.float64))) or np.any(scale <= 0):
            ins.findings.append(Finding("QDQ002", n.name, f"scale min {float(np.min(scale)):g}: must be > 0 and finite"))
        if n.output[0] in outputs:
            ins.findings.append(Finding("QDQ003", n.name, f"graph output {n.output[0]!r} comes from {n.op_type}; "
                                        "leave outputs in float"))
        if n.op_type == "QuantizeLinear" and not any(c.op_type == "DequantizeLinear" for c, _ in idx.consumer_nodes(n.output[0])):
            ins.findings.append(Finding("QDQ007", n.name, f"{n.output[0]!r} is never dequantized"))
        if is_weight and data.dtype == np.int32:
            ins.findings.append(Finding("QDQ009", n.name, f"{n.input[0]!r} is INT32; keep biases float"))
        if is_weight and scale.size > 1:
            for c, k in idx.consumer_nodes(n.output[0]):
                if c.op_type in WEIGHTED and k == 1:
                    want = _weight_axis(c, data) % data.ndim
                    if axis is None or axis % data.ndim != want or scale.size != data.shape[want]:
                        ins.findings.append(Finding("QDQ005", n.name, f"axis {axis} with {scale.size} scales; {c.op_type} "
                                                    f"{c.name!r} needs axis {want} ({data.shape[want]} channels)"))
        if target is not None:
            msg = _target_problem(target, opset, scale.dtype)
            if msg:
                ins.findings.append(Finding("QDQ006", n.name, msg))

    for n in model.graph.node:
        if n.op_type != "Concat":
            continue
        scales = set()
        for t in n.input:
            p = idx.producer_node(t)
            if p is not None and p.op_type == "DequantizeLinear":
                s = const(p.input[1])
                if s is not None:
                    scales.add(float(np.asarray(s).reshape(-1)[0]))
        if len(scales) > 1:
            ins.findings.append(Finding("QDQ004", n.name, f"{len(scales)} different input scales "
                                        f"({min(scales):.4g} … {max(scales):.4g}); share one scale"))

    int8 = total = 0
    unknown = 0
    for n in model.graph.node:
        if n.op_type not in WEIGHTED:
            continue
        macs = layer_macs(idx, n)
        quant = all((p := idx.producer_node(t)) is not None and p.op_type == "DequantizeLinear" for t in n.input[:2])
        if macs is None:
            unknown += 1
        else:
            total += macs
            int8 += macs if quant else 0
        if not quant:
            w = const(n.input[1])
            reason = None
            if w is not None and w.dtype.kind == "f":
                reason = _skip_reason(idx, n, w)
            ins.float_layers.append({"node": n.name, "op": n.op_type, "macs": macs,
                                     "reason": reason or "inputs not quantized"})
    ins.coverage = {"int8_macs": int8, "total_macs": total, "share": int8 / total if total else 0.0,
                    "layers": sum(1 for n in model.graph.node if n.op_type in WEIGHTED),
                    "float_layers": len(ins.float_layers), "unknown_shape_layers": unknown,
                    "activation_pairs": sum(p["kind"] == "activation" for p in ins.pairs),
                    "weight_pairs": sum(p["kind"] == "weight" for p in ins.pairs)}
    return ins


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
