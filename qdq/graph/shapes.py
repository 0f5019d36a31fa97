"""Shapes and multiply-accumulates of weighted layers.

MACs are counted at concrete shapes: with data, the dims each layer's tensors had when calibration
ran it (:func:`measured_macs`: every layer of any model, whatever its shape arithmetic); without,
shape inference with data propagation at the model's static dims, dynamic ones at batch 1 and 640
(what ``qdq check`` builds for by default), where a layer whose dims stay unknown is None, never 0.

Conv: out elements × C_in/group × kernel; ConvTranspose: in elements × C_out/group × kernel;
MatMul/Gemm: out elements × K.
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
    if dims is None or any(d is None or d < 0 for d in dims):   # inference can leave a Reshape's -1
        return None
    return int(np.prod(dims)) if dims else 1


def layer_macs(shapes: dict, node) -> int | None:
    """Multiply-accumulates of one Conv/ConvTranspose/Gemm/MatMul from ``shapes`` (tensor → dims, an
    int or None each; a GraphIndex's ``shapes``); None if a dim it needs is unknown."""
    w = shapes.get(node.input[1])
    if w is not None and _prod(w) is None:
        w = None
    if node.op_type == "Conv":
        out = _prod(shapes.get(node.output[0]))
        return None if out is None or not w else out * _prod(w[1:])
    if node.op_type == "ConvTranspose":
        x = _prod(shapes.get(node.input[0]))
        return None if x is None or not w else x * _prod(w[1:])
    a = shapes.get(node.input[0])
    out = _prod(shapes.get(node.output[0]))
    if out is None or not a or a[-1] is None:
        return None
    trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
    k = a[0] if node.op_type == "Gemm" and trans_a else a[-1]
    return out * k


def weighted_macs(model: onnx.ModelProto, shapes: dict | None = None) -> dict:
    """node id → MACs of each weighted layer of ``model`` at ``shapes`` (see :func:`static_shapes`);
    None where its shapes stay unknown (never a silent 0)."""
    sidx = static_shapes(model, shapes)
    return {i: layer_macs(sidx.shapes, n) for i, n in enumerate(sidx.nodes) if n.op_type in WEIGHTED}


def layer_tensors(idx: GraphIndex) -> list:
    """The tensors whose dims give the weighted layers' MACs: their non-constant inputs and outputs."""
    out = []
    for n in idx.nodes:
        if n.op_type in WEIGHTED:
            out += [t for t in list(n.input[:2]) + [n.output[0]] if t and t not in idx.constants]
    return list(dict.fromkeys(out))


def measured_macs(idx: GraphIndex, shapes: dict, samples: int = 1) -> dict:
    """node id → MACs per sample of each weighted layer at the dims calibration measured (``shapes``:
    tensor → dims over a batch of ``samples``; MACs grow linearly with the batch), the constants' own
    dims from ``idx``; None where a tensor was not measured."""
    known = {**{t: idx.shapes.get(t) for t in idx.constants}, **shapes}
    macs = {i: layer_macs(known, n) for i, n in enumerate(idx.nodes) if n.op_type in WEIGHTED}
    return {i: None if m is None else m // max(samples, 1) for i, m in macs.items()}


def shape_text(shapes: dict) -> str:
    """``x=1x3x640x640, t=scalar``: input shapes as the summary, ``qdq check`` and warnings print them."""
    return ", ".join(f"{k}={'x'.join(map(str, v)) if v else 'scalar'}" for k, v in shapes.items())


def data_shapes(feed: dict) -> dict:
    """input name → the shape of one sample (``feed``: input name → array), for :func:`weighted_macs`."""
    return {k: tuple(int(d) for d in v.shape) for k, v in feed.items()}
