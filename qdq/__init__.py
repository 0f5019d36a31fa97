"""qdq: float ONNX → TensorRT-ready INT8 Q/DQ ONNX, calibrated with ONNX Runtime.

>>> import qdq
>>> result = qdq.quantize("model.onnx", "calib_images/", method="mse")
>>> qdq.save_model(result.model, "model.int8.onnx")
"""
__version__ = "0.1.0"


def __getattr__(name):
    # lazy: `import qdq` stays cheap, heavy modules load on first use
    if name in ("quantize", "QuantizeResult", "Summary"):
        from . import pipeline as _q
        return getattr(_q, name)
    if name in ("compare", "CompareResult"):
        from . import comparison as _c
        return getattr(_c, name)
    if name == "save_model":
        from .modelio import save_model
        return save_model
    if name == "Preprocess":
        from .data import Preprocess
        return Preprocess
    if name == "QdqError":
        from .errors import QdqError
        return QdqError
    raise AttributeError(name)
