"""Does TensorRT accept this Q/DQ ONNX?  Parse it with TensorRT's ONNX parser and build an engine
ahead of time, without a GPU where the library allows it.

Backends, tried in order (imported lazily): ``tensorrt_rtx_bindings`` / ``tensorrt_rtx``
(TensorRT-RTX from PyPI: its builder runs on a CPU-only machine when a compute capability is set,
and it enforces TensorRT's Q/DQ rules: zero-point 0, positive scales), then ``tensorrt``
(NVIDIA's full TensorRT, which needs a GPU to build).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import onnx

from .errors import QdqError

_MODULES = ("tensorrt_rtx_bindings", "tensorrt_rtx", "tensorrt")


@dataclass
class CheckResult:
    backend: str
    version: str
    parsed: bool
    built: bool
    errors: list = field(default_factory=list)   # "node NAME (OP): message" lines

    @property
    def ok(self) -> bool:
        return self.parsed and self.built


def load_backend():
    """The first importable TensorRT module, or QdqError saying what to install."""
    for name in _MODULES:
        try:
            return name, importlib.import_module(name)
        except ImportError:
            continue
    raise QdqError("no TensorRT found: pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings "
                   "(CPU-only check) or install NVIDIA TensorRT")


def check_model(model: onnx.ModelProto, shapes: dict | None = None) -> CheckResult:
    """Parse and build ``model``.  ``shapes`` maps dynamic inputs to the shape to build for
    (default: every dynamic dim 1, except spatial dims 640)."""
    name, trt = load_backend()
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    parsed = bool(parser.parse(model.SerializeToString()))
    errors = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = e.node_name() if hasattr(e, "node_name") else ""
        op = e.node_operator() if hasattr(e, "node_operator") else ""
        errors.append(f"node {node or e.node()} ({op}): {e.desc()}")
    result = CheckResult(name, getattr(trt, "__version__", "?"), parsed, False, errors)
    if not parsed:
        return result
    config = builder.create_builder_config()
    if hasattr(config, "set_compute_capability"):  # TensorRT-RTX: ahead of time, no GPU needed
        config.num_compute_capabilities = 1
        config.set_compute_capability(trt.ComputeCapability.SM86, 0)
    dynamic = [network.get_input(i) for i in range(network.num_inputs)
               if any(d < 0 for d in network.get_input(i).shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for t in dynamic:
            dims = (shapes or {}).get(t.name) or _default_shape(t.shape)
            profile.set_shape(t.name, dims, dims, dims)
        config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    result.built = engine is not None
    if not result.built:
        result.errors.append("builder failed (see TensorRT's log above)")
    return result


def _default_shape(shape) -> tuple:
    dims = list(shape)
    out = []
    for i, d in enumerate(dims):
        if d >= 0:
            out.append(d)
        elif i == 0:
            out.append(1)
        else:
            out.append(640 if len(dims) == 4 and i >= 2 else 1)
    return tuple(out)
