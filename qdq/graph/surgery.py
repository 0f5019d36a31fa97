"""Graph surgery through onnx-graphsurgeon, and the checks every pass ends with.

Every pass that edits a graph follows one path: :func:`import_graph` (types and shapes inferred
first, so passes can decide by dtype) → edit ``gs.Node`` / ``gs.Variable`` / ``gs.Constant``
objects → :func:`export_graph`, which runs ``cleanup().toposort()``, exports, restores the model's
own fields (IR version, metadata, producer) and verifies the result with
``onnx.checker.check_model(full_check=True)`` (which includes strict shape and type inference).
A pass that produces an invalid model raises an internal :class:`QdqError` naming the pass and the
node; nothing is written.

Passes here prepare a float model for quantization without changing what it computes:
:func:`constants_to_initializers`, :func:`name_nodes`, :func:`fold_batchnorm`.
"""
from __future__ import annotations

import functools
import re

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import QdqError
from ..calib.session import LENT_BYTES, held, held_reference, lent_reference
from ..modelio import check_onnx, fresh_name, unique_names, values_bytes
from .index import GraphIndex, infer_types

# Smallest normal float16.  Smaller FP16 scales are subnormal or round to 0: TensorRT rejects 0, and
# ONNX Runtime's FP16 kernels turned subnormal weight scales into Inf outputs (docs/design.md).
FP16_MIN_SCALE = 2.0 ** -14


def gs():
    """onnx-graphsurgeon, imported on first use, its own logging kept off the user's terminal
    (failures reach us as exceptions)."""
    import onnx_graphsurgeon
    from onnx_graphsurgeon.logger import G_LOGGER as log

    log.colors, log.severity = False, log.CRITICAL + 10
    return onnx_graphsurgeon


def import_graph(source):
    """A gs.Graph of ``source`` (a ModelProto, or a :class:`qdq.graph.index.GraphIndex` whose typed
    skeleton is reused: candidates rebuilt from one float model infer its types once) whose tensors
    carry inferred dtypes and shapes; the weights are the model's own (read lazily, not copied).  ``graph.nodes[i]`` is ``model.graph.node[i]``: node ids of a
    GraphIndex hold in the graph."""
    model = source.model if isinstance(source, GraphIndex) else source
    typed = source.typed if isinstance(source, GraphIndex) else infer_types(source)
    graph = gs().import_onnx(typed)
    if len(graph.nodes) != len(typed.graph.node):
        raise QdqError("internal error: onnx-graphsurgeon changed the node count on import; please report it")
    left_out = {t.name for t in typed.graph.input} - {t.name for t in model.graph.input}
    if left_out:   # the skeleton's large weights, inputs there: constants again, read lazily from the model
        tensors = graph.tensors()
        for t in model.graph.initializer:
            if t.name in left_out:
                tensors[t.name].to_constant(_lazy(t))
        graph.inputs = [t for t in graph.inputs if t.name not in left_out]
    return graph


def _lazy(t: onnx.TensorProto):
    """gs's lazy values of initializer ``t``; those of a held model (:func:`qdq.calib.session.hold`)
    read from the store, not copied."""
    from onnx_graphsurgeon.ir.tensor import LazyValues

    return _held_values()(t) if held(t) is not None else LazyValues(t)


@functools.cache
def _held_values():
    from onnx_graphsurgeon.ir.tensor import LazyValues

    class HeldValues(LazyValues):
        """Values of a held model's weight: the store's read-only array (made whole: the tensor's own)."""

        def load(self):
            arr = held(self.tensor)
            return super().load() if arr is None else arr

    return HeldValues


def export_graph(graph, template: onnx.ModelProto, pass_name: str, check: bool = True) -> onnx.ModelProto:
    """Clean up, sort, export and verify ``graph`` (consumed: its large constants are moved into the
    model, not copied beside it); model-level fields come from ``template``.
    ``check=False`` only for throw-away candidates that are evaluated, never written."""
    tidy(graph)
    try:
        model, lent = export_lent(graph, template, consume=True)
    except Exception as e:
        raise QdqError(f"internal error in pass {pass_name!r}: cannot export the graph ({_first_line(e)}); "
                       "please report it with the model") from None
    _fill(model, lent)
    model.producer_name, model.producer_version = template.producer_name, template.producer_version
    model.domain, model.model_version, model.doc_string = template.domain, template.model_version, template.doc_string
    del model.metadata_props[:]
    model.metadata_props.extend(template.metadata_props)
    known = {o.domain for o in model.opset_import}
    model.opset_import.extend(o for o in template.opset_import if o.domain not in known)
    if check:
        verify(model, pass_name)
    return model


def tidy(graph) -> None:
    """Dead nodes and tensors removed, nodes in graph order, and no dtype on a tensor without a shape
    (it would export as an invalid value_info)."""
    graph.cleanup().toposort()
    io = {t.name for t in graph.inputs + graph.outputs}
    for t in graph.tensors().values():
        if isinstance(t, gs().Variable) and t.shape is None and t.name not in io:
            t.dtype = None


def peek(const) -> np.ndarray:
    """A gs Constant's values, read without keeping them in the graph (``Constant.values`` caches a
    lazily read weight there for the graph's lifetime: a pass that reads every weight would hold a
    copy of them all)."""
    from onnx_graphsurgeon.ir.tensor import LazyValues

    return const._values.load() if isinstance(const._values, LazyValues) else const.values


def export_lent(graph, template: onnx.ModelProto, consume: bool = False) -> tuple:
    """``graph`` exported for an ONNX Runtime session only (unchecked, never written) with each constant
    of :data:`qdq.calib.session.LENT_BYTES` or more an external reference: (model, {name: np.ndarray or
    the float model's TensorProto}) for :func:`qdq.calib.session.session_for`'s ``lent``, so no copy of
    the weights is serialized.  ``graph`` is left as it was, unless ``consume``: then its lent
    constants keep their references and the returned map is the only holder of their arrays."""
    from onnx_graphsurgeon.ir.tensor import LazyValues

    lent, swapped = {}, []
    for t in graph.tensors().values():
        if not isinstance(t, gs().Constant):
            continue
        old = t._values   # gs exports a LazyValues' own TensorProto, and an array's bytes
        ref = held_reference(t.name, old) if isinstance(old, np.ndarray) else None
        if ref is not None:   # a held weight read by the pass, unchanged: its reference again
            swapped.append((t, old))
            t._values = _lazy(ref)
            continue
        proto = old.tensor if isinstance(old, LazyValues) else None
        if proto is None and (not isinstance(old, np.ndarray) or old.dtype.kind in "OSUV"
                              or t.export_dtype != t.dtype or t.data_location is not None):
            continue   # exported as gs converts it
        nbytes = values_bytes(proto) if proto is not None else old.nbytes
        if nbytes < LENT_BYTES or (proto is not None and not proto.HasField("raw_data")):
            continue
        ref = (lent_reference(t.name, proto.dims, proto.data_type) if proto is not None
               else lent_reference(t.name, old.shape, onnx.helper.np_dtype_to_tensor_dtype(old.dtype)))
        lent[t.name] = proto if proto is not None else old
        swapped.append((t, old))
        t._values = LazyValues(ref)
    try:
        model = gs().export_onnx(graph, do_type_check=False)
    finally:
        for t, old in swapped if not consume else ():
            t._values = old
    model.ir_version = max(template.ir_version, _min_ir_version(model))
    return model, lent


def _fill(model: onnx.ModelProto, lent: dict) -> None:
    """The references :func:`export_lent` made given their data, one tensor at a time, as
    onnx-graphsurgeon's own export writes it (the constant's TensorProto, or its array's bytes raw):
    gs exports a graph and then copies it into the model, so the weights were held three times.  Each
    array is dropped from ``lent`` once copied: what a pass computed is held once, not twice."""
    for t in model.graph.initializer:
        src = lent.pop(t.name, None)
        if src is None:
            continue
        if isinstance(src, np.ndarray):
            src = onnx.helper.make_tensor(t.name, t.data_type, src.shape, np.ascontiguousarray(src).tobytes(), raw=True)
        name = t.name
        t.CopyFrom(src)
        t.name = name


def _min_ir_version(model: onnx.ModelProto) -> int:
    try:
        return onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    except Exception:
        return model.ir_version


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def verify(model: onnx.ModelProto, pass_name: str) -> None:
    """``onnx.checker.check_model(full_check=True)`` (structure, then strict type and shape
    inference; on the model's skeleton, :func:`qdq.modelio.check_onnx`); a failure is an internal
    error naming the pass and, where ONNX says, the node."""
    try:
        check_onnx(model, full_check=True)
    except Exception as e:
        msg = _first_line(e)
        node = re.search(r"node \(([^)]*)\)|Node \(([^)]*)\)|node '([^']*)'|node name: ([^\s)]+)|name: \"([^\"]+)\"", str(e))
        where = f" at node {next(g for g in node.groups() if g)!r}" if node else ""
        raise QdqError(f"internal error in pass {pass_name!r}{where}: the result fails onnx's full check "
                       f"({msg}); nothing was written, please report it with the model") from None


def default_domain(node) -> bool:
    """True for a gs node of the default ONNX domain (gs reports it as None or "")."""
    return (node.domain or "") in ("", "ai.onnx")


def taken_names(graph) -> set:
    """Every tensor and node name in ``graph`` (to draw fresh names from)."""
    return set(graph.tensors()) | {n.name for n in graph.nodes} | {t.name for t in graph.inputs + graph.outputs}


def constants_to_initializers(graph) -> int:
    """Turn ``Constant`` nodes (PP-OCR and PicoDet exports keep their weights there) into
    initializers of the same name, so every later pass sees one kind of constant.  Returns how
    many were converted."""
    done = 0
    for node in graph.nodes:
        if node.op != "Constant" or not default_domain(node) or len(node.outputs) != 1:
            continue
        value = node.attrs.get("value")
        if value is None or node.outputs[0] in graph.outputs:
            continue
        array = value.values if hasattr(value, "values") else numpy_helper.to_array(value)
        out = node.outputs[0]
        node.outputs.clear()
        out.to_constant(np.asarray(array))
        done += 1
    return done


def name_nodes(graph) -> int:
    """Name every node by :func:`qdq.modelio.unique_names` (the one scheme qdq uses), so every Q/DQ,
    report line and Netron label points at one node.  Returns how many repeated names changed."""
    names = unique_names([(n.name, n.op) for n in graph.nodes])
    renamed = sum(1 for n, new in zip(graph.nodes, names) if n.name and n.name != new)
    for n, new in zip(graph.nodes, names):
        n.name = new
    return renamed


def fold_batchnorm(graph, fp16_scales: bool = False) -> int:
    """Fold inference BatchNormalization into the Conv / ConvTranspose that feeds it alone:
    with a, b from :func:`batchnorm_affine`, W'[o] = W[o]·a[o] and bias' = bias·a + b.
    Per-output-channel INT8 weights are invariant to this per-channel scaling, so the INT8 numerics
    are unchanged and TensorRT (which folds BN itself) runs the same layer.  With ``fp16_scales`` a BN
    is left in place when folding would push a channel's weight scale (amax/127) below FP16's smallest
    normal.  Returns the number of BatchNormalization nodes folded."""
    g = gs()
    folded, taken = 0, taken_names(graph)
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization" and default_domain(n)]:
        if len(bn.outputs) != 1 or any(not isinstance(t, g.Constant) for t in bn.inputs[1:5]):
            continue
        x = bn.inputs[0]
        if len(x.inputs) != 1 or len(x.outputs) != 1 or x in graph.outputs:
            continue
        conv = x.inputs[0]
        if conv.op not in ("Conv", "ConvTranspose") or len(conv.inputs) < 2 or not isinstance(conv.inputs[1], g.Constant):
            continue
        bias = conv.inputs[2] if len(conv.inputs) > 2 and not conv.inputs[2].is_empty() else None
        if bias is not None and not isinstance(bias, g.Constant):
            continue
        a, b = batchnorm_affine(bn)
        w = np.asarray(conv.inputs[1].values, np.float64)
        scale = _out_channel_multiplier(conv, w.shape, a)
        if scale is None:
            continue
        folded_w = w * scale
        if fp16_scales:
            amax = np.abs(np.moveaxis(folded_w, _out_axis(conv), 0)).reshape(folded_w.shape[_out_axis(conv)], -1).max(1)
            if np.any((amax > 0) & (amax / 127 < FP16_MIN_SCALE)):
                continue
        b0 = np.zeros(a.shape) if bias is None else np.asarray(bias.values, np.float64)
        # a weight shared with another layer keeps its values there; this layer gets its own copy
        wname = conv.inputs[1].name if len(conv.inputs[1].outputs) == 1 else \
            fresh_name(f"{conv.inputs[1].name}_{bn.name}", taken)
        conv.inputs[1] = g.Constant(wname, folded_w.astype(conv.inputs[1].values.dtype))
        new_bias = g.Constant(fresh_name(f"{bn.name}_folded_bias", taken), (b0 * a + b).astype(conv.inputs[1].values.dtype))
        if len(conv.inputs) > 2:
            conv.inputs[2] = new_bias
        else:
            conv.inputs.append(new_bias)
        out = bn.outputs[0]
        bn.outputs.clear()
        conv.outputs[0] = out
        folded += 1
    return folded


def batchnorm_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """Inference BatchNormalization (constant γ, β, mean, var) as y = a·x + b per channel:
    a = γ/√(var+ε), b = β − mean·a, in float64."""
    gamma, beta, mean, var = (np.asarray(t.values, np.float64) for t in bn.inputs[1:5])
    a = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    return a, beta - mean * a


def _out_axis(conv) -> int:
    return 0 if conv.op == "Conv" else 1


def _out_channel_multiplier(conv, shape, a: np.ndarray):
    """Array broadcastable to a weight of ``shape`` that scales output channel o by a[o]; None when
    the channel count does not match."""
    if conv.op == "Conv":
        if shape[0] != a.size:
            return None
        return a.reshape((-1,) + (1,) * (len(shape) - 1))
    group = int(conv.attrs.get("group", 1))
    cin, per_group = shape[0], shape[1]      # ConvTranspose weight: (Cin, Cout/group, k...)
    if per_group * group != a.size or cin % group:
        return None
    rows = np.stack([a[(ci // (cin // group)) * per_group:(ci // (cin // group) + 1) * per_group] for ci in range(cin)])
    return rows.reshape(rows.shape + (1,) * (len(shape) - 2))
