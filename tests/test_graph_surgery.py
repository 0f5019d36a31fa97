"""Graph surgery and precision casting (issue: every TensorRT target holds).  Each test uses a graph
that broke the earlier rewrite: unnamed and repeated node names, BatchNorm on a rank-2 tensor, an
FP16 source model, a weight read with two layouts, a YOLO-style head with Range/Shape/NMS under the
FP16 remainder, and a graph whose FP16 cast loses the signal."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from clitools import run_qdq
from qdq.calib.session import run_session, session_for
from qdq.graph.precision import runnable
from qdq.measure.comparison import compare
from qdq.errors import QdqError
from qdq.report.inspection import inspect_model
from qdq.measure.metrics import sqnr_db
from qdq.pipeline import quantize
from qdq.graph.surgery import verify
from qdq.trt.backend import check_model

RNG = np.random.default_rng(0)


def _w(*shape, scale=0.2):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _data(tmp_path, name, shape, n=8, scale=1.0, dtype=np.float32):
    folder = tmp_path / name
    folder.mkdir()
    for k in range(n):
        np.savez(folder / f"{k}.npz", x=(RNG.standard_normal((1, *shape)) * scale).astype(dtype))
    return folder


def _run(model, feed):
    sess = session_for(runnable(model))
    return run_session(sess, feed, "test")


def test_unnamed_and_repeated_node_names(effnet):
    """The Python API takes a ModelProto as is: nodes without names (KeyError 'Conv->…' before) and
    repeated names (the wrong node re-wired before) must quantize exactly like the named model."""
    named = onnx.load(str(effnet.model))
    blank = onnx.ModelProto()
    blank.CopyFrom(named)
    for i, n in enumerate(blank.graph.node):
        n.name = "" if i % 2 else "layer"          # half unnamed, the other half all called "layer"
    a = quantize(named, effnet.calib, preprocess=effnet.preprocess, limit=8, quiet=True)
    b = quantize(blank, effnet.calib, preprocess=effnet.preprocess, limit=8, quiet=True)
    assert len(b.summary.quantized_layers) == len(a.summary.quantized_layers) == len(set(b.summary.quantized_layers))
    assert any("renamed" in w for w in b.summary.warnings)
    feed = {"input": np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    assert np.array_equal(_run(a.model, feed)["logits"], _run(b.model, feed)["logits"])


def _gemm_bn_model():
    """x (N, 64) → Gemm → BatchNorm (rank 2) → Relu → Gemm → y: BN on an (N, C) tensor."""
    c = 64
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("BatchNormalization", ["h", "g", "beta", "mean", "var"], ["hb"], name="bn"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)]
    inits = [_init("w1", _w(c, c)), _init("b1", np.zeros(c, np.float32)),
             _init("g", np.full(c, 1.5, np.float32)), _init("beta", np.full(c, 0.1, np.float32)),
             _init("mean", (RNG.standard_normal(c) * 0.1).astype(np.float32)), _init("var", np.full(c, 4.0, np.float32)),
             _init("w2", (_w(32, c))), _init("b2", np.zeros(32, np.float32))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])], inits)


def test_batchnorm_on_rank2_tensor_keeps_its_shape(tmp_path):
    m = _gemm_bn_model()
    data = _data(tmp_path, "d", (64,))
    r = quantize(m, data, target="trt11", quiet=True)
    feed = {"x": RNG.standard_normal((4, 64)).astype(np.float32)}
    ref, out = _run(m, feed)["y"], _run(r.model, feed)["y"]
    assert out.shape == ref.shape == (4, 32)                    # (32, 4, 32) before: broadcast by a rank-4 default
    assert sqnr_db(ref, out) > 25
    used = {i for n in r.model.graph.node for i in n.input}
    assert not [t.name for t in r.model.graph.initializer if t.name not in used]   # the BN's statistics are gone
    assert not [n for n in r.model.graph.node if n.op_type == "BatchNormalization"]


def test_fp16_source_model_gives_valid_trt10_and_trt8_files(effnet, tmp_path):
    """An FP16 model: Q/DQ before opset 19 take FP32 scales, so it is quantized in FP32 inside and
    keeps its FP16 inputs and outputs (before: FP16 input with an FP32 scale, an invalid file)."""
    from qdq.targets import prepare
    from qdq.graph.precision import cast_float

    f32 = prepare(str(effnet.model))
    half = cast_float(f32, np.float16, io_types={"input": np.float16, "logits": np.float16})
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for target in ("trt10", "trt8"):
        r = quantize(half, effnet.calib, preprocess=effnet.preprocess, target=target, limit=8, quiet=True)
        onnx.checker.check_model(r.model, full_check=True)
        assert r.model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
        scales = [t for t in r.model.graph.initializer if t.name.endswith("_scale")]
        assert scales and all(t.data_type == TensorProto.FLOAT for t in scales)
        out = _run(r.model, {"input": x.astype(np.float16)})["logits"]
        assert out.dtype == np.float16
        assert sqnr_db(_run(f32, {"input": x})["logits"], out.astype(np.float32)) > 12
        assert check_model(r.model).ok


def test_weight_read_with_two_layouts_gets_one_copy_per_axis(tmp_path):
    """One weight W (16, 16, 3, 3) read by a Conv (output channels on axis 0) and a ConvTranspose
    (axis 1), with INT8 deconvolution asked for: each layer needs its own per-channel
    DequantizeLinear."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["a"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"], name="relu"),
             helper.make_node("ConvTranspose", ["ar", "W"], ["y"], name="deconv", pads=[1, 1, 1, 1])]
    w = (RNG.standard_normal((16, 16, 3, 3)) * np.linspace(0.05, 2, 16)[None, :, None, None]).astype(np.float32)
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 12, 12])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 12])], [_init("W", w)])
    r = quantize(m, _data(tmp_path, "d", (16, 12, 12)), quiet=True, int8_deconv=True)
    dqs = {n.attribute[0].i for n in r.model.graph.node if n.op_type == "DequantizeLinear" and n.attribute}
    assert dqs == {0, 1}
    assert not [f for f in inspect_model(r.model).findings if f.rule == "QDQ005"]
    feed = {"x": RNG.standard_normal((1, 16, 12, 12)).astype(np.float32)}
    assert sqnr_db(_run(m, feed)["y"], _run(r.model, feed)["y"]) > 25


def _yolo_head():
    """A YOLO-style head: conv features, an anchor grid from Shape → Cast → Range (float), a Reshape
    driven by Shape, Resize with float scales, and NonMaxSuppression on the decoded boxes."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["f1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["f1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["f2"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["f2"], ["shp"], name="shape"),
        helper.make_node("Gather", ["shp", "i3"], ["w_int"], name="gather", axis=0),
        helper.make_node("Cast", ["w_int"], ["w_f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Range", ["zero", "w_f", "one"], ["grid"], name="range"),
        helper.make_node("Add", ["f2", "grid"], ["g2"], name="add_grid"),
        helper.make_node("Resize", ["g2", "", "scales"], ["up"], name="resize", mode="nearest"),
        helper.make_node("Conv", ["up", "w3"], ["f3"], name="c3"),
        helper.make_node("Reshape", ["f3", "shape4"], ["flat"], name="reshape"),
        helper.make_node("Transpose", ["flat"], ["boxes_scores"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("Slice", ["boxes_scores", "s0", "s4", "ax2"], ["boxes"], name="slice_boxes"),
        helper.make_node("Slice", ["flat", "s4", "s5", "ax1"], ["scores_raw"], name="slice_scores"),
        helper.make_node("Sigmoid", ["scores_raw"], ["scores"], name="sigmoid"),
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "thr"], ["keep"], name="nms"),
    ]
    inits = [_init("w1", (_w(16, 3, 3, 3))), _init("w2", (_w(16, 16, 3, 3))),
             _init("w3", (_w(16, 16, 1, 1))), _init("i3", np.array(3, np.int64)),
             _init("zero", np.array(0.0, np.float32)), _init("one", np.array(1.0, np.float32)),
             _init("scales", np.array([1, 1, 2, 2], np.float32)), _init("shape4", np.array([1, 16, -1], np.int64)),
             _init("s0", np.array([0], np.int64)), _init("s4", np.array([4], np.int64)), _init("s5", np.array([5], np.int64)),
             _init("ax1", np.array([1], np.int64)), _init("ax2", np.array([2], np.int64)),
             _init("max_out", np.array([20], np.int64)), _init("iou", np.array([0.5], np.float32)),
             _init("thr", np.array([0.3], np.float32))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                  [helper.make_tensor_value_info("g2", TensorProto.FLOAT, [1, 16, 32, 32]),
                   helper.make_tensor_value_info("keep", TensorProto.INT64, ["K", 3])], inits)


def test_trt11_remainder_respects_types_on_a_yolo_head(tmp_path):
    m = _yolo_head()
    r = quantize(m, _data(tmp_path, "d", (3, 32, 32)), target="trt11", quiet=True)
    onnx.checker.check_model(r.model, full_check=True)
    typed = onnx.shape_inference.infer_shapes(r.model, strict_mode=True)
    dtype = {v.name: v.type.tensor_type.elem_type for v in list(typed.graph.value_info) + list(typed.graph.input)}
    inits = {t.name: t.data_type for t in r.model.graph.initializer}
    nodes = {n.name: n for n in r.model.graph.node}
    for i in nodes["range"].input:                         # Range takes no FP16 (schema): FP32 in
        assert dtype.get(i, inits.get(i)) == TensorProto.FLOAT
    assert all(dtype.get(i, inits.get(i)) == TensorProto.FLOAT for i in nodes["nms"].input[:2] + nodes["nms"].input[3:])
    assert inits[nodes["resize"].input[2]] == TensorProto.FLOAT         # Resize scales stay FP32
    assert dtype["shp"] == TensorProto.INT64 and dtype["w_int"] == TensorProto.INT64   # integers untouched
    assert dtype[nodes["c2"].input[0]] == TensorProto.FLOAT16           # the rest is FP16
    feed = {"x": RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)}
    out = _run(r.model, feed)
    assert sqnr_db(_run(m, feed)["g2"], out["g2"]) > 20


def _fragile():
    """x → Conv → +2000 → −2000 → Conv: in FP16 the +2000 rounds the signal away (step 1 at 2000);
    the FP16 cast alone destroys the output, though every node's range fits FP16."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["a", "big"], ["up"], name="add_big"),
             helper.make_node("Sub", ["up", "big"], ["down"], name="sub_big"),
             helper.make_node("Relu", ["down"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="c2", pads=[1, 1, 1, 1])]
    inits = [_init("w1", (_w(16, 16, 3, 3, scale=0.05))), _init("b1", np.zeros(16, np.float32)),
             _init("big", np.array(2000.0, np.float32)), _init("w2", (_w(16, 16, 3, 3))),
             _init("b2", np.zeros(16, np.float32))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])], inits)


def test_fp16_remainder_keeps_fp32_where_fp16_costs(tmp_path):
    from qdq.graph.precision import cast_float

    m = _fragile()
    data = _data(tmp_path, "d", (16, 16, 16))
    feed = {"x": RNG.standard_normal((1, 16, 16, 16)).astype(np.float32)}
    ref = _run(m, feed)["y"]
    assert sqnr_db(ref, _run(cast_float(m, np.float16), feed)["y"]) < 10     # a blind FP16 cast loses the output
    r10 = quantize(m, data, target="trt10", quiet=True)
    r11 = quantize(m, data, target="trt11", quiet=True)
    assert {"sub_big", "add_big"} <= set(r11.summary.fp32_nodes)
    db10, db11 = sqnr_db(ref, _run(r10.model, feed)["y"]), sqnr_db(ref, _run(r11.model, feed)["y"])
    assert db11 > db10 - 1.0, (db10, db11)
    # compare --reference fp16 measures against the same precision-aware FP16 cast, and its JSON has no sentinels
    res = compare(m, r10.model, data, reference="fp16", quiet=True, budget=False)
    assert res.outputs[0].fp16_vs_fp32["sqnr_db"] > 30
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    q = tmp_path / "q.onnx"
    onnx.save(r10.model, q)
    out = run_qdq("compare", path, q, "--data", data, "--reference", "fp16", "--json", "-q")
    assert out.returncode == 0, out.stderr
    assert "-999" not in out.stdout and json.loads(out.stdout)["outputs"][0]["fp16_vs_fp32"]["sqnr_db"] > 30


def test_a_pass_that_breaks_the_graph_is_an_internal_error_naming_it():
    m = _fragile()
    bad = onnx.ModelProto()
    bad.CopyFrom(m)
    bad.graph.node[1].input[1] = "w1"            # Add of a (1,16,16,16) tensor and a (16,16,3,3) weight
    with pytest.raises(QdqError, match=r"internal error in pass 'test pass'.*add_big"):
        verify(bad, "test pass")
