"""Views of a Q/DQ model with part of its quantization taken out, for measuring where the loss lives:
only the weights quantized (activation Q/DQ bypassed), only the activations (weights float again).

These are evaluation models, built through onnx-graphsurgeon and never written.
"""
from __future__ import annotations

import numpy as np
import onnx

from .index import GraphIndex
from .qdq_file import qdq_sites
from ..modelio import fresh_name, metadata
from .surgery import export_graph, gs, import_graph, taken_names


def _bypass(model: onnx.ModelProto, replace: dict) -> onnx.ModelProto:
    """Copy of ``model`` where each DequantizeLinear whose output is named in ``replace`` becomes an
    Identity of ``replace[name]`` (a tensor name, or an array for a constant); the Q/DQ left without
    readers are dropped."""
    g = gs()
    graph = import_graph(model)
    tensors, taken = graph.tensors(), taken_names(graph)
    for node in graph.nodes:
        if node.op == "DequantizeLinear" and node.outputs[0].name in replace:
            src = replace[node.outputs[0].name]
            src = tensors[src] if isinstance(src, str) else g.Constant(fresh_name(f"{node.outputs[0].name}_float", taken),
                                                                              np.asarray(src))
            node.op, node.attrs = "Identity", {}
            node.inputs.clear()
            node.inputs.append(src)
    return export_graph(graph, model, "Q/DQ bypass", check=False)


def weights_only(qmodel: onnx.ModelProto) -> onnx.ModelProto:
    """``qmodel`` with every activation Q/DQ bypassed: only the weights stay quantized."""
    idx = GraphIndex.build(qmodel, infer_shapes=False)
    replace = {}
    for s in qdq_sites(qmodel):
        for dq, _ in idx.consumer_nodes(idx.nodes[s.position].output[0]):
            if dq.op_type == "DequantizeLinear":
                replace[dq.output[0]] = s.tensor
    return _bypass(qmodel, replace)


def activations_only(qmodel: onnx.ModelProto, fmodel: onnx.ModelProto) -> onnx.ModelProto:
    """``qmodel`` with each weight DequantizeLinear replaced by the float model's original weight
    (found through the consuming node, which keeps its name)."""
    qidx = GraphIndex.build(qmodel, infer_shapes=False)
    fnodes = {n.name: n for n in fmodel.graph.node}
    fidx = GraphIndex.build(fmodel, infer_shapes=False)
    replace = {}
    for n in qmodel.graph.node:
        if n.op_type != "DequantizeLinear" or qidx.constant(n.input[0]) is None:
            continue
        for c, k in qidx.consumer_nodes(n.output[0]):
            original = fnodes.get(c.name)
            if original is None or k >= len(original.input):
                continue
            w = fidx.constant(original.input[k])
            if w is not None:
                replace[n.output[0]] = w
    return _bypass(qmodel, replace)


def without_bias_correction(qmodel: onnx.ModelProto, fmodel: onnx.ModelProto) -> onnx.ModelProto:
    """``qmodel`` (a qdq file whose metadata records a bias correction; any other file is returned as
    it is) with the biases of ``fmodel`` (the float model it was made from, same node names):
    every float constant a node of both reads at the same input takes the float model's value (a
    corrected Conv/Gemm bias or MatMul's Add constant), a bias the file added is zero, and an Add
    the file added after a layer (a correction) adds zero."""
    meta = metadata(qmodel)
    if "qdq_version" not in meta or meta.get("qdq_bias_correction", "off").startswith("off"):
        return qmodel
    g = gs()
    fidx = GraphIndex.build(fmodel, infer_shapes=False)
    fnodes = {n.name: n for n in fmodel.graph.node}
    graph = import_graph(qmodel)
    taken = taken_names(graph)
    for node in graph.nodes:
        f = fnodes.get(node.name)
        for i, t in enumerate(node.inputs):
            if not isinstance(t, g.Constant) or np.asarray(t.values).dtype.kind != "f":
                continue
            original = fidx.constant(f.input[i]) if f is not None and i < len(f.input) and f.input[i] else None
            if original is not None and original.shape == np.asarray(t.values).shape:
                original = original.astype(np.asarray(t.values).dtype)   # a trt11 file stores FP16
                if not np.array_equal(original, t.values):
                    node.inputs[i] = g.Constant(fresh_name(f"{t.name}_float", taken), original)
            elif (f is None and node.op == "Add") or (f is not None and node.op in ("Conv", "ConvTranspose", "Gemm")
                                                     and i == 2 and i >= len(f.input)):
                node.inputs[i] = g.Constant(fresh_name(f"{t.name}_zero", taken), np.zeros_like(np.asarray(t.values)))
    return export_graph(graph, qmodel, "bias correction undone", check=False)
