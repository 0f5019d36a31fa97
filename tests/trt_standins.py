"""Stand-ins for NVIDIA's ``tensorrt`` Python module of TensorRT 8.5, 8.6, 10.3 and 11.0.

The full TensorRT is not on PyPI and needs a GPU to build; TensorRT-RTX's real ONNX parser and
builder run here on a CPU.  Each stand-in forwards to them, but exposes exactly the API NVIDIA's own
sources give that version (``fixtures/tensorrt_api.json``: the names its pybind11 bindings register and
the enum values of its headers), so a call qdq makes that the version does not have fails here as
it would there, and enum values are the real ones (11.x's ``STRONGLY_TYPED`` is 0, and bit 1 is
``PREFER_JIT_PYTHON_PLUGINS``).  On top, the documented behaviour by which versions differ:

* 8.x: the ONNX parser refuses a network created without ``1 << EXPLICIT_BATCH``;
* 8.5 (JetPack 5.1): the parser takes opset 13–17 and FP32 Q/DQ scales only and does not know the
  ops added in 8.6 (LayerNormalization, …); up to 8.6 a ParserError has ``node()`` but no
  ``node_name()`` (the 8.6 bindings do not register it);
* layer precisions (``ILayer.precision``, ``set_output_type``; 8.x/10.x) are recorded in ``calls``:
  TensorRT-RTX underneath is strongly typed and has neither.

A stand-in has no ``set_compute_capability`` (the full TensorRT builds for the local GPU); it sets
SM86 on the TensorRT-RTX config underneath so that the build runs on this CPU.
"""
from __future__ import annotations

import json
import types
from pathlib import Path

import onnx

API = json.loads((Path(__file__).parent / "fixtures" / "tensorrt_api.json").read_text())
TRT85_UNKNOWN_OPS = {"LayerNormalization", "GroupNormalization", "GridSample", "ReverseSequence", "Col2Im"}


class _Enum:
    """An enum namespace with the version's members and values (int() of a member works)."""

    def __init__(self, name: str, members: dict):
        self._name = name
        for k, v in members.items():
            setattr(self, k, v)

    def __repr__(self):
        return f"<stand-in enum {self._name}>"


class _Proxy:
    """Forwards to ``real`` only the names the version's class registers; ``local`` names are
    implemented here (what TensorRT-RTX underneath lacks)."""

    _cls = ""

    def __init__(self, api, real, **local):
        object.__setattr__(self, "_api", api)
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "_local", local)

    def _allowed(self, name):
        return name in self._api["classes"].get(self._cls, ())

    def __getattr__(self, name):
        if name in self._local and self._allowed(name):
            return self._local[name]
        if not self._allowed(name):
            raise AttributeError(f"TensorRT's {self._cls} has no {name!r} in this version")
        return getattr(self._real, name)

    def __setattr__(self, name, value):
        if not self._allowed(name):
            raise AttributeError(f"TensorRT's {self._cls} has no {name!r} in this version")
        setter = self._local.get(f"set:{name}")
        if setter is not None:
            setter(value)
        else:
            setattr(self._real, name, value)


def _key(version: str) -> str:
    key = ".".join(version.split(".")[:2])
    if key not in API:
        raise ValueError(f"no API fixture for TensorRT {version}; have {sorted(k for k in API if k[0] != '_')}")
    return key


def make(version: str):
    """A stand-in ``tensorrt`` module of ``version`` (e.g. "8.5.2", "8.6.1", "10.3.0", "11.0.0")."""
    import tensorrt_rtx_bindings as rtx

    api = API[_key(version)]
    major, minor = (int(x) for x in version.split(".")[:2])
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.calls = calls = {"flags": [], "builder_flags": [], "layer_precision": {}, "output_types": {}}
    for name in ("NetworkDefinitionCreationFlag", "BuilderFlag", "DataType"):
        setattr(mod, name, _Enum(name, api["enums"][name]))
    mod.float32, mod.float16, mod.int8 = (api["enums"]["DataType"][k] for k in ("FLOAT", "HALF", "INT8"))
    mod.Logger, mod.ILogger, mod.ProfilingVerbosity = rtx.Logger, rtx.ILogger, rtx.ProfilingVerbosity
    classes = _classes(api, rtx, mod, calls, major, minor)
    mod.Builder, mod.OnnxParser = classes
    missing = [n for n in ("Builder", "OnnxParser", "Logger", "ILogger", "ProfilingVerbosity", "float32")
               if n not in api["module"]]
    assert not missing, f"the fixture says TensorRT {version} lacks {missing}"
    return mod


def _classes(api, rtx, mod, calls, major, minor):
    class Layer(_Proxy):
        _cls = "ILayer"

    class Network(_Proxy):
        _cls = "INetworkDefinition"

    class Config(_Proxy):
        _cls = "IBuilderConfig"

    def layer(real):
        def set_precision(dtype):
            calls["layer_precision"][real.name] = dtype

        def set_output_type(index, dtype):
            calls["output_types"][(real.name, index)] = dtype
        return Layer(api, real, **{"set:precision": set_precision, "set_output_type": set_output_type})

    class Builder(_Proxy):
        _cls = "Builder"

        def __init__(self, logger):
            real = rtx.Builder(logger)
            super().__init__(api, real, create_network=self._network, create_builder_config=self._config,
                             build_serialized_network=lambda n, c: real.build_serialized_network(n._real, c._real))

        def _network(self, flags=0):
            calls["flags"].append(flags)
            net = Network(api, self._real.create_network(0), get_layer=None)
            net._local["get_layer"] = lambda i: layer(net._real.get_layer(i))
            net._local["flags"] = flags
            return net

        def _config(self):
            real = self._real.create_builder_config()
            real.num_compute_capabilities = 1
            real.set_compute_capability(rtx.ComputeCapability.SM86, 0)
            return Config(api, real, set_flag=calls["builder_flags"].append)

    class ParserError(_Proxy):
        _cls = "ParserError"

    class OnnxParser(_Proxy):
        _cls = "OnnxParser"

        def __init__(self, network, logger):
            super().__init__(api, rtx.OnnxParser(network._real, logger), parse=self._parse,
                             get_error=lambda i: self._local["errors"][i], errors=[])
            self._local["network"] = network

        @property
        def num_errors(self):
            return len(self._local["errors"])

        def _fail(self, desc, node=-1, name=""):
            self._local["errors"].append(ParserError(api, None, desc=lambda: desc, node=lambda: node,
                                                     node_name=lambda: name, node_operator=lambda: "",
                                                     code=lambda: 1))
            return False

        def _parse(self, data: bytes) -> bool:
            net_flags = self._local["network"]._local["flags"]
            if major < 10 and not net_flags & (1 << mod.NetworkDefinitionCreationFlag.EXPLICIT_BATCH):
                return self._fail("This version of the ONNX parser only supports TensorRT INetworkDefinitions with "
                                  "an explicit batch dimension. Please ensure the network was initialized with the "
                                  "kEXPLICIT_BATCH flag.")
            if (major, minor) == (8, 5):
                problem = _trt85_problem(onnx.load_from_string(data))
                if problem:
                    return self._fail(*problem)
            if self._real.parse(data):
                return True
            for k in range(self._real.num_errors):
                e = self._real.get_error(k)
                self._fail(e.desc(), e.node(), e.node_name())
            return False

    return Builder, OnnxParser


def _trt85_problem(model) -> tuple | None:
    """(description, node index, node name) of what TensorRT 8.5's parser refuses, or None."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if not 13 <= opset <= 17:
        return (f"Unsupported ONNX opset {opset} (TensorRT 8.5 supports 13 to 17)",)
    inits = {t.name: t for t in model.graph.initializer}
    for i, n in enumerate(model.graph.node):
        if n.op_type in TRT85_UNKNOWN_OPS:
            return f"No importer registered for op: {n.op_type}", i, n.name
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale = inits.get(n.input[1])
            if scale is not None and scale.data_type != onnx.TensorProto.FLOAT:
                return "Assertion failed: scale must be FP32", i, n.name
    return None
