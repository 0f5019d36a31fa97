"""What each TensorRT version accepts, and the float model made ready for it.

| target | opset | Q/DQ scales | remainder |
|---|---|---|---|
| ``trt10`` | 17 (older models upgraded) | FP32 | FP32 in the file; TensorRT picks FP16 with ``--fp16`` |
| ``trt8`` | 13–17 | FP32 | same, for TensorRT 8.5/8.6 (JetPack 5.1/6.0) |
| ``trt11`` | 19 | FP16 beside FP16 layers | FP16 in the file (strongly typed TensorRT 11, TensorRT-RTX) |
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .calib.session import hold, holding
from .errors import QdqError
from .modelio import convert_opset, fresh_name, load_model, metadata, opset_of, skeleton
from .graph.equalize import replay
from .graph.precision import cast_graph, opsets_of
from .graph.surgery import constants_to_initializers, export_graph, fold_batchnorm, import_graph, name_nodes

TARGETS = {
    # name: (lowest opset, highest opset it is converted down to, scale dtype)
    "trt10": (17, None, np.float32),
    "trt8": (13, 17, np.float32),
    "trt11": (19, None, np.float16),
}
# Ops TensorRT 8.5's ONNX parser does not know (added in 8.6 or later).
TRT85_UNSUPPORTED = {"LayerNormalization", "GroupNormalization", "GridSample", "ReverseSequence",
                     "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "Col2Im", "STFT"}


def target_opset(model: onnx.ModelProto, target: str) -> int:
    """The opset ``model`` is converted to for ``target``: its own, clamped to the target's range."""
    lo, hi, _ = TARGETS[target]
    v = opset_of(model)
    if v < lo:
        return lo
    if hi is not None and v > hi:
        return hi
    return v


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise QdqError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    return target


def prepare(model, target: str = "trt10", source: str = "model", warnings: list | None = None) -> onnx.ModelProto:
    """Load (if a path) the float model and make it ready to quantize, without changing what it
    computes, in one graph-surgeon pass checked once: the target's opset; Constant nodes as
    initializers; every node named uniquely; BatchNormalization folded into the Conv before it
    (:func:`qdq.graph.surgery.fold_batchnorm`); an FP16 model computed in FP32 inside (its inputs and
    outputs keep their FP16 type), since Q/DQ before opset 19 take FP32 scales and statistics are best
    gathered in FP32.  Inside a run's weight store the model is held there (:func:`qdq.calib.session.hold`:
    a file's external data read into the store, not the protobuf).  What the user should know is
    appended to ``warnings``."""
    check_target(target)
    if not isinstance(model, onnx.ModelProto):
        source = str(model)
        # held (inside a run's weight store) its external data is read into the store, never the protobuf
        path, model = model, load_model(model, external=not holding())
        model = hold(model, Path(path).resolve().parent)
    else:
        model = hold(model)
    model = convert_opset(model, target_opset(model, target), source)
    stale = _stale_output_shapes(model)
    graph = import_graph(model)
    for out in graph.outputs:
        if out.name in stale:   # what the model computes wins over what it declares
            out.shape = stale[out.name]
    constants_to_initializers(graph)
    unknown = _name_unknown_dims(graph)
    renamed = name_nodes(graph)
    fold_batchnorm(graph, fp16_scales=TARGETS[target][2] == np.float16)
    fp16 = any(t.dtype == np.float16 for t in graph.tensors().values() if t.dtype is not None)
    if fp16:
        declared = {t.name: np.float16 for t in graph.inputs + graph.outputs if t.dtype == np.float16}
        cast_graph(graph, opsets_of(model), np.float32, (), declared)
    model = export_graph(graph, model, "preparation")
    if warnings is not None and stale:
        warnings.append("declared shapes that disagree with what the model computes were replaced by the inferred ones: "
                        + ", ".join(f"{k!r} → {_dims(v)}" for k, v in stale.items()))
    if warnings is not None and unknown:
        warnings.append(f"dynamic dims all named '?' ({', '.join(unknown[:4])}{' …' if len(unknown) > 4 else ''}): TensorRT "
                        "takes dims of one name as one size (H ≠ W would not build); each got a name of its own")
    if warnings is not None and renamed:
        warnings.append(f"{renamed} nodes shared a name with another node and were renamed (name_1, name_2, …)")
    if warnings is not None and fp16:
        warnings.append("the model is FP16: it is calibrated and quantized in FP32 inside, its inputs and "
                        "outputs stay FP16")
    return model


def _name_unknown_dims(graph) -> list:
    """Give each graph input/output dim named ``?`` (PaddlePaddle's "unknown") a name of its own,
    ``<tensor>_dim<k>`` (fresh among the dims' names), when ``?`` names more than one dim: TensorRT treats dims of one name as one
    size.  Returns the new names."""
    tensors = graph.inputs + graph.outputs
    dims = [(t, k) for t in tensors for k, d in enumerate(t.shape or []) if d == "?"]
    if len(dims) < 2:
        return []
    taken = {d for t in tensors for d in t.shape or [] if isinstance(d, str)}
    out = []
    for t, k in dims:
        out.append(fresh_name(f"{t.name}_dim{k}", taken))
        t.shape = [out[-1] if j == k else d for j, d in enumerate(t.shape)]
    return out


def _stale_output_shapes(model: onnx.ModelProto) -> dict:
    """output name → the shape inference gives it, for every graph output whose declared
    shape disagrees with it in rank or in a fixed dim (exporters leave stale ones: ddddocr's recogniser
    declares [1, seqlen] and computes [T, 1, 8210]).  Inferred on the model's skeleton: no weight copied."""
    probe = skeleton(model)
    del probe.graph.value_info[:]
    for o in probe.graph.output:
        o.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    except Exception:
        return {}
    got = {o.name: o.type.tensor_type for o in inferred.graph.output}
    stale = {}
    for o in model.graph.output:
        want = o.type.tensor_type
        have = got.get(o.name)
        if not want.HasField("shape") or have is None:
            continue
        if not have.HasField("shape"):   # inference does not know it either: nothing to disagree with
            continue
        new = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in have.shape.dim]
        old = [d.dim_value if d.HasField("dim_value") else None for d in want.shape.dim]
        if len(new) != len(old) or any(a and isinstance(b, int) and a != b for a, b in zip(old, new)):
            stale[o.name] = new
    return stale


def _dims(dims: list) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in dims) + "]"


def prepared_for(fmodel: onnx.ModelProto, qmodel: onnx.ModelProto) -> onnx.ModelProto:
    """The float model as qdq prepared it before writing ``qmodel`` (BatchNorm folded into the Conv
    weights, same node names, equalized as the file's ``qdq_equalization`` records), when ``qmodel``
    is a qdq file; else ``fmodel`` as given."""
    meta = metadata(qmodel)
    if "qdq_version" not in meta:
        return fmodel
    fm = prepare(fmodel, meta.get("qdq_target") if meta.get("qdq_target") in TARGETS else "trt10")
    return replay(fm, meta["qdq_equalization"]) if meta.get("qdq_equalization") else fm
