"""What TensorRT actually built: the engine's layers, their precision, and the ONNX nodes fused into
each, without a GPU.

TensorRT-RTX's ahead-of-time build (:mod:`qdq.trt.backend`, ``ProfilingVerbosity.DETAILED`` and a
logger that keeps VERBOSE messages) logs, after a ``Layers:`` line, one line per engine layer::

    Name: …, LayerType: correlation, Inputs: [ { Name: …, Dimensions: [1,32,112,112], …, Datatype: Int8,
    Format: … }], Constants: [ { … Datatype: Int8 … }], Outputs: [ … ], TacticName: …, StreamId: 0,
    Metadata: [ONNX Layer: A][ONNX Layer: B]

:func:`parse_log` reads it; :func:`from_inspector` reads the JSON of the full TensorRT's
``IEngineInspector`` (``LayerInformationFormat.JSON``, GPU builds) into the same records.

A layer's *precision*: for compute layers (conv, deconv, GEMM) the type of their activation inputs and
weight constants (int8 when both are Int8); for the others, the type of their outputs.
A layer that fails to parse stops the reading with :class:`EngineLogError`: never numbers from a
format we do not understand.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from ..errors import QdqError
from ..graph.index import GraphIndex
from ..graph.placement import BINARY, POINTWISE, WEIGHTED, is_depthwise
from ..graph.qdq_file import layer_precisions

# layer types that run a weighted layer: TensorRT-RTX's log (correlation, deconv, gemm, …) and the inspector's
# ParameterType of TensorRT 8.x/10.x (Convolution, Deconvolution, ConvActPool, MatrixMultiply, FullyConnected)
COMPUTE = {"correlation", "convolution", "deconv", "deconvolution", "gemm", "matrix_multiply", "fully_connected",
           "matrixmultiply", "fullyconnected", "convactpool", "caskconvolution", "caskgemmconvolution",
           "cudadepthwiseconvolution", "caskdeconvolution"}
_BYTES = {"Int8": 1, "Half": 2, "Float": 4, "Int32": 4, "Int64": 8, "Bool": 1, "BFloat16": 2, "FP8": 1, "UInt8": 1,
          "FP4": 1, "Int4": 1, "Double": 8}
_PRECISION = {"Int8": "int8", "Half": "fp16", "Float": "fp32", "BFloat16": "bf16", "FP8": "fp8", "FP4": "fp4",
              "Int4": "int4", "N/A": "unknown"}
# words naming a datatype in the inspector's tensor descriptions: "Row major linear FP32", "Thirty-two wide channel
# vectorized row major Int8 format", "Channel major FP16 format where channel % 8 == 0", or abbreviated "Half"
_DTYPE_WORDS = {"Int8": "Int8", "INT8": "Int8", "UInt8": "UInt8", "UINT8": "UInt8", "FP16": "Half", "Half": "Half",
                "FP32": "Float", "Float": "Float", "BFloat16": "BFloat16", "BF16": "BFloat16", "FP8": "FP8",
                "Int32": "Int32", "INT32": "Int32", "Int64": "Int64", "INT64": "Int64", "Bool": "Bool", "BOOL": "Bool",
                "FP4": "FP4", "Int4": "Int4", "INT4": "Int4", "Double": "Double"}
_LINE = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>\w+), Inputs: \[(?P<inputs>.*?)\], "
                   r"Constants: \[(?P<constants>.*?)\], Outputs: \[(?P<outputs>.*?)\], TacticName: (?P<rest>.*)$")
_TENSOR = re.compile(r"\{ Name: (?P<name>[^,]*), Dimensions: \[(?P<dims>[^\]]*)\],.*?Datatype: (?P<dtype>\w+)")
_META = re.compile(r"\[ONNX Layer: ([^\]]*)\]")
_REFORMAT = re.compile(r"Move|Reformat|Copy|Cast|Transpose", re.IGNORECASE)


class EngineLogError(QdqError):
    """The engine layer list is missing or in a format this version of qdq does not read."""


@dataclass
class Tensor:
    name: str
    dtype: str
    dims: list

    @property
    def bytes(self) -> int:
        n = math.prod(d for d in self.dims if d > 0) if self.dims else 1
        return n * _BYTES.get(self.dtype, 4)


@dataclass
class EngineLayer:
    name: str
    type: str
    inputs: list = field(default_factory=list)       # Tensor
    constants: list = field(default_factory=list)    # Tensor
    outputs: list = field(default_factory=list)      # Tensor
    onnx_nodes: list = field(default_factory=list)   # names of the ONNX nodes fused into it

    @property
    def precision(self) -> str:
        if self.type in COMPUTE:   # activations and the weight (the largest constant; biases are small)
            weight = max(self.constants, key=lambda c: math.prod(d for d in c.dims if d > 0), default=None)
            types = {t.dtype for t in self.inputs + ([weight] if weight is not None else [])}
        else:
            types = {t.dtype for t in self.outputs}
        if "N/A" in types:
            return "unknown"
        for dtype in ("Float", "Half", "BFloat16", "FP8", "Int8", "FP4", "Int4"):   # the widest float type decides
            if dtype in types:
                return _PRECISION[dtype]
        return "other"

    @property
    def reformat(self) -> bool:
        """A layer that only moves or converts data (layout or precision changes between layers)."""
        return self.type not in COMPUTE and (not self.onnx_nodes or bool(_REFORMAT.search(self.name))) and \
            not any(n for n in self.onnx_nodes if not n.endswith(("_QuantizeLinear", "_DequantizeLinear")))

    @property
    def constant_bytes(self) -> int:
        return sum(c.bytes for c in self.constants)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(precision=self.precision, constant_bytes=self.constant_bytes)
        return d


def _tensors(text: str) -> list:
    return [Tensor(m["name"], inspector_dtype(m["dtype"]), [int(d) for d in m["dims"].split(",")
                                                             if d.strip().lstrip("-").isdigit()])
            for m in _TENSOR.finditer(text)]


def parse_log(messages) -> list:
    """Engine layers from the builder's log (a list of messages; the layer list may be one multi-line
    message)."""
    lines = [line.strip() for msg in messages for line in str(msg).splitlines()]
    try:
        start = next(i for i, line in enumerate(lines) if line == "Layers:")
    except StopIteration:
        raise EngineLogError("could not read the engine layer list: the build log has no 'Layers:' section "
                             "(build with ProfilingVerbosity.DETAILED and a VERBOSE logger)") from None
    layers = []
    for line in lines[start + 1:]:
        if not line.startswith("Name: "):
            if layers:
                break
            continue
        m = _LINE.match(line)
        if m is None or "Datatype" not in line and (m["inputs"].strip() or m["outputs"].strip()):
            raise EngineLogError(f"could not read the engine layer list: unexpected line format ({line[:120]!r}); "
                                 "this TensorRT's log differs from the one qdq reads")
        meta = m["rest"].split("Metadata:", 1)[1] if "Metadata:" in m["rest"] else ""
        layers.append(EngineLayer(m["name"], m["type"], _tensors(m["inputs"]), _tensors(m["constants"]),
                                  _tensors(m["outputs"]), _META.findall(meta)))
    if not layers:
        raise EngineLogError("could not read the engine layer list: no layer lines after 'Layers:'")
    return layers


def inspector_dtype(text: str) -> str:
    """The datatype a tensor description of the engine inspector names ("N/A" when TensorRT gives none,
    e.g. dynamic shapes); an :class:`EngineLogError` for any other text, never a guess."""
    if not text or text.startswith("N/A"):
        return "N/A"
    found = {_DTYPE_WORDS[w] for w in re.findall(r"[A-Za-z0-9]+", text) if w in _DTYPE_WORDS}
    if len(found) != 1:
        raise EngineLogError(f"could not read the engine layer list: unknown datatype in {text!r}")
    return found.pop()


def _inspector_tensors(entries) -> list:
    """Tensors of an inspector layer: the datatype from ``Format/Datatype`` (TensorRT 8.x/10.x) or
    from the split ``DataType``/``Datatype`` field (11.x)."""
    out = []
    for e in entries or []:
        if isinstance(e, dict):
            text = e.get("DataType") or e.get("Datatype") or e.get("Format/Datatype") or ""
            dims = e.get("Dimensions")
            out.append(Tensor(e.get("Name", ""), inspector_dtype(str(text)), list(dims) if isinstance(dims, list) else []))
    return out


def _inspector_nodes(entry: dict) -> list:
    """The ONNX nodes fused into an inspector layer: its ``Metadata`` ``[ONNX Layer: …]`` entries
    (TensorRT 10+, separated by control characters), else its name, which TensorRT 8.x joins from them
    with " + "; reformat layers name none."""
    if "Metadata" in entry:
        return _META.findall(str(entry["Metadata"]))
    name = str(entry.get("Name", ""))
    if entry.get("Origin") == "REFORMAT" or name.startswith("Reformatting CopyNode"):
        return []
    return [n.strip() for n in name.split(" + ") if n.strip()]


def from_inspector(info: dict) -> list:
    """Engine layers from ``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)``
    (TensorRT 8.x–11.x with a GPU; ``trtexec --exportLayerInfo``).  The layer type is its
    ``ParameterType`` (Convolution for CaskConvolution, CudaDepthwiseConvolution …) where given, else
    ``LayerType``; weights come from ``Weights`` or ``ConvWeights`` (``{"Type", "Count"}``)."""
    layers = []
    for entry in info.get("Layers", []):
        if not isinstance(entry, dict):
            raise EngineLogError("could not read the engine layer list: the inspector gave names only "
                                 "(build with ProfilingVerbosity.DETAILED)")
        weights = entry.get("Weights") or entry.get("ConvWeights") or {}
        constants = [Tensor("weights", inspector_dtype(str(weights.get("Type", ""))), [int(weights["Count"])])] \
            if isinstance(weights, dict) and weights.get("Count") else []
        kind = str(entry.get("ParameterType") or entry.get("LayerType", "")).lower()
        layers.append(EngineLayer(str(entry.get("Name", "")), kind, _inspector_tensors(entry.get("Inputs")), constants,
                                  _inspector_tensors(entry.get("Outputs")), _inspector_nodes(entry)))
    return layers


@dataclass
class EngineView:
    """What the engine runs, against what the ONNX file asks for (``qdq inspect``)."""

    layers: list = field(default_factory=list)        # EngineLayer
    weighted: list = field(default_factory=list)      # {"node", "op", "precision", "engine_layer", "file", "file_int8", "macs"}
    counts: dict = field(default_factory=dict)        # layer type -> {precision: count}
    reformats: int = 0
    findings: list = field(default_factory=list)      # {"kind", "node", "message"}
    engine_bytes: int = 0
    depthwise_int8: int = 0                           # depthwise convs built in INT8

    @property
    def int8_layers(self) -> int:
        return sum(w["precision"] == "int8" for w in self.weighted)

    @property
    def int8_mac_share(self) -> float:
        total = sum(w["macs"] or 0 for w in self.weighted)
        return sum(w["macs"] or 0 for w in self.weighted if w["precision"] == "int8") / total if total else 0.0

    def constant_bytes(self) -> dict:
        """Bytes of engine constants per datatype and per layer type (what makes an engine big)."""
        by_dtype, by_type = {}, {}
        for layer in self.layers:
            for c in layer.constants:
                by_dtype[c.dtype] = by_dtype.get(c.dtype, 0) + c.bytes
                by_type[layer.type] = by_type.get(layer.type, 0) + c.bytes
        return {"by_datatype": by_dtype, "by_layer_type": by_type}

    def size_note(self) -> str:
        """Where the engine's bytes are: weights of the compute layers, and Int8 constants elsewhere,
        which TensorRT-RTX adds to run each INT8 depthwise conv as a 4-channels-per-group conv (a zero
        block of C×3×H×W bytes per layer).  A constant several layers list is counted once.  When the
        listed constants exceed the engine, the note says why the two do not add up."""
        seen, weights, padding, other = set(), 0, 0, 0
        for x in self.layers:
            for c in x.constants:
                if (c.name, c.dtype) in seen:
                    continue
                seen.add((c.name, c.dtype))
                if x.type in COMPUTE:
                    weights += c.bytes
                elif c.dtype == "Int8":
                    padding += c.bytes
                else:
                    other += c.bytes
        note = (f"{self.engine_bytes / 1e6:.1f} MB engine: {weights / 1e6:.1f} MB layer weights, "
                f"{other / 1e6:.1f} MB other constants")
        if padding:
            note += (f", {padding / 1e6:.1f} MB Int8 constants outside conv/GEMM layers (the zero padding TensorRT-RTX "
                     f"adds to run the {self.depthwise_int8} INT8 depthwise convs; --exclude depthwise keeps them FP16)")
        if self.engine_bytes and weights + other + padding > self.engine_bytes:
            note += (" — the layer list gives constants in the types the network declares them (FP32 before the "
                     "builder converts them), so they exceed what the engine stores; compare engine sizes, not these")
        return note

    def to_dict(self) -> dict:
        return {"size": self.size_note(), "depthwise_int8": self.depthwise_int8,
                "layers": [{"name": x.name, "type": x.type, "precision": x.precision, "onnx_nodes": x.onnx_nodes,
                            "constant_bytes": x.constant_bytes} for x in self.layers],
                "weighted": self.weighted, "counts": self.counts, "reformats": self.reformats,
                "findings": self.findings, "int8_layers": self.int8_layers, "int8_mac_share": self.int8_mac_share,
                "engine_bytes": self.engine_bytes, "constant_bytes": self.constant_bytes()}


def engine_view(model, layers: list, engine_bytes: int = 0) -> EngineView:
    """Map the weighted ONNX nodes of ``model`` (the file that was built) onto ``layers``."""
    view = EngineView(layers=layers, engine_bytes=engine_bytes)
    for layer in layers:
        by = view.counts.setdefault(layer.type, {})
        by[layer.precision] = by.get(layer.precision, 0) + 1
    view.reformats = sum(layer.reformat for layer in layers)
    file_view = {r["node"]: r for r in layer_precisions(model)}
    file_float = {n for n, r in file_view.items() if not r["int8"]}
    idx = GraphIndex.build(model, infer_shapes=False)
    qdq_names = {n.name for n in idx.nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    alone = {n for x in layers if x.onnx_nodes and all(m in qdq_names for m in x.onnx_nodes) for n in x.onnx_nodes}
    for pos, node in enumerate(idx.nodes):
        if node.op_type not in WEIGHTED:
            continue
        hits = [x for x in layers if node.name in x.onnx_nodes]
        layer = next((x for x in hits if x.type in COMPUTE), hits[0] if hits else None)
        precision = layer.precision if layer is not None else "not in the engine"
        file_int8 = file_view[node.name]["int8"]
        if precision == "int8" and is_depthwise(node, _weight(idx, node)):
            view.depthwise_int8 += 1
        view.weighted.append({"node": node.name, "op": node.op_type, "precision": precision,
                              "engine_layer": layer.name if layer else None, "file_int8": file_int8,
                              "file": file_view[node.name]["file"], "macs": file_view[node.name]["macs"]})
        if file_int8 and precision != "int8":
            view.findings.append({"kind": "int8 in the file, not in the engine", "node": node.name,
                                  "message": f"Q/DQ in the file, but TensorRT runs it in {precision}: "
                                             f"{_cause(idx, pos, alone)}"})
        elif not file_int8 and precision == "int8":
            view.findings.append({"kind": "views disagree", "node": node.name,
                                  "message": "qdq inspect counts it as float, the engine runs it in INT8"})
    by_name = {n.name: i for i, n in enumerate(idx.nodes)}
    for layer in layers:
        if layer.onnx_nodes and all(n in qdq_names for n in layer.onnx_nodes):
            after = _float_producer(idx, by_name.get(layer.onnx_nodes[0]), file_float)
            if after is not None:
                view.findings.append({"kind": "float layer boundary", "node": layer.onnx_nodes[0],
                                      "message": f"the Q/DQ after {after!r}, which the file keeps in float, runs as a "
                                                 "kernel of its own (the cost of that layer's float precision)"})
            else:
                view.findings.append({"kind": "Q/DQ not fused", "node": layer.onnx_nodes[0],
                                      "message": f"{', '.join(layer.onnx_nodes[:3])} run as a layer of their own "
                                                 f"({layer.name}, {layer.type}, {layer.precision})"})
    return view


def _weight(idx, node):
    """The weight array of a layer, read through its DequantizeLinear in a Q/DQ file."""
    w = idx.constant(node.input[1])
    p = idx.producer_node(node.input[1]) if w is None else None
    return idx.constant(p.input[0]) if p is not None and p.op_type == "DequantizeLinear" else w


def _float_producer(idx, pos, file_float: set):
    """Name of the weighted layer kept in float whose output (through pointwise ops) a Q node reads."""
    node = idx.nodes[pos] if pos is not None else None
    for _ in range(10):
        if node is None:
            return None
        src = idx.producer_node(node.input[0])
        if src is None:
            return None
        if src.name in file_float:
            return src.name
        if src.op_type not in POINTWISE | BINARY:
            return None
        node = src
    return None


def _cause(idx, pos: int, alone: set) -> str:
    """The likely reason a layer with Q/DQ runs in float, read from the file and from the Q/DQ the
    engine ran as layers of their own (``alone``)."""
    node = idx.nodes[pos]
    for i, t in enumerate(node.input[:2]):
        p = idx.producer_node(t)
        if p is None or p.op_type != "DequantizeLinear":
            return f"input {i} ({t!r}) has no DequantizeLinear right before the layer"
        if p.name in alone:
            return (f"TensorRT has no INT8 kernel for this {node.op_type} here: it ran the "
                    f"{'weight' if i else 'input'} DequantizeLinear {p.name!r} as a layer of its own")
        scale = idx.constant(p.input[1])
        if i == 0 and idx.constant(p.input[0]) is None and scale is not None and scale.size > 1:
            return "its activation Q/DQ is per-channel: TensorRT builds such layers in float"
    for c, _ in idx.consumer_nodes(node.output[0]):
        if c.op_type == "Add":
            other = next((t for t in c.input if t != node.output[0]), None)
            p = idx.producer_node(other) if other else None
            if p is not None and p.op_type != "DequantizeLinear" and p.op_type not in ("Conv", "ConvTranspose"):
                return f"the residual Add {c.name!r} after it has no Q/DQ on its other input"
    return "its Q/DQ did not fuse with it (look for ops between the DequantizeLinear and the layer)"
