"""Read-only index over an ONNX graph: producers, consumers, constants and inferred types/shapes.

A node is identified by its position in ``model.graph.node`` (its *id*), never by its name: names
may be empty or repeated in real models.  ``labels[id]`` is a unique, readable name for reports, by
the one naming scheme of :func:`qdq.modelio.unique_names` (so it is the node's name in every model
qdq loaded or prepared).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..calib.session import held
from ..modelio import skeleton, unique_names

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
               onnx.TensorProto.DOUBLE)


# constants above this many bytes are read from their TensorProto on each access
LARGE_BYTES = 1 << 16


class Constants(Mapping):
    """tensor -> np.ndarray for initializers and Constant outputs, read from their TensorProto on each
    access (small ones kept): the index holds no second copy of a model's weights."""

    def __init__(self):
        self.protos, self._small = {}, {}

    def add(self, name: str, proto: onnx.TensorProto) -> None:
        self.protos[name] = proto
        self._small.pop(name, None)

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._small:
            return self._small[name]
        arr = held(self.protos[name])
        if arr is None:
            arr = numpy_helper.to_array(self.protos[name])
        if arr.nbytes <= LARGE_BYTES:
            self._small[name] = arr
        return arr

    def __iter__(self):
        return iter(self.protos)

    def __len__(self) -> int:
        return len(self.protos)

    def __contains__(self, name) -> bool:
        return name in self.protos


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
    constants: Constants = field(default_factory=Constants)   # tensor -> np.ndarray (initializer or Constant)
    shapes: dict = field(default_factory=dict)
    dtypes: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)          # graph input names (not initializers)
    outputs: list = field(default_factory=list)
    typed: onnx.ModelProto | None = None                 # ``model`` with inferred value_info (same nodes)
    # (weight tensor, axis) -> its per-channel INT8 codes, scales, floored: every candidate file of this
    # model quantizes a weight the same way, so it is quantized once (qdq.graph.rewrite.insert_qdq)
    weight_codes: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, model: onnx.ModelProto, infer_shapes: bool = True) -> "GraphIndex":
        g = model.graph
        idx = cls(model=model, nodes=list(g.node))
        idx.labels = unique_names([(n.name, n.op_type) for n in idx.nodes])
        inits = {t.name for t in g.initializer}
        idx.inputs = [i.name for i in g.input if i.name not in inits]
        idx.outputs = [o.name for o in g.output]
        for t in g.initializer:
            idx.constants.add(t.name, t)
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
                        idx.constants.add(node.output[0], a.t)
        typed = idx.typed = infer_types(model) if infer_shapes else model
        for vi in list(typed.graph.value_info) + list(typed.graph.input) + list(typed.graph.output):
            tt = vi.type.tensor_type
            idx.dtypes[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                idx.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        for name, proto in idx.constants.protos.items():
            idx.shapes[name] = list(proto.dims)
            idx.dtypes[name] = proto.data_type
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


def infer_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """The skeleton of ``model`` (see :func:`qdq.modelio.skeleton`) with inferred value_info (types and shapes)
    where ONNX can infer them; without inferred types when inference fails (a help, not a requirement:
    every pass ends in the strict check).  Cheap at any model size: no weight is copied."""
    bare = skeleton(model)
    try:
        return onnx.shape_inference.infer_shapes(bare, strict_mode=False, data_prop=True)
    except Exception:
        return bare
