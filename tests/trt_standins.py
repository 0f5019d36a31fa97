"""Stand-ins for NVIDIA's ``tensorrt`` Python module of TensorRT 8.5, 8.6, 10.x and 11.x.

The full TensorRT is not on PyPI and needs a GPU to build; TensorRT-RTX's real ONNX parser and
builder run here on a CPU.  Each stand-in forwards to them and enforces, on top, the documented
contract by which its version differs, so qdq's code path for each version is exercised:

* 8.x: ``create_network`` takes ``1 << EXPLICIT_BATCH`` and the 8.x ONNX parser refuses an
  implicit-batch network ("only supports ... explicit batch dimension"); ``BuilderFlag.FP16`` and
  ``INT8`` exist (weakly typed).
* 8.5 (JetPack 5.1): the parser takes opset 13–17 and FP32 Q/DQ scales only, does not know the ops
  added in 8.6 (LayerNormalization, …), and its ParserError has ``node()`` but no ``node_name()``.
* 10.x: ``EXPLICIT_BATCH`` is deprecated and ignored; ``STRONGLY_TYPED`` and the FP16/INT8 flags exist.
* 11.x: strongly typed only: ``BuilderFlag`` has no FP16 or INT8 and ``EXPLICIT_BATCH`` is gone.

A stand-in has no ``set_compute_capability`` (the full TensorRT builds for the local GPU); it sets
SM86 on the TensorRT-RTX config underneath so that the build runs on this CPU.
"""
from __future__ import annotations

import types

import onnx

TRT85_UNKNOWN_OPS = {"LayerNormalization", "GroupNormalization", "GridSample", "ReverseSequence", "Col2Im"}


class _Flags:
    """An enum-like namespace: attributes with int values, ``int()`` of each works."""

    def __init__(self, **members):
        for k, v in members.items():
            setattr(self, k, v)


class _Error:
    def __init__(self, desc, node=-1, node_name=None):
        self._desc, self._node, self._node_name = desc, node, node_name

    def desc(self):
        return self._desc

    def node(self):
        return self._node

    def code(self):
        return 1


class _NamedError(_Error):   # 8.6 and later name the node
    def node_name(self):
        return self._node_name or ""

    def node_operator(self):
        return ""


def make(version: str):
    """A stand-in ``tensorrt`` module of ``version`` (e.g. "8.5.2", "8.6.1", "10.3.0", "11.0.0")."""
    import tensorrt_rtx_bindings as rtx

    major, minor = (int(x) for x in version.split(".")[:2])
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.Logger, mod.ILogger, mod.ProfilingVerbosity = rtx.Logger, rtx.ILogger, rtx.ProfilingVerbosity
    if major < 10:
        mod.NetworkDefinitionCreationFlag = _Flags(EXPLICIT_BATCH=0, EXPLICIT_PRECISION=1)
    elif major == 10:
        mod.NetworkDefinitionCreationFlag = _Flags(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
    else:
        mod.NetworkDefinitionCreationFlag = _Flags(STRONGLY_TYPED=1)
    mod.BuilderFlag = _Flags(FP16=0, INT8=1, REFIT=3) if major < 11 else _Flags(REFIT=3, DEBUG=4)
    named_errors = (major, minor) >= (8, 6)
    calls = {"flags": [], "builder_flags": []}
    mod.calls = calls   # what qdq asked for, for the tests

    class Network:
        def __init__(self, real, flags):
            self.real, self.flags = real, flags

        def __getattr__(self, name):
            return getattr(self.real, name)

    class Config:
        def __init__(self, real):
            self.real = real
            real.num_compute_capabilities = 1
            real.set_compute_capability(rtx.ComputeCapability.SM86, 0)

        def set_flag(self, flag):
            calls["builder_flags"].append(flag)

        def __getattr__(self, name):
            if name in ("set_compute_capability", "num_compute_capabilities"):
                raise AttributeError(name)
            return getattr(self.real, name)

        def __setattr__(self, name, value):
            if name == "real":
                object.__setattr__(self, name, value)
            else:
                setattr(self.real, name, value)

    class Builder:
        def __init__(self, logger):
            self.real = rtx.Builder(logger)

        def create_network(self, flags=0):
            calls["flags"].append(flags)
            return Network(self.real.create_network(0), flags)

        def create_builder_config(self):
            return Config(self.real.create_builder_config())

        def create_optimization_profile(self):
            return self.real.create_optimization_profile()

        def build_serialized_network(self, network, config):
            return self.real.build_serialized_network(network.real, config.real)

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.real = rtx.OnnxParser(network.real, logger)
            self.errors = []

        def _fail(self, desc, node=-1, name=None):
            self.errors.append((_NamedError if named_errors else _Error)(desc, node, name))
            return False

        def parse(self, data: bytes) -> bool:
            if major < 10 and not self.network.flags & (1 << mod.NetworkDefinitionCreationFlag.EXPLICIT_BATCH):
                return self._fail("This version of the ONNX parser only supports TensorRT INetworkDefinitions with "
                                  "an explicit batch dimension. Please ensure the network was initialized with the "
                                  "kEXPLICIT_BATCH flag.")
            if (major, minor) == (8, 5):
                model = onnx.load_from_string(data)
                opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
                if not 13 <= opset <= 17:
                    return self._fail(f"Unsupported ONNX opset {opset} (TensorRT 8.5 supports 13 to 17)")
                inits = {t.name: t for t in model.graph.initializer}
                for i, n in enumerate(model.graph.node):
                    if n.op_type in TRT85_UNKNOWN_OPS:
                        return self._fail(f"No importer registered for op: {n.op_type}", i, n.name)
                    if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                        scale = inits.get(n.input[1])
                        if scale is not None and scale.data_type != onnx.TensorProto.FLOAT:
                            return self._fail("Assertion failed: scale must be FP32", i, n.name)
            if self.real.parse(data):
                return True
            for k in range(self.real.num_errors):
                e = self.real.get_error(k)
                self.errors.append((_NamedError if named_errors else _Error)(e.desc(), e.node(), e.node_name()))
            return False

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    mod.Builder, mod.OnnxParser = Builder, OnnxParser
    return mod
