"""TensorRT acceptance: every quantized real model parses and builds with TensorRT-RTX on CPU,
and files that break TensorRT's Q/DQ rules are rejected by the same check."""

import numpy as np
import onnx
import pytest

from qdq.pipeline import quantize
from qdq.trt_check import check_model

CASES = [("effnet", "trt10"), ("effnet", "trt11"), ("ppocr_det", "trt10"), ("ppocr_det", "trt8"),
         ("ppocr_det", "trt11"), ("ppocr_rec", "trt10"), ("ddddocr_det", "trt10"), ("minilm", "trt10")]


@pytest.fixture(scope="module")
def models(prepared):
    out = {}
    for name, target in CASES:
        ds = prepared(name)
        out[(name, target)] = quantize(ds.model, ds.calib, preprocess=ds.preprocess, target=target,
                                       limit=24, quiet=True)
    return out


def _shapes(name):
    return {"x": (1, 3, 48, 320)} if name == "ppocr_rec" else {"input_ids": (1, 32), "attention_mask": (1, 32)}


@pytest.mark.parametrize("name,target", CASES)
def test_quantized_model_builds_with_tensorrt_rtx(models, name, target):
    r = models[(name, target)]
    ops = [n.op_type for n in r.model.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    res = check_model(r.model, _shapes(name))
    assert res.parsed and res.built, res.errors


def test_trt11_file_is_strongly_typed_fp16(models):
    m = models[("ppocr_det", "trt11")].model
    assert m.opset_import[0].version == 19
    inits = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert inits[n.input[1]].data_type == onnx.TensorProto.FLOAT16
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def _plant(model, edit):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear")
    inits = {t.name: t for t in m.graph.initializer}
    edit(inits[q.input[1]], inits[q.input[2]])
    return m


def test_tensorrt_rejects_nonzero_zero_point_and_zero_scale(models):
    good = models[("ppocr_det", "trt10")].model

    def nonzero_zp(scale, zp):
        zp.CopyFrom(onnx.numpy_helper.from_array(np.array(3, np.int8), zp.name))

    def zero_scale(scale, zp):
        scale.CopyFrom(onnx.numpy_helper.from_array(np.array(0.0, np.float32), scale.name))

    for edit in (nonzero_zp, zero_scale):
        res = check_model(_plant(good, edit))
        assert not res.ok, edit.__name__
