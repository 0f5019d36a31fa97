"""trtexec's per-layer timings (``--exportProfile``) mapped back to ONNX nodes: the INT8 engine of a
Q/DQ file against the FP16 engine of its float model, weighted layer by weighted layer.

Format (NVIDIA/TensorRT ``samples/common/sampleReporting.cpp``, ``Profiler::exportJSONProfile``, the
same in the 8.5.2, 8.6.1, 10.3.0, 10.16 and 11.1 sources): a JSON list, first ``{"count": iterations}``,
then one ``{"name", "timeMs", "averageMs", "medianMs", "percentage"}`` per engine layer (``timeMs``
summed over the iterations, ``averageMs`` per inference).  A layer's name joins the ONNX nodes fused into
it with " + " on TensorRT 8.x; fused kernels of 10.x and later (``__myl_…``) name them only in the layer
information (``--exportLayerInfo``, read by :func:`qdq.trt.layers.from_inspector`), so pass it where
names do not map.  Anything else in the file is an error, never a guess.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QdqError
from ..modelio import read_json
from .layers import EngineLayer, EngineLogError, from_inspector

KEYS = ("name", "timeMs", "averageMs", "medianMs", "percentage")
SLOWER = 1.05   # INT8 this much slower than FP16 counts as slower (timings of one profile run vary by a few %)


@dataclass(frozen=True)
class LayerTime:
    name: str
    ms: float                  # averageMs: per inference
    nodes: tuple = ()          # ONNX nodes fused into the layer (none: a reformat, or not mapped)
    reformat: bool = False
    precision: str = ""        # from the layer information, when given


def read_profile(path) -> list[LayerTime]:
    """The layers of a ``trtexec --exportProfile`` file, in engine order (nodes not yet mapped)."""
    data = read_json(path, "trtexec writes layer names unescaped, so a name with a quote breaks it")
    if not (isinstance(data, list) and data and isinstance(data[0], dict) and set(data[0]) == {"count"}):
        raise QdqError(f"{path}: not a trtexec --exportProfile file (a list starting with {{\"count\": …}})")
    out = []
    for k, e in enumerate(data[1:], 1):
        if not isinstance(e, dict) or set(e) != set(KEYS):
            extra = sorted(set(e) - set(KEYS)) if isinstance(e, dict) else []
            raise QdqError(f"{path}: entry {k} has " + (f"unknown fields {extra}" if extra else f"not the fields {list(KEYS)}")
                           + "; qdq reads the profile format of trtexec 8.5–11.1")
        out.append(LayerTime(str(e["name"]), float(e["averageMs"])))
    return out


def _reformat_name(name: str) -> bool:
    return name.startswith(("Reformatting CopyNode", "Reformatted ")) or " reformatter " in name


def attach(times: list, known: set, info: list | None = None) -> list:
    """``times`` with the ONNX nodes (of ``known``) each layer runs: from the layer information
    ``info`` (:class:`EngineLayer` list, matched by layer name) where given, else from the name."""
    by_name = {x.name: x for x in info or []}
    out = []
    for t in times:
        layer: EngineLayer | None = by_name.get(t.name)
        if layer is not None:
            nodes, reformat, precision = layer.onnx_nodes, layer.reformat, layer.precision
        else:
            reformat = _reformat_name(t.name)
            nodes, precision = ([] if reformat else [n.strip() for n in t.name.split(" + ")]), ""
        out.append(LayerTime(t.name, t.ms, tuple(n for n in nodes if n in known), reformat, precision))
    return out


@dataclass(frozen=True)
class NodeTime:
    """One weighted ONNX node in both engines (ms per inference; a layer fusing several weighted nodes
    gives each an equal share)."""
    node: str
    op: str
    int8_ms: float | None
    fp16_ms: float | None
    int8_layer: str | None
    precision: str              # of its INT8-engine layer, from the layer information ("" unknown)

    @property
    def slower(self) -> bool:
        return self.int8_ms is not None and self.fp16_ms is not None and self.int8_ms > SLOWER * self.fp16_ms


@dataclass(frozen=True)
class TimingView:
    nodes: list = field(default_factory=list)          # NodeTime, graph order
    total_ms: dict = field(default_factory=dict)       # engine -> ms per inference
    reformat_ms: dict = field(default_factory=dict)    # engine -> ms in reformat layers (precision boundaries)
    unmapped: dict = field(default_factory=dict)       # engine -> names of layers with no ONNX node of the model

    @property
    def slower(self) -> list:
        return [n for n in self.nodes if n.slower]

    def exclude_line(self) -> str:
        """The qdq quantize option that keeps the layers slower in INT8 in float."""
        return ("--exclude " + " ".join(n.node for n in self.slower)) if self.slower else ""

    def to_dict(self) -> dict:
        return {"nodes": [vars(n) | {"slower": n.slower} for n in self.nodes], "total_ms": self.total_ms,
                "reformat_ms": self.reformat_ms, "unmapped": self.unmapped, "exclude": self.exclude_line()}


def _per_node(times: list, weighted: dict) -> dict:
    """node -> (ms, layer name, precision) for the weighted nodes the layers run."""
    out = {}
    for t in times:
        mine = [n for n in t.nodes if n in weighted]
        for n in mine:
            out[n] = (t.ms / len(mine), t.name, t.precision)
    return out


def timing_view(weighted: dict, int8: list, fp16: list | None = None) -> TimingView:
    """``weighted`` (node -> op, graph order) timed in the INT8 engine's and the FP16 engine's attached
    profiles (:func:`attach`).  An INT8 profile naming none of the weighted nodes is an error: it is not
    this model's engine (or its layer names need ``--layer-info``)."""
    engines = {"int8": int8} | ({"fp16": fp16} if fp16 is not None else {})
    per = {k: _per_node(v, weighted) for k, v in engines.items()}
    if not per["int8"]:
        raise QdqError("the INT8 profile names none of the model's weighted layers: is it this file's engine? "
                       "(TensorRT 10+ fused kernels need trtexec --exportLayerInfo, passed as --layer-info)")
    nodes = []
    for n, op in weighted.items():
        i8, f16 = per["int8"].get(n), per.get("fp16", {}).get(n)
        nodes.append(NodeTime(n, op, i8[0] if i8 else None, f16[0] if f16 else None, i8[1] if i8 else None,
                              i8[2] if i8 else ""))
    return TimingView(nodes, {k: sum(t.ms for t in v) for k, v in engines.items()},
                      {k: sum(t.ms for t in v if t.reformat) for k, v in engines.items()},
                      {k: [t.name for t in v if not t.nodes and not t.reformat] for k, v in engines.items()})



def read_layer_info(path) -> list:
    """The layers of a ``trtexec --exportLayerInfo`` file (:func:`qdq.trt.layers.from_inspector`)."""
    info = read_json(path, "expected trtexec --exportLayerInfo")
    if not isinstance(info, dict):
        raise QdqError(f"{path}: not trtexec --exportLayerInfo JSON (an object with 'Layers')")
    try:
        return from_inspector(info)
    except EngineLogError as e:
        raise QdqError(f"{path}: {e}") from None


def device_speed(folder, weighted: dict, known: set) -> dict:
    """node -> the share of its FP16 time INT8 saves on the device ((t_fp16 − t_int8) / t_fp16; ≤ 0 when
    INT8 is not faster), from the files a bundle's RUN.txt writes into ``folder``: int8_profile.json and
    fp16_profile.json, with int8_layers.json / fp16_layers.json where present."""
    folder = Path(folder)
    if not (folder / "int8_profile.json").exists() or not (folder / "fp16_profile.json").exists():
        raise QdqError(f"{folder}: --device-profile needs int8_profile.json and fp16_profile.json there (trtexec "
                       "--exportProfile of both engines, as qdq bundle's RUN.txt writes them)")
    info = {k: read_layer_info(folder / f"{k}_layers.json") if (folder / f"{k}_layers.json").exists() else None
            for k in ("int8", "fp16")}
    view = timing_view(weighted, *(attach(read_profile(folder / f"{k}_profile.json"), known, info[k])
                                   for k in ("int8", "fp16")))
    return {n.node: (n.fp16_ms - n.int8_ms) / n.fp16_ms for n in view.nodes
            if n.int8_ms is not None and n.fp16_ms}
