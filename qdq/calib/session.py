"""ONNX Runtime sessions: one way to load a model (external data beyond the protobuf limit, Q/DQ
run as float ops) and one way to run it (failures as one-line errors)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from ..errors import QdqError
from ..modelio import too_large, write_external


def session_for(model: onnx.ModelProto, providers=None, extra_outputs=(), threads: int | None = None,
                fold: bool = True):
    """An ONNX Runtime session of ``model`` as given that also returns ``extra_outputs`` (tensor
    names).  ``fold=False`` turns ONNX Runtime's graph optimizations off (a Cast of a weight stays a
    Cast instead of becoming a second copy of the weight).  A model that computes in FP16 runs here as ONNX Runtime's CPU provider runs it, which
    hides much of FP16's rounding: measurements hand it :func:`qdq.graph.precision.runnable` first."""
    import onnxruntime as ort

    m = with_extrema(model, (), extra_outputs)[0] if extra_outputs else model
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # idle ORT workers must not spin: the histogram thread needs the core between runs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not fold or any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        # Run Q/DQ as plain float ops: TensorRT's INT8 numerics (int32 accumulation).  ORT_ENABLE_ALL
        # fuses them into ONNX Runtime's integer kernels, which saturate int16 intermediates on CPUs
        # without VNNI; ORT_ENABLE_BASIC's constant folding of FP16 per-channel DequantizeLinear produced
        # wrong weights (docs/design.md has both measurements).
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    available = ort.get_available_providers()
    providers = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    try:
        if too_large(m):  # cannot be serialised: hand ORT a file with external data
            # ONNX Runtime maps the data file; prepacking MatMul weights would add a second copy of them
            so.add_session_config_entry("session.disable_prepacking", "1")
            with tempfile.TemporaryDirectory() as d:
                write_external(m, Path(d) / "model.onnx", "model.data")
                return ort.InferenceSession(str(Path(d) / "model.onnx"), so, providers=providers)
        return ort.InferenceSession(m.SerializeToString(), so, providers=providers)
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:300]
        raise QdqError(f"ONNX Runtime cannot load the model: {msg}") from None


def with_extrema(model: onnx.ModelProto, names, outputs=(), shapes=()) -> tuple[onnx.ModelProto, dict]:
    """A copy of ``model`` that also outputs the tensors ``outputs``, for each tensor in ``shapes`` its
    shape (int64 vector, output ``{tensor: name}`` under the key ``"shapes"`` of the returned map) and,
    for each float tensor in ``names``, its min and max as
    FP32 scalars with NaN ignored (an all-NaN or empty tensor gives min +inf, max −inf); returns it and
    ``{tensor: (min output, max output)}``.  The tensors themselves never leave ONNX Runtime, so a
    pass over every float tensor of a model holds one sample's activations, not all of them at once.

    The copy only feeds a session and is never written, so it is built with onnx.helper rather than
    onnx-graphsurgeon (whose export would re-check and copy a model only ONNX Runtime reads)."""
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in dict.fromkeys(outputs) if t not in present)
    if not names and not shapes:
        return m, {}
    typed = {v.name: v.type.tensor_type.elem_type for v in
             list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
    taken = {o for n in m.graph.node for o in n.output} | set(typed) | {i.name for i in m.graph.initializer}
    pre = "qdq_extrema"
    while any(t.startswith(pre) for t in taken):
        pre += "_"
    m.graph.initializer.extend([helper.make_tensor(f"{pre}_lo", TensorProto.FLOAT, [], [float("-inf")]),
                                helper.make_tensor(f"{pre}_hi", TensorProto.FLOAT, [], [float("inf")])])
    out = {}
    for k, t in enumerate(dict.fromkeys(names)):
        x = t
        if typed.get(t) != TensorProto.FLOAT:   # FP64/FP16: compared in FP32 (beyond it is beyond FP16 too)
            x = f"{pre}{k}_f"
            m.graph.node.append(helper.make_node("Cast", [t], [x], to=TensorProto.FLOAT))
        lo, hi = f"{pre}{k}_min", f"{pre}{k}_max"
        m.graph.node.extend([
            helper.make_node("IsNaN", [x], [f"{pre}{k}_nan"]),
            helper.make_node("Where", [f"{pre}{k}_nan", f"{pre}_hi", x], [f"{pre}{k}_a"]),
            helper.make_node("Where", [f"{pre}{k}_nan", f"{pre}_lo", x], [f"{pre}{k}_b"]),
            helper.make_node("ReduceMin", [f"{pre}{k}_a"], [lo], keepdims=0),
            helper.make_node("ReduceMax", [f"{pre}{k}_b"], [hi], keepdims=0)])
        m.graph.output.extend([helper.make_tensor_value_info(lo, TensorProto.FLOAT, []),
                               helper.make_tensor_value_info(hi, TensorProto.FLOAT, [])])
        out[t] = (lo, hi)
    if shapes:
        out["shapes"] = {t: f"{pre}_shape{k}" for k, t in enumerate(dict.fromkeys(shapes))}
        for t, o in out["shapes"].items():
            m.graph.node.append(helper.make_node("Shape", [t], [o]))
            m.graph.output.append(helper.make_tensor_value_info(o, TensorProto.INT64, [None]))
    return m, out


def run_session(sess, feed: dict, source) -> dict:
    """Run and return ``{output name: array}``; ONNX Runtime failures become one-line errors."""
    try:
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feed)))
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:300]
        raise QdqError(f"{source}: ONNX Runtime failed on this sample: {msg}") from None
