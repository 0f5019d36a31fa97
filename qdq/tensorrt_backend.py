"""TensorRT backend: check that TensorRT accepts a Q/DQ ONNX, build FP16 and INT8 engines, run them.

Modules, tried in order and imported lazily: ``tensorrt`` (NVIDIA TensorRT 8.5 … 11.x, builds need a
GPU), ``tensorrt_rtx`` / ``tensorrt_rtx_bindings`` (TensorRT-RTX from PyPI: strongly typed only; its
builder runs ahead of time on a CPU-only machine once a compute capability is set, and it enforces
TensorRT's Q/DQ rules).  Device memory goes through cuda-python (``cuda.bindings.runtime`` or
``cuda.cudart``) or pycuda, whichever is installed.

Precision per API:
* TensorRT < 11 (weakly typed): FP16 engine = FP32 ONNX + BuilderFlag.FP16; INT8 engine = Q/DQ ONNX +
  INT8 and FP16 flags (Q/DQ decide what runs in INT8, the flags allow it).
* TensorRT ≥ 11 and TensorRT-RTX (strongly typed): FP16 engine = the FP16 cast of the model (the cast
  ``--target trt11`` uses); INT8 engine = the Q/DQ ONNX as written (use ``--target trt11`` for an FP16
  remainder).
"""
from __future__ import annotations

import importlib
import json
import shlex
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .errors import QdqError

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


def _logger(trt):
    """An ILogger that keeps warnings and errors, so they can be reported on one line each."""

    class Capture(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages = []

        def log(self, severity, msg):
            if severity in (trt.Logger.ERROR, trt.Logger.INTERNAL_ERROR):
                self.messages.append(msg.strip())

    return Capture()


@dataclass
class CheckResult:
    backend: str
    version: str
    parsed: bool
    built: bool
    errors: list = field(default_factory=list)   # "node NAME (OP): message" or builder messages
    engine: bytes | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.parsed and self.built


def _parse(b: Backend, model: onnx.ModelProto, logger):
    trt = b.module
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = bool(parser.parse(model.SerializeToString()))
    errors = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = e.node_name() if hasattr(e, "node_name") else ""
        op = e.node_operator() if hasattr(e, "node_operator") else ""
        if not node and e.node() >= 0 and e.node() < len(model.graph.node):
            node, op = model.graph.node[e.node()].name, model.graph.node[e.node()].op_type
        errors.append(f"node {node or '?'} ({op or '?'}): {e.desc()}")
    return builder, network, parser, ok, errors


def _profile(builder, network, config, shapes: dict | None) -> None:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    if not dynamic:
        return
    profile = builder.create_optimization_profile()
    for t in dynamic:
        dims = (shapes or {}).get(t.name)
        if dims is None:
            dims = tuple(d if d >= 0 else (1 if k == 0 else 640) for k, d in enumerate(t.shape))
        dims = tuple(int(d) for d in dims)
        profile.set_shape(t.name, dims, dims, dims)
    config.add_optimization_profile(profile)


def build(model: onnx.ModelProto, precision: str = "int8", shapes: dict | None = None, backend: Backend | None = None,
          timing_cache: Path | None = None) -> CheckResult:
    """Parse and build ``model`` into a serialized engine.  ``precision`` sets the builder flags of
    weakly typed TensorRT (``fp16``: FP16; ``int8``: INT8 + FP16); strongly typed APIs take the
    precision from the graph.  ``shapes`` maps dynamic inputs to the shape to build for."""
    b = backend or load_backend()
    trt = b.module
    logger = _logger(trt)
    builder, network, parser, parsed, errors = _parse(b, model, logger)
    result = CheckResult(b.name, b.version, parsed, False, errors)
    if not parsed:
        return result
    config = builder.create_builder_config()
    if hasattr(config, "set_compute_capability"):  # TensorRT-RTX: ahead of time, no GPU needed
        config.num_compute_capabilities = 1
        config.set_compute_capability(trt.ComputeCapability.SM86, 0)
    if not b.strongly_typed:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    if hasattr(trt, "ProfilingVerbosity"):
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    cache = None
    if timing_cache is not None and not b.rtx and hasattr(config, "create_timing_cache"):  # no-op in RTX
        blob = timing_cache.read_bytes() if timing_cache.exists() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=True)
    _profile(builder, network, config, shapes)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        result.errors += logger.messages or ["the builder returned no engine"]
        return result
    result.built, result.engine = True, bytes(engine)
    if cache is not None:
        timing_cache.write_bytes(bytes(cache.serialize()))
    return result


def check_model(model: onnx.ModelProto, shapes: dict | None = None, backend: Backend | None = None) -> CheckResult:
    """Does TensorRT parse and build this file?  (INT8 flags on weakly typed TensorRT.)"""
    return build(model, "int8", shapes, backend)


# ---- engines on a GPU ----

class _Cuda:
    """Minimal device memory and stream API over cuda-python or pycuda."""

    def __init__(self):
        try:
            try:
                from cuda.bindings import runtime as cudart
            except ImportError:
                from cuda import cudart
            self.kind, self.rt = "cuda-python", cudart
            err, count = cudart.cudaGetDeviceCount()
            if int(err) != 0 or count == 0:
                raise QdqError("no CUDA GPU visible (cudaGetDeviceCount); engines can be built with "
                               "TensorRT-RTX here but run only on a GPU")
            err, self.stream = cudart.cudaStreamCreate()
            return
        except ImportError:
            pass
        try:
            import pycuda.autoinit  # noqa: F401
            import pycuda.driver as drv
        except ImportError:
            raise QdqError("no CUDA Python bindings: pip install cuda-python (or pycuda)") from None
        except Exception as e:
            raise QdqError(f"no usable CUDA GPU ({str(e).splitlines()[0][:120]})") from None
        self.kind, self.drv = "pycuda", drv
        self.stream = drv.Stream()

    def alloc(self, nbytes: int):
        if self.kind == "pycuda":
            return self.drv.mem_alloc(max(nbytes, 1))
        err, ptr = self.rt.cudaMalloc(max(nbytes, 1))
        return ptr

    def ptr(self, mem) -> int:
        return int(mem)

    def h2d(self, mem, host: np.ndarray):
        if self.kind == "pycuda":
            self.drv.memcpy_htod_async(mem, host, self.stream)
        else:
            self.rt.cudaMemcpyAsync(mem, host.ctypes.data, host.nbytes,
                                    self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream)

    def d2h(self, host: np.ndarray, mem):
        if self.kind == "pycuda":
            self.drv.memcpy_dtoh_async(host, mem, self.stream)
        else:
            self.rt.cudaMemcpyAsync(host.ctypes.data, mem, host.nbytes,
                                    self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream)

    def handle(self) -> int:
        return self.stream.handle if self.kind == "pycuda" else int(self.stream)

    def sync(self):
        if self.kind == "pycuda":
            self.stream.synchronize()
        else:
            self.rt.cudaStreamSynchronize(self.stream)

    def free(self, mem):
        if self.kind == "pycuda":
            mem.free()
        else:
            self.rt.cudaFree(mem)


class EngineRunner:
    """Runs a serialized engine with the named-tensor API (``execute_async_v3``)."""

    def __init__(self, engine_bytes: bytes, backend: Backend | None = None):
        self.b = backend or load_backend()
        trt = self.b.module
        self.cuda = _Cuda()
        self.logger = _logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise QdqError("TensorRT could not load the engine: " + "; ".join(self.logger.messages[:2]))
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]

    def __call__(self, feed: dict) -> dict:
        trt = self.b.module
        mems = []
        try:
            for name in self.inputs:
                x = np.ascontiguousarray(feed[name].astype(trt.nptype(self.engine.get_tensor_dtype(name))))
                self.context.set_input_shape(name, x.shape)
                mem = self.cuda.alloc(x.nbytes)
                mems.append(mem)
                self.cuda.h2d(mem, x)
                self.context.set_tensor_address(name, self.cuda.ptr(mem))
            host = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                y = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                mem = self.cuda.alloc(y.nbytes)
                mems.append(mem)
                self.context.set_tensor_address(name, self.cuda.ptr(mem))
                host[name] = (y, mem)
            if not self.context.execute_async_v3(self.cuda.handle()):
                raise QdqError("TensorRT execution failed: " + "; ".join(self.logger.messages[:2]))
            for y, mem in host.values():
                self.cuda.d2h(y, mem)
            self.cuda.sync()
            return {n: y.astype(np.float32) for n, (y, _) in host.items()}
        finally:
            for m in mems:
                self.cuda.free(m)

    def latency_ms(self, feed: dict, runs: int = 50) -> float:
        """Median wall time of one inference including transfers, over ``runs`` runs after warm-up."""
        for _ in range(3):
            self(feed)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            self(feed)
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    def layer_precisions(self) -> dict:
        """Count of engine layers per precision, from the engine inspector (needs DETAILED profiling)."""
        inspector = self.engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(self.b.module.LayerInformationFormat.JSON))
        counts = {}
        for layer in info.get("Layers", []):
            if isinstance(layer, dict):
                types = {o.get("Format/Datatype", "") for o in layer.get("Outputs", [])}
                for kind in ("Int8", "Half", "Float"):
                    if any(kind in t for t in types):
                        counts[kind] = counts.get(kind, 0) + 1
                        break
        return counts


def trtexec_lines(float_onnx: str, quant_onnx: str, shapes: dict | None, fp16_onnx: str | None = None,
                  quant_fp16_onnx: str | None = None) -> list[str]:
    """trtexec commands that build the same two engines: TensorRT 8.5/8.6/10.x flags (Jetson), and,
    when the FP16 files are given, the strongly typed TensorRT 11 form."""
    shape_arg = []
    if shapes:
        spec = ",".join(f"{k}:{'x'.join(str(d) for d in v)}" for k, v in shapes.items())
        shape_arg = [f"--minShapes={spec}", f"--optShapes={spec}", f"--maxShapes={spec}"]
    cmds = [["trtexec", f"--onnx={float_onnx}", "--fp16", "--saveEngine=fp16.engine"],
            ["trtexec", f"--onnx={quant_onnx}", "--int8", "--fp16", "--saveEngine=int8.engine"]]
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


def _data_shapes(dataset) -> dict:
    """Input shapes of the first sample (engines are built for the data's shapes)."""
    for _, feed in dataset:
        return {k: tuple(v.shape) for k, v in feed.items()}
    raise QdqError(f"{dataset.path}: contains no samples")


def build_engines(float_model, quant_model, dataset, workdir: Path, shapes: dict | None = None,
                  backend: Backend | None = None, quiet: bool = False) -> Engines:
    """Build the FP16 and the INT8 engine (see module doc for the precision per API) into ``workdir``,
    sharing one timing cache there."""
    from .modelio import load_model
    from .pipeline import fp16_model

    b = backend or load_backend()
    fm = float_model if isinstance(float_model, onnx.ModelProto) else load_model(float_model)
    qm = quant_model if isinstance(quant_model, onnx.ModelProto) else load_model(quant_model)
    shapes = shapes or _data_shapes(dataset)
    workdir.mkdir(parents=True, exist_ok=True)
    cache = workdir / "timing.cache"
    fp16_src, q_src, written = fm, qm, {}
    if b.strongly_typed:  # precision lives in the graph: FP16 casts of both (Q/DQ kept INT8)
        fp16_src = fp16_model(fm, dataset, quiet)
        has_fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in qm.graph.initializer)
        q_src = qm if has_fp16 else fp16_model(qm, dataset, quiet)
        for label, m in (("fp16.onnx", fp16_src), ("int8_fp16.onnx", q_src)):
            from .modelio import save_model

            written[label] = str(save_model(m, workdir / label, overwrite=True))
    out = {}
    for label, model, precision in (("fp16", fp16_src, "fp16"), ("int8", q_src, "int8")):
        res = build(model, precision, shapes, b, cache)
        if not res.ok:
            raise QdqError(f"TensorRT could not build the {label} engine: {'; '.join(res.errors[:3])}")
        path = workdir / f"{label}.engine"
        tmp = path.with_suffix(".engine.tmp")
        tmp.write_bytes(res.engine)
        tmp.replace(path)
        out[label] = path
    lines = trtexec_lines(str(float_model) if not isinstance(float_model, onnx.ModelProto) else "float.onnx",
                          str(quant_model) if not isinstance(quant_model, onnx.ModelProto) else "int8.onnx",
                          shapes, written.get("fp16.onnx"), written.get("int8_fp16.onnx"))
    return Engines(out["fp16"], out["int8"], b.name, b.version, shapes, lines)


def compare_engines(engines: Engines, dataset, runs: int = 50, quiet: bool = False) -> dict:
    """Run both engines on ``dataset`` (needs a GPU): output metrics of INT8 vs FP16 (as
    ``qdq compare``), median latencies, the speed-up, and the layers per precision."""
    from .data import batches
    from .metrics import ErrorAccumulator
    from .progress import progress

    b = load_backend()
    fp16, int8 = EngineRunner(engines.fp16.read_bytes(), b), EngineRunner(engines.int8.read_bytes(), b)
    acc = {o: ErrorAccumulator() for o in fp16.outputs}
    top1 = {o: [0, 0] for o in fp16.outputs}
    first = None
    with progress("running engines", dataset.count(), quiet) as advance:
        for sources, feed in batches(dataset, 1):
            first = first or feed
            ref, q = fp16(feed), int8(feed)
            for o in acc:
                acc[o].add(ref[o], q[o])
                if ref[o].ndim == 2 and ref[o].shape[1] >= 10:
                    top1[o][0] += int((ref[o].argmax(1) == q[o].argmax(1)).sum())
                    top1[o][1] += ref[o].shape[0]
            advance(len(sources))
    lat16, lat8 = fp16.latency_ms(first, runs), int8.latency_ms(first, runs)
    return {"backend": f"{b.name} {b.version}",
            "outputs": {o: {**a.to_dict(), "top1": (top1[o][0] / top1[o][1]) if top1[o][1] else None}
                        for o, a in acc.items()},
            "latency_ms": {"fp16": lat16, "int8": lat8}, "speedup": lat16 / lat8 if lat8 else None,
            "layers": {"fp16": fp16.layer_precisions(), "int8": int8.layer_precisions()},
            "trtexec": engines.trtexec}
