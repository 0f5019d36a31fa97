"""TensorRT acceptance: every quantized real model parses and builds with TensorRT-RTX on CPU,
and files that break TensorRT's Q/DQ rules are rejected by the same check."""

import numpy as np
import onnx
import pytest

from qdq.pipeline import quantize
from qdq.trt.backend import check_model

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
    r = models[("ppocr_det", "trt11")]
    m = r.model
    assert m.opset_import[0].version == 19
    typed = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    dtype = {v.name: v.type.tensor_type.elem_type for v in list(typed.graph.value_info) + list(typed.graph.input)}
    inits = {t.name: t for t in m.graph.initializer}
    scales = {onnx.TensorProto.FLOAT: 0, onnx.TensorProto.FLOAT16: 0}
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            side = n.input[0] if n.op_type == "QuantizeLinear" else n.output[0]
            side_type = inits[side].data_type if side in inits else dtype[side]
            assert inits[n.input[1]].data_type == side_type, n.name      # a scale has its float side's type
            scales[side_type] += 1
    # the DB head's BatchNorm (running variance 9.8e7) stays FP32; nodes kept FP32 read FP32 Q/DQ, the rest FP16
    assert "p2o.BatchNormalization.1" in r.summary.fp32_nodes
    assert scales[onnx.TensorProto.FLOAT16] > 4 * scales[onnx.TensorProto.FLOAT]
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


# ---- qdq check / qdq trt (issue: TensorRT backend) ----

from clitools import run_qdq  # noqa: E402
from qdq.cli.trt import engines_on  # noqa: E402
from qdq.trt.backend import load_backend  # noqa: E402


def _gpu() -> str | None:
    """Why GPU tests cannot run here, or None when they can."""
    try:
        b = load_backend()
    except Exception as e:
        return str(e)
    if b.rtx:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            return "no cuda-python"
        err, n = cudart.cudaGetDeviceCount()
        return None if int(err) == 0 and n > 0 else "no CUDA GPU"
    return None


def test_check_passes_real_and_names_node_of_planted_invalid(models, tmp_path):
    good = models[("ppocr_det", "trt10")].model
    path = tmp_path / "good.onnx"
    onnx.save(good, path)
    r = run_qdq("check", path, "--target", "trt10")
    assert r.returncode == 0 and "parse ok, build ok" in r.stdout, r.stdout + r.stderr

    def zero_scale(scale, zp):
        scale.CopyFrom(onnx.numpy_helper.from_array(np.array(0.0, np.float32), scale.name))

    bad = _plant(good, zero_scale)
    q = next(n for n in bad.graph.node if n.op_type == "QuantizeLinear")
    bad_path = tmp_path / "bad.onnx"
    onnx.save(bad, bad_path)
    r = run_qdq("check", bad_path, "--json")
    assert r.returncode == 1
    import json

    doc = json.loads(r.stdout)
    assert not doc["parsed"] or not doc["built"]
    assert any(q.input[0] in e for e in doc["errors"]), doc["errors"]     # the failing node is named
    assert any(f["rule"] == "QDQ002" for f in doc["lint"])

    # an op TensorRT does not know: the parse error names the node
    custom = onnx.ModelProto()
    custom.CopyFrom(good)
    custom.graph.node[5].op_type, custom.graph.node[5].domain = "MyCustomOp", "com.example"
    custom.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    cpath = tmp_path / "custom.onnx"
    onnx.save(custom, cpath)
    r = run_qdq("check", cpath)
    assert r.returncode == 1 and custom.graph.node[5].name in r.stdout, r.stdout


def _effnet_engines(prepared, tmp_path, samples):
    """EfficientNet-Lite0 quantized on 16 images, its engines built for ``samples`` held-out images."""
    from qdq.calib.data import Dataset, model_inputs

    ds = prepared("effnet")
    q = quantize(ds.model, ds.calib, preprocess=ds.preprocess, limit=16, quiet=True)
    qpath = tmp_path / "int8.onnx"
    onnx.save(q.model, qpath)
    data = Dataset(ds.val, model_inputs(onnx.load(str(ds.model))), ds.preprocess, limit=samples)
    return q, data, engines_on(ds.model, qpath, data, tmp_path / "engines", quiet=True)


def test_trt_build_serializes_both_engines_on_cpu(prepared, tmp_path):
    _, _, eng = _effnet_engines(prepared, tmp_path, 2)
    assert eng.fp16.stat().st_size > 1e6 and eng.int8.stat().st_size > 1e6
    assert eng.shapes == {"input": (1, 3, 224, 224)}
    assert any("--int8 --fp16" in line for line in eng.trtexec) and any("--fp16" in line for line in eng.trtexec)
    if load_backend().strongly_typed:  # the FP16 remainder files for strongly typed TensorRT were written
        assert (tmp_path / "engines" / "fp16.onnx").exists() and (tmp_path / "engines" / "int8_fp16.onnx").exists()
        assert any("--stronglyTyped" in line for line in eng.trtexec)


@pytest.mark.skipif(_gpu() is not None, reason=f"engine runs need a GPU: {_gpu()}")
def test_engines_match_onnxruntime(prepared, tmp_path):  # pragma: no cover - runs only where a GPU exists
    from qdq.calib.session import run_session, session_for
    from qdq.graph.precision import runnable
    from qdq.measure.metrics import sqnr_db
    from qdq.trt.runner import EngineRunner

    q, data, eng = _effnet_engines(prepared, tmp_path, 4)
    runner, sess = EngineRunner(eng.int8.read_bytes()), session_for(runnable(q.model))
    for src, feed in data:
        assert sqnr_db(run_session(sess, feed, src)["logits"], runner(feed)["logits"]) > 20


def test_trt_compare_without_gpu_is_one_clear_line(prepared, tmp_path):
    if _gpu() is None:
        pytest.skip("a GPU is present")
    ds = prepared("effnet")
    q = quantize(ds.model, ds.calib, preprocess=ds.preprocess, limit=8, quiet=True)
    qpath = tmp_path / "int8.onnx"
    onnx.save(q.model, qpath)
    r = run_qdq("trt", "compare", ds.model, qpath, "--data", ds.val, "--limit", "1", "--workdir", tmp_path / "e",
             "--scale", "1", "--mean", "127,127,127", "--std", "128,128,128", "-q")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ("CUDA" in lines[0] or "GPU" in lines[0]), r.stderr
