"""TensorRT backend: check that TensorRT accepts a Q/DQ ONNX, build FP16 and INT8 engines, run them.

Modules, tried in order and imported lazily: ``tensorrt`` (NVIDIA TensorRT 8.5 … 11.x, builds need a
GPU), ``tensorrt_rtx`` / ``tensorrt_rtx_bindings`` (TensorRT-RTX from PyPI: strongly typed only; its
builder runs ahead of time on a CPU-only machine once a compute capability is set, and it enforces
TensorRT's Q/DQ rules).  Device memory goes through cuda-python (``cuda.bindings.runtime`` or
``cuda.cudart``) or pycuda, whichever is installed; every CUDA call's status is checked.

What differs per version is decided in one place, :class:`Backend` (as Polygraphy's loaders do):

* network: TensorRT 8.x's ONNX parser needs ``1 << EXPLICIT_BATCH`` (an implicit-batch network is
  refused); 10.x networks are always explicit (the flag is deprecated, 0 is passed); 11.x and
  TensorRT-RTX are strongly typed (``STRONGLY_TYPED`` where the enum has it);
* precision, weakly typed (8.x, 10.x): FP16 engine = FP32 ONNX + ``BuilderFlag.FP16``; INT8 engine =
  Q/DQ ONNX + INT8 and FP16 flags (Q/DQ decide what runs in INT8, the flags allow it).  Strongly typed
  (11.x, RTX; those flags are gone): FP16 engine = the FP16 cast of the model, INT8 engine = the Q/DQ
  ONNX as written (``--target trt11`` gives it an FP16 remainder);
* target GPU: TensorRT builds for the local GPU; TensorRT-RTX builds for the local GPU's compute
  capability when one is visible, and ahead of time for SM86 on a machine without one.
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import os
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..errors import QdqError
from ..modelio import load_model, metadata, save_model, too_large, write_external
from ..targets import prepare
from .cuda import cudart
from ..graph.qdq_file import recorded_shapes
from .layers import EngineLogError, engine_view, parse_log

_MODULES = ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings")


@dataclass
class Backend:
    name: str
    module: object
    version: str

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return 0

    @property
    def rtx(self) -> bool:
        return "rtx" in self.name

    @property
    def strongly_typed(self) -> bool:
        return self.rtx or self.major >= 11

    def network_flags(self) -> int:
        flags = self.module.NetworkDefinitionCreationFlag
        if self.strongly_typed:
            return 1 << int(flags.STRONGLY_TYPED) if hasattr(flags, "STRONGLY_TYPED") else 0
        if self.major < 10:  # the 8.x ONNX parser refuses implicit-batch networks
            return 1 << int(flags.EXPLICIT_BATCH)
        return 0

    def configure(self, config, precision: str) -> None:
        """Builder flags (weakly typed only) and, for TensorRT-RTX, the compute capability."""
        trt = self.module
        if not self.strongly_typed:
            if precision in ("fp16", "int8"):
                config.set_flag(trt.BuilderFlag.FP16)
            if precision == "int8":
                config.set_flag(trt.BuilderFlag.INT8)
        if self.rtx and hasattr(config, "set_compute_capability"):
            config.num_compute_capabilities = 1
            target = trt.ComputeCapability.CURRENT if gpu_visible() else trt.ComputeCapability.SM86
            config.set_compute_capability(target, 0)
        if hasattr(trt, "ProfilingVerbosity"):
            config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED


def load_backend(prefer: str | None = None) -> Backend:
    """The first importable TensorRT module (``prefer`` first), or a QdqError saying what to install."""
    names = ((prefer,) if prefer else ()) + _MODULES
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        return Backend(name, mod, getattr(mod, "__version__", "0"))
    raise QdqError("no TensorRT found: pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings "
                   "(checks without a GPU) or install NVIDIA TensorRT")


def gpu_visible() -> bool:
    """Whether a CUDA GPU is visible (cuda-python's device count; else the NVIDIA device node)."""
    rt = cudart()
    try:
        err, count = rt.cudaGetDeviceCount()
        return int(err) == 0 and count > 0
    except Exception:  # no cuda-python (None has no such call), or no driver
        return os.path.exists("/dev/nvidia0")


def logger_for(trt, verbose: bool = False):
    """An ILogger that keeps errors (to report them one line each) and, with ``verbose``, every
    message (the engine layer list of a DETAILED build arrives at VERBOSE severity)."""

    class Capture(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages, self.lines = [], []

        def log(self, severity, msg):
            if severity in (trt.Logger.ERROR, trt.Logger.INTERNAL_ERROR):
                self.messages.append(msg.strip())
            if verbose:
                self.lines.append(msg)

    return Capture()


@dataclass
class CheckResult:
    backend: str
    version: str
    parsed: bool
    built: bool
    errors: list = field(default_factory=list)   # "node NAME (OP): message" or builder messages
    engine: bytes | None = field(default=None, repr=False)
    log: list = field(default_factory=list, repr=False)   # every builder message (verbose builds)
    shapes: dict = field(default_factory=dict)   # input -> shape the engine was built for
    pinned: list = field(default_factory=list)   # layers pinned to FP32 (weakly typed TensorRT)

    @property
    def ok(self) -> bool:
        return self.parsed and self.built


def _parse(b: Backend, model: onnx.ModelProto, logger):
    trt = b.module
    builder = trt.Builder(logger)
    network = builder.create_network(b.network_flags())
    parser = trt.OnnxParser(network, logger)
    if too_large(model):   # beyond protobuf's 2 GB: the parser reads a file with external data
        with tempfile.TemporaryDirectory() as d:
            write_external(model, Path(d) / "model.onnx", "model.data")
            ok = bool(parser.parse_from_file(str(Path(d) / "model.onnx")))
    else:
        ok = bool(parser.parse(model.SerializeToString()))
    errors = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = e.node_name() if hasattr(e, "node_name") else ""
        op = e.node_operator() if hasattr(e, "node_operator") else ""
        if not node and 0 <= e.node() < len(model.graph.node):   # TensorRT 8.5: only the node index
            node, op = model.graph.node[e.node()].name, model.graph.node[e.node()].op_type
        errors.append(f"node {node or '?'} ({op or '?'}): {e.desc()}")
    return builder, network, parser, ok, errors


def _profile(builder, network, config, shapes: dict | None) -> dict:
    """An optimization profile fixing dynamic inputs (``shapes[name]``: the user's, else the data's the
    file records, else batch 1 and 640);
    returns the shape of every input the engine is built for."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    built = {t.name: tuple(int(d) for d in t.shape) for t in inputs}
    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    if not dynamic:
        return built
    profile = builder.create_optimization_profile()
    for t in dynamic:
        dims = (shapes or {}).get(t.name)
        if dims is None:
            dims = tuple(d if d >= 0 else (1 if k == 0 else 640) for k, d in enumerate(t.shape))
        dims = tuple(int(d) for d in dims)
        profile.set_shape(t.name, dims, dims, dims)
        built[t.name] = dims
    config.add_optimization_profile(profile)
    return built


def pinned_layers(model: onnx.ModelProto) -> list:
    """The nodes the file's FP16 plan keeps in FP32 (metadata ``qdq_fp32_nodes``): on weakly typed
    TensorRT they are pinned with layer precisions, as ``--layerPrecisions`` does in trtexec."""
    meta = metadata(model)
    return [n for n in meta.get("qdq_fp32_nodes", "").split(",") if n]


def pin_fp32(b: Backend, network, config, names) -> list:
    """Weakly typed TensorRT (8.x/10.x): the layers named ``names`` (the parser names a node's layer
    after it) computed and output in FP32, with OBEY_PRECISION_CONSTRAINTS, so ``--fp16`` cannot move them
    to FP16.  Returns the names found in the network."""
    trt, wanted, found = b.module, set(names), []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in wanted:
            layer.precision = trt.float32
            for k in range(layer.num_outputs):
                layer.set_output_type(k, trt.float32)
            found.append(layer.name)
    if found:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return found


@contextlib.contextmanager
def gc_paused():
    """No cyclic garbage collection while TensorRT runs: it calls back into Python (the logger) while
    holding its own lock, and a collection started there freed a TensorRT object of an earlier build
    whose destructor waits for that lock (a deadlock, seen with TensorRT-RTX in CI)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def build(model: onnx.ModelProto, precision: str = "int8", shapes: dict | None = None, backend: Backend | None = None,
          timing_cache: Path | None = None, verbose: bool = False, pins=None) -> CheckResult:
    """Parse and build ``model`` into a serialized engine (see :func:`_build`), the garbage collector
    paused meanwhile (:func:`gc_paused`)."""
    with gc_paused():
        return _build(model, precision, shapes, backend, timing_cache, verbose, pins)


def _build(model: onnx.ModelProto, precision: str, shapes: dict | None, backend: Backend | None,
           timing_cache: Path | None, verbose: bool, pins) -> CheckResult:
    """Parse and build ``model`` into a serialized engine.  ``precision`` sets the builder flags of
    weakly typed TensorRT (``fp16``: FP16; ``int8``: INT8 + FP16) and ``pins`` (default: the file's
    :func:`pinned_layers`) the layers kept FP32 there; strongly typed APIs take the precision from the
    graph.  ``shapes`` maps dynamic inputs to the shape to build for.  With ``verbose`` the result
    keeps every builder message (the engine's layer list among them)."""
    b = backend or load_backend()
    trt = b.module
    logger = logger_for(trt, verbose)
    builder, network, parser, parsed, errors = _parse(b, model, logger)
    result = CheckResult(b.name, b.version, parsed, False, errors)
    if not parsed:
        return result
    config = builder.create_builder_config()
    b.configure(config, precision)
    if not b.strongly_typed:
        result.pinned = pin_fp32(b, network, config, pinned_layers(model) if pins is None else pins)
    cache = None
    if timing_cache is not None and not b.rtx and hasattr(config, "create_timing_cache"):  # no-op in RTX
        blob = timing_cache.read_bytes() if timing_cache.exists() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=True)
    result.shapes = _profile(builder, network, config, {**recorded_shapes(model), **(shapes or {})})
    engine = builder.build_serialized_network(network, config)
    result.log = logger.lines
    if engine is None:
        result.errors += logger.messages or ["the builder returned no engine"]
        if any("with this name have different constant values" in e for e in result.errors):
            result.errors.append("hint: the model gives two dynamic dims one name (PaddlePaddle's '?'), so TensorRT "
                                 "takes them as one size; qdq quantize names them apart, or build with equal sizes")
        return result
    result.built, result.engine = True, bytes(engine)
    if cache is not None:
        timing_cache.write_bytes(bytes(cache.serialize()))
    return result


def check_model(model: onnx.ModelProto, shapes: dict | None = None, backend: Backend | None = None,
                verbose: bool = False) -> CheckResult:
    """Does TensorRT parse and build this file?  (INT8 flags on weakly typed TensorRT.)"""
    return build(model, "int8", shapes, backend, verbose=verbose)


def pin_args(names) -> list:
    """trtexec's form of :func:`pin_fp32`: precision and output types obeyed per named layer."""
    if not names:
        return []
    spec = ",".join(f"{n}:fp32" for n in names)
    return ["--precisionConstraints=obey", f"--layerPrecisions={spec}", f"--layerOutputTypes={spec}"]


def trtexec_lines(float_onnx: str, quant_onnx: str, shapes: dict | None, fp16_onnx: str | None = None,
                  quant_fp16_onnx: str | None = None, pins=(), float_pins=()) -> list[str]:
    """trtexec commands that build the same two engines: TensorRT 8.5/8.6/10.x flags (Jetson), the
    layers the FP16 plan keeps in FP32 pinned (``pins`` for the Q/DQ file, ``float_pins`` for the float
    model), and, when the FP16 files are given, the strongly typed TensorRT 11 form."""
    shape_arg = []
    if shapes:
        spec = ",".join(f"{k}:{'x'.join(str(d) for d in v)}" for k, v in shapes.items())
        shape_arg = [f"--minShapes={spec}", f"--optShapes={spec}", f"--maxShapes={spec}"]
    cmds = [["trtexec", f"--onnx={float_onnx}", "--fp16", *pin_args(float_pins), "--saveEngine=fp16.engine"],
            ["trtexec", f"--onnx={quant_onnx}", "--int8", "--fp16", *pin_args(pins), "--saveEngine=int8.engine"]]
    if fp16_onnx:
        cmds += [["trtexec", f"--onnx={fp16_onnx}", "--stronglyTyped", "--saveEngine=fp16.engine"],
                 ["trtexec", f"--onnx={quant_fp16_onnx or quant_onnx}", "--stronglyTyped", "--saveEngine=int8.engine"]]
    return [" ".join(shlex.quote(a) for a in cmd + shape_arg) for cmd in cmds]


@dataclass
class Engines:
    fp16: Path
    int8: Path
    backend: str
    version: str
    shapes: dict
    trtexec: list
    fp16_bytes: int = 0
    int8_bytes: int = 0
    int8_layers: dict | None = None   # the INT8 engine's layer view (qdq.trt.layers), when readable


def build_engines(float_model, quant_model, workdir: Path, shapes: dict, fp16=None,
                  backend: Backend | None = None) -> Engines:
    """Build the FP16 and the INT8 engine (see module doc for the precision per API) into ``workdir``
    at the input ``shapes`` ({input: dims}), sharing one timing cache there.  Strongly typed builds
    need ``fp16``: a callable (model, keep_names or None) → the model's FP16 cast keeping those nodes
    FP32 (the caller's choice, e.g. :func:`qdq.measure.autocast.fp16_model` on its data)."""
    b = backend or load_backend()
    fm = float_model if isinstance(float_model, onnx.ModelProto) else load_model(float_model)
    qm = quant_model if isinstance(quant_model, onnx.ModelProto) else load_model(quant_model)
    workdir.mkdir(parents=True, exist_ok=True)
    cache = workdir / "timing.cache"
    fp16_src, q_src, written = fm, qm, {}
    pins = pinned_layers(qm)
    float_name = str(float_model) if not isinstance(float_model, onnx.ModelProto) else "float.onnx"
    if not set(pins) <= {node.name for node in fm.graph.node}:   # unnamed nodes: pin qdq's names
        fm = fp16_src = prepare(fm, metadata(qm).get("qdq_target", "trt10"))
        float_name = written["float.named.onnx"] = str(save_model(fm, workdir / "float.named.onnx", overwrite=True))
    names = {node.name for node in fm.graph.node}
    float_pins = [n for n in pins if n in names]
    if b.strongly_typed:  # precision lives in the graph: FP16 casts of both (Q/DQ kept INT8)
        if fp16 is None:
            raise QdqError(f"{b.name} builds strongly typed networks: build_engines needs the fp16 cast (fp16=)")
        fp16_src = fp16(fm, None)
        has_fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in qm.graph.initializer)
        q_src = qm if has_fp16 else fp16(qm, pins or None)
        for label, m in (("fp16.onnx", fp16_src), ("int8_fp16.onnx", q_src)):
            written[label] = str(save_model(m, workdir / label, overwrite=True))
    out = {}
    view = None
    for label, model, precision, pin in (("fp16", fp16_src, "fp16", float_pins), ("int8", q_src, "int8", pins)):
        res = build(model, precision, shapes, b, cache, verbose=label == "int8", pins=pin)
        if not res.ok:
            raise QdqError(f"TensorRT could not build the {label} engine: {'; '.join(res.errors[:3])}")
        path = workdir / f"{label}.engine"
        tmp = path.with_suffix(".engine.tmp")
        tmp.write_bytes(res.engine)
        tmp.replace(path)
        out[label] = path
        if label == "int8":
            try:
                view = engine_view(model, parse_log(res.log), len(res.engine)).to_dict()
            except EngineLogError:   # the sizes stand without the breakdown
                view = None
    lines = trtexec_lines(float_name, str(quant_model) if not isinstance(quant_model, onnx.ModelProto) else "int8.onnx",
                          shapes, written.get("fp16.onnx"), written.get("int8_fp16.onnx"), pins, float_pins)
    return Engines(out["fp16"], out["int8"], b.name, b.version, shapes, lines,
                   out["fp16"].stat().st_size, out["int8"].stat().st_size, view)


def built_view(model, shapes: dict | None = None) -> tuple:
    """Build ``model`` ahead of time with TensorRT-RTX (or the TensorRT found) and read its layers
    (:func:`qdq.trt.layers.engine_view`): ``(view, None)``; ``(None, None)`` when no TensorRT is
    installed; ``(None, why)`` when the parse or build fails (its first error, one line)."""
    try:
        backend = load_backend()
    except QdqError:
        return None, None
    res = check_model(model, shapes, backend=backend, verbose=True)
    if not res.ok:
        first = (res.errors or ["no engine"])[0]
        return None, f"{backend.name} {backend.version} could not {'build' if res.parsed else 'parse'} it: {first}"
    return engine_view(model, parse_log(res.log), len(res.engine)), None
