"""qdq: float ONNX → TensorRT-ready INT8 Q/DQ ONNX, calibrated with ONNX Runtime.

>>> import qdq
>>> result = qdq.quantize("model.onnx", "calib_images/", method="mse")
>>> qdq.save_model(result.model, "model.int8.onnx")

The stages are subpackages, data flowing one way: :mod:`qdq.calib` (data → numbers),
:mod:`qdq.graph` (graph → graph, with :mod:`qdq.targets`), :mod:`qdq.measure` (graphs → figures),
:mod:`qdq.trt` (graph → engine), :mod:`qdq.report` (figures → people); :mod:`qdq.pipeline` orchestrates,
:mod:`qdq.cli` and :mod:`qdq.demo` sit on top.
"""
import importlib

from .version import __version__

_LAZY = {  # name: module; `import qdq` stays cheap, heavy modules load on first use
    "quantize": "pipeline", "QuantizeResult": "pipeline", "Summary": "pipeline",
    "compare": "measure.comparison", "CompareResult": "measure.comparison",
    "sensitivity": "measure.sensitivity", "save_model": "modelio", "load_model": "modelio",
    "Preprocess": "calib.data", "QdqError": "errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(name)
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
