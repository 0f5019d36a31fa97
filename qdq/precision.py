"""Precision casting for strongly typed TensorRT (``--target trt11``): the float remainder of the
graph in FP16, graph inputs and outputs kept FP32 (a Cast at each boundary), and tensors whose
calibrated range would overflow FP16 kept FP32 together with the nodes that produce and read them."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# FP16 max is 65504; keep a 2× margin for values unseen during calibration.
FP16_SAFE_MAX = 65504.0 / 2
# inputs that the ONNX spec types as tensor(float) only
_FP32_ONLY = {"Resize": {2}, "Upsample": {1}}


def _to_fp16(a: np.ndarray) -> np.ndarray:
    # constants beyond FP16 (e.g. Clip bounds of ±FLT_MAX meaning "none") saturate instead of becoming Inf
    return np.clip(a, -65504.0, 65504.0).astype(np.float16)


def _batchnorm_to_scale_shift(model: onnx.ModelProto) -> None:
    """Replace BatchNormalization with constant statistics by ``x·a + b`` (Mul, Add), with
    a = γ/√(var+ε) and b = β − mean·a computed in float64.  Running variances can exceed FP16
    (PP-OCRv4 det: 9.8e7), and ONNX Runtime's FP16 BatchNormalization gave −27 dB even in range;
    TensorRT folds both forms into the preceding Conv."""
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in list(g.value_info) + list(g.input)
             if vi.type.tensor_type.HasField("shape")}
    nodes = []
    for n in g.node:
        params = [consts.get(i) for i in n.input[1:5]] if n.op_type == "BatchNormalization" else []
        if len(params) != 4 or any(p is None for p in params) or len(n.output) != 1:
            nodes.append(n)
            continue
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
        a = gamma / np.sqrt(var + eps)
        b = beta - mean * a
        shape = (-1,) + (1,) * (ranks.get(n.input[0], 4) - 2)
        a_name, b_name, mid = f"{n.name}_scale_folded", f"{n.name}_shift_folded", f"{n.output[0]}_scaled"
        g.initializer.extend([numpy_helper.from_array(a.reshape(shape).astype(np.float32), a_name),
                              numpy_helper.from_array(b.reshape(shape).astype(np.float32), b_name)])
        nodes += [helper.make_node("Mul", [n.input[0], a_name], [mid], name=f"{n.name}_Mul"),
                  helper.make_node("Add", [mid, b_name], [n.output[0]], name=f"{n.name}_Add")]
    del g.node[:]
    g.node.extend(nodes)


def _fp16_scales(model: onnx.ModelProto) -> None:
    """Make every Q/DQ scale representable in FP16 before the cast.  INT8 weights are re-quantized
    from their dequantized values with FP16 scales (a raised scale must change the codes too);
    activation scales below FP16's smallest normal are raised to it."""
    from .rewrite import FP16_MIN_SCALE, quantize_weight

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or n.input[1] not in inits:
            continue
        s_t = inits[n.input[1]]
        if s_t.data_type != TensorProto.FLOAT:
            continue
        scale = numpy_helper.to_array(s_t).astype(np.float64)
        data = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if data is not None and data.data_type == TensorProto.INT8:
            q = numpy_helper.to_array(data).astype(np.float64)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1) % q.ndim if scale.size > 1 else None
            shape = [1] * q.ndim
            if axis is not None:
                shape[axis] = -1
            w = q * scale.reshape(shape)
            if axis is None:
                qw, new, _ = quantize_weight(w.reshape(1, -1), 0, np.float16)
                qw, new = qw.reshape(q.shape), new.reshape(())
            else:
                qw, new, _ = quantize_weight(w, axis, np.float16)
            data.CopyFrom(numpy_helper.from_array(qw, data.name))
            s_t.CopyFrom(numpy_helper.from_array(new.astype(np.float32), s_t.name))
        else:
            s_t.CopyFrom(numpy_helper.from_array(np.maximum(scale, FP16_MIN_SCALE).astype(np.float32), s_t.name))


def cast_to_fp16(model: onnx.ModelProto, extrema: dict, float_tensors: set) -> list[str]:
    """Rewrite ``model`` in place; ``extrema[t] = (min, max)`` from calibration; ``float_tensors``
    names the float tensors of the float model.
    Returns the tensors kept in FP32 because they would overflow FP16."""
    g = model.graph
    _batchnorm_to_scale_shift(model)
    _fp16_scales(model)
    overflow = sorted(t for t, (lo, hi) in extrema.items() if max(abs(lo), abs(hi)) > FP16_SAFE_MAX)
    fp32_nodes = set()
    for n in g.node:
        if any(o in overflow for o in n.output) or any(i in overflow for i in n.input):
            fp32_nodes.add(n.name)
    consumers = {}
    for n in g.node:
        for k, i in enumerate(n.input):
            consumers.setdefault(i, []).append((n, k))

    def fp32_only(name: str) -> bool:
        users = consumers.get(name, [])
        return bool(users) and all(k in _FP32_ONLY.get(n.op_type, ()) or n.name in fp32_nodes for n, k in users)

    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT and not fp32_only(t.name):
            t.CopyFrom(numpy_helper.from_array(_to_fp16(numpy_helper.to_array(t)), t.name))
    for n in g.node:
        if n.name in fp32_nodes:
            continue
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT and not fp32_only(n.output[0]):
                a.t.CopyFrom(numpy_helper.from_array(_to_fp16(numpy_helper.to_array(a.t)), a.t.name))
        if n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT and not fp32_only(n.output[0]):
                    a.i = TensorProto.FLOAT16

    new_nodes, taken = [], {o for n in g.node for o in n.output} | {i.name for i in g.input}

    def fresh(name):
        out, k = name, 1
        while out in taken:
            out, k = f"{name}_{k}", k + 1
        taken.add(out)
        return out

    # graph inputs: FP32 in, FP16 inside
    for gi in g.input:
        if gi.type.tensor_type.elem_type != TensorProto.FLOAT or gi.name not in consumers:
            continue
        half = fresh(f"{gi.name}_fp16")
        new_nodes.append(helper.make_node("Cast", [gi.name], [half], name=fresh(f"{gi.name}_CastToFp16"),
                                          to=TensorProto.FLOAT16))
        for n, k in consumers[gi.name]:
            if n.name not in fp32_nodes:
                n.input[k] = half
    graph_inputs = {x.name for x in g.input}
    kept32 = {t.name for t in g.initializer if t.data_type == TensorProto.FLOAT}
    out_names = {o.name for o in g.output if o.type.tensor_type.elem_type == TensorProto.FLOAT}
    tail = []
    for n in g.node:
        pre, post = [], []
        if n.name in fp32_nodes:
            for k, i in enumerate(n.input):
                if i in float_tensors and i not in graph_inputs and i not in overflow and i not in kept32:
                    full = fresh(f"{i}_fp32")
                    pre.append(helper.make_node("Cast", [i], [full], name=fresh(f"{i}_CastToFp32"), to=TensorProto.FLOAT))
                    n.input[k] = full
        new_nodes += pre + [n]
        for k, o in enumerate(n.output):
            if o in out_names and n.name not in fp32_nodes:
                half = fresh(f"{o}_fp16")
                n.output[k] = half
                for c, ci in consumers.get(o, []):
                    c.input[ci] = half
                tail.append(helper.make_node("Cast", [half], [o], name=fresh(f"{o}_CastToFp32"), to=TensorProto.FLOAT))
            elif n.name in fp32_nodes and o not in out_names and o not in overflow:
                full = fresh(f"{o}_fp32")
                n.output[k] = full
                post.append(helper.make_node("Cast", [full], [o], name=fresh(f"{o}_CastToFp16"), to=TensorProto.FLOAT16))
        new_nodes += post
    del g.node[:]
    g.node.extend(new_nodes + tail)
    del g.value_info[:]  # stale FP32 types; the runtime infers them again
    return overflow

