"""Read-only index over an ONNX graph: producers, consumers, constants and inferred shapes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass
class GraphIndex:
    """Lookups over ``model.graph`` (main graph only; subgraphs are left alone).

    ``shapes[name]`` is a list of dims, each an int or None (dynamic/unknown); ``dtypes[name]``
    an ONNX TensorProto element type.
    """

    model: onnx.ModelProto
    producer: dict = field(default_factory=dict)        # tensor -> NodeProto
    consumers: dict = field(default_factory=dict)       # tensor -> [(NodeProto, input index)]
    constants: dict = field(default_factory=dict)       # tensor -> np.ndarray (initializer or Constant)
    shapes: dict = field(default_factory=dict)
    dtypes: dict = field(default_factory=dict)
    order: dict = field(default_factory=dict)           # node name -> topological position
    inputs: list = field(default_factory=list)          # graph input names (not initializers)
    outputs: list = field(default_factory=list)

    @classmethod
    def build(cls, model: onnx.ModelProto, infer_shapes: bool = True) -> "GraphIndex":
        g = model.graph
        idx = cls(model=model)
        inits = {t.name for t in g.initializer}
        idx.inputs = [i.name for i in g.input if i.name not in inits]
        idx.outputs = [o.name for o in g.output]
        for t in g.initializer:
            idx.constants[t.name] = numpy_helper.to_array(t)
        for pos, node in enumerate(g.node):
            idx.order[node.name] = pos
            for o in node.output:
                idx.producer[o] = node
            for i, name in enumerate(node.input):
                if name:
                    idx.consumers.setdefault(name, []).append((node, i))
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value":
                        idx.constants[node.output[0]] = numpy_helper.to_array(a.t)
        typed = model
        if infer_shapes:
            try:
                typed = onnx.shape_inference.infer_shapes(model, strict_mode=False)
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
        return self.dtypes.get(name) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                         onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)

    def constant(self, name: str) -> np.ndarray | None:
        return self.constants.get(name)

    def node_label(self, node: onnx.NodeProto) -> str:
        return node.name or f"{node.op_type}->{node.output[0]}"
