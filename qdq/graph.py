"""Read-only index over an ONNX graph: producers, consumers, constants and inferred types/shapes.

A node is identified by its position in ``model.graph.node`` (its *id*), never by its name: names
may be empty or repeated in real models.  ``labels[id]`` is a unique, readable name for reports.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
               onnx.TensorProto.DOUBLE)


@dataclass
class GraphIndex:
    """Lookups over ``model.graph`` (main graph only; subgraphs are left alone).

    ``producer[t]`` is the id of the node writing tensor ``t``; ``consumers[t]`` lists
    ``(node id, input index)``.  ``shapes[t]`` is a list of dims, each an int or None (dynamic or
    unknown); ``dtypes[t]`` an ONNX TensorProto element type.
    """

    model: onnx.ModelProto
    nodes: list = field(default_factory=list)           # NodeProto by id
    labels: list = field(default_factory=list)          # unique display name by id
    producer: dict = field(default_factory=dict)        # tensor -> node id
    consumers: dict = field(default_factory=dict)       # tensor -> [(node id, input index)]
    constants: dict = field(default_factory=dict)       # tensor -> np.ndarray (initializer or Constant)
    shapes: dict = field(default_factory=dict)
    dtypes: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)          # graph input names (not initializers)
    outputs: list = field(default_factory=list)

    @classmethod
    def build(cls, model: onnx.ModelProto, infer_shapes: bool = True) -> "GraphIndex":
        g = model.graph
        idx = cls(model=model, nodes=list(g.node))
        idx.labels = unique_labels(idx.nodes)
        inits = {t.name for t in g.initializer}
        idx.inputs = [i.name for i in g.input if i.name not in inits]
        idx.outputs = [o.name for o in g.output]
        for t in g.initializer:
            idx.constants[t.name] = numpy_helper.to_array(t)
        for pos, node in enumerate(idx.nodes):
            for o in node.output:
                if o:
                    idx.producer[o] = pos
            for i, name in enumerate(node.input):
                if name:
                    idx.consumers.setdefault(name, []).append((pos, i))
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value":
                        idx.constants[node.output[0]] = numpy_helper.to_array(a.t)
        typed = model
        if infer_shapes:
            try:
                typed = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
            except Exception:  # shape inference is a help, not a requirement
                typed = model
        for vi in list(typed.graph.value_info) + list(typed.graph.input) + list(typed.graph.output):
            tt = vi.type.tensor_type
            idx.dtypes[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                idx.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        for name, arr in idx.constants.items():
            idx.shapes[name] = list(arr.shape)
            idx.dtypes[name] = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
        return idx

    def is_float(self, name: str) -> bool:
        return self.dtypes.get(name) in FLOAT_TYPES

    def constant(self, name: str) -> np.ndarray | None:
        return self.constants.get(name)

    def producer_node(self, tensor: str):
        """The NodeProto writing ``tensor`` (None for graph inputs and initializers)."""
        pos = self.producer.get(tensor)
        return None if pos is None else self.nodes[pos]

    def consumer_nodes(self, tensor: str) -> list:
        """``[(NodeProto, input index)]`` reading ``tensor``."""
        return [(self.nodes[p], i) for p, i in self.consumers.get(tensor, [])]


def unique_labels(nodes) -> list[str]:
    """A unique readable name per node: its own name when it has a unique one, else
    ``<name or op type>#<id>``."""
    counts = {}
    for n in nodes:
        counts[n.name] = counts.get(n.name, 0) + 1
    return [n.name if n.name and counts[n.name] == 1 else f"{n.name or n.op_type}#{pos}"
            for pos, n in enumerate(nodes)]
