"""Shapes and multiply-accumulates of weighted layers.

MACs are counted at concrete input shapes: the shapes of the data when there is data (the first
sample's), else the model's static dims with dynamic ones at batch 1 and 640 (what ``qdq check``
builds for by default).
"""
from __future__ import annotations

import copy

import numpy as np
import onnx

from .index import GraphIndex
from .placement import WEIGHTED

DEFAULT_DYNAMIC_DIM = 640


def static_shapes(model: onnx.ModelProto, shapes: dict | None = None) -> GraphIndex:
    """A :class:`GraphIndex` of ``model`` with shapes inferred at fixed input dims: ``shapes[name]``
    where given, else each dynamic dim at 1 (batch) or :data:`DEFAULT_DYNAMIC_DIM`."""
    m = copy.deepcopy(model)
    for i in m.graph.input:
        dims = i.type.tensor_type.shape.dim
        want = (shapes or {}).get(i.name)
        for k, d in enumerate(dims):
            if want is not None:
                d.dim_value = int(want[k])
            elif not d.HasField("dim_value") or d.dim_value <= 0:
                d.dim_value = 1 if k == 0 else DEFAULT_DYNAMIC_DIM
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


def weighted_macs(model: onnx.ModelProto, shapes: dict | None = None) -> dict:
    """node id → MACs of each weighted layer of ``model`` at ``shapes`` (see :func:`static_shapes`);
    None where its shapes stay unknown (never a silent 0)."""
    sidx = static_shapes(model, shapes)
    return {i: layer_macs(sidx, n) for i, n in enumerate(sidx.nodes) if n.op_type in WEIGHTED}


def shape_text(shapes: dict) -> str:
    """``x=1x3x640x640, t=scalar``: input shapes as the summary, ``qdq check`` and warnings print them."""
    return ", ".join(f"{k}={'x'.join(map(str, v)) if v else 'scalar'}" for k, v in shapes.items())


def data_shapes(feed: dict) -> dict:
    """input name → the shape of one sample (``feed``: input name → array), for :func:`weighted_macs`."""
    return {k: tuple(int(d) for d in v.shape) for k, v in feed.items()}
