"""ONNX Runtime sessions: one way to load a model (external data beyond the protobuf limit, Q/DQ
run as float ops) and one way to run it (failures as one-line errors)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from ..errors import QdqError
from ..modelio import PROTOBUF_LIMIT, save_model


def session_for(model: onnx.ModelProto, providers=None, extra_outputs=(), threads: int | None = None):
    """An ONNX Runtime session of ``model`` as given that also returns ``extra_outputs`` (tensor
    names).  A model that computes in FP16 runs here as ONNX Runtime's CPU provider runs it, which
    hides much of FP16's rounding: measurements hand it :func:`qdq.graph.precision.runnable` first."""
    import onnxruntime as ort

    m = model
    if extra_outputs:
        m, src = onnx.ModelProto(), m
        m.CopyFrom(src)
        present = {o.name for o in m.graph.output}
        for name in extra_outputs:
            if name not in present:
                m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # idle ORT workers must not spin: the histogram thread needs the core between runs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
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
        if m.ByteSize() > PROTOBUF_LIMIT:  # cannot be serialised: hand ORT a file with external data
            with tempfile.TemporaryDirectory() as d:
                path = save_model(m, Path(d) / "model.onnx")
                return ort.InferenceSession(str(path), so, providers=providers)
        return ort.InferenceSession(m.SerializeToString(), so, providers=providers)
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:300]
        raise QdqError(f"ONNX Runtime cannot load the model: {msg}") from None


def run_session(sess, feed: dict, source) -> dict:
    """Run and return ``{output name: array}``; ONNX Runtime failures become one-line errors."""
    try:
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feed)))
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:300]
        raise QdqError(f"{source}: ONNX Runtime failed on this sample: {msg}") from None
