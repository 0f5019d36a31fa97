"""Models users bring: one small synthetic graph per case that broke qdq, each checked on the file
written (onnx's full check, TensorRT-RTX's parse and build, and, with its Q/DQ bypassed, the float
model's outputs)."""
import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from clitools import run_qdq
from qdq.calib.session import run_session, session_for
from qdq.graph.bypass import activations_only, weights_only
from qdq.graph.placement import replace
from qdq.graph.precision import runnable
from qdq.measure.metrics import sqnr_db
from qdq.measure.sensitivity import variant
from qdq.modelio import load_model, save_model
from qdq.pipeline import quantize
from qdq.targets import prepare
from qdq.trt.backend import check_model

RNG = np.random.default_rng(11)
TARGETS = ("trt8", "trt10", "trt11")


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs,
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _w(*shape, scale=0.2, dtype=np.float32):
    return (RNG.standard_normal(shape) * scale).astype(dtype)


def _run(model, feed):
    return run_session(session_for(runnable(model)), feed, "test")


def _unquantized(qmodel, fmodel):
    """The written file with its Q/DQ bypassed: float weights back, activation Q/DQ removed."""
    return weights_only(activations_only(qmodel, prepare(fmodel, {p.key: p.value for p in qmodel.metadata_props}
                                                         .get("qdq_target", "trt10"))))


def _check_written(q, fmodel, feed, shapes=None, fp16=False):
    """The file passes onnx's full check and TensorRT-RTX, and bypassing its Q/DQ gives the float outputs."""
    onnx.checker.check_model(q, full_check=True)
    res = check_model(q, shapes)
    assert res.ok, res.errors
    ref, out = _run(fmodel, feed), _run(_unquantized(q, fmodel), feed)
    for k, v in ref.items():
        assert sqnr_db(v.astype(np.float32), out[k].astype(np.float32)) > (40 if fp16 else 80), k


def _npz(folder, n=24, **shapes_dtypes):
    folder.mkdir()
    for k in range(n):
        np.savez(folder / f"{k:02d}.npz", **{name: RNG.standard_normal(shape).astype(dtype)
                                             for name, (shape, dtype) in shapes_dtypes.items()})
    return folder


@pytest.mark.parametrize("target", TARGETS)
def test_stale_declared_output_shape_is_repaired(tmp_path, target):
    """Declared [1, 8] while the graph computes [2, 2, 16]: passes onnx's own check as shipped; the
    full check of the converted model used to fail in 'preparation'."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
             helper.make_node("Reshape", ["a", "shape"], ["y"], name="reshape")]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
               {"w": _w(16, 16), "shape": np.array([2, 2, 16], np.int64)}, opset=12)
    onnx.checker.check_model(m)
    r = quantize(m, _npz(tmp_path / "d", x=((1, 4, 16), np.float32)), target=target, quiet=True, bias_correction=False)
    assert any("declared shapes" in w and "'y' → [2, 2, 16]" in w for w in r.summary.warnings)
    assert r.placement.quantized_layers
    _check_written(r.model, m, {"x": RNG.standard_normal((1, 4, 16)).astype(np.float32)}, fp16=target == "trt11")


@pytest.mark.parametrize("target", TARGETS)
def test_fp16_model_with_conv_batchnorm(tmp_path, target):
    h = TensorProto.FLOAT16
    inits = {"w": _w(32, 16, 3, 3, dtype=np.float16), "g": RNG.uniform(.5, 1.5, 32).astype(np.float16),
             "b": _w(32, scale=.1, dtype=np.float16), "m": _w(32, scale=.1, dtype=np.float16),
             "v": RNG.uniform(.5, 1.5, 32).astype(np.float16)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn")]
    m = _model(nodes, [helper.make_tensor_value_info("x", h, [1, 16, 8, 8])], [helper.make_tensor_value_info("y", h, [1, 32, 8, 8])],
               inits)
    r = quantize(m, _npz(tmp_path / "d", x=((1, 16, 8, 8), np.float16)), target=target, quiet=True, bias_correction=False)
    assert [n.op_type for n in r.model.graph.node].count("BatchNormalization") == 0
    _check_written(r.model, m, {"x": RNG.standard_normal((1, 16, 8, 8)).astype(np.float16)}, fp16=True)


def test_a_failing_pass_names_the_node_cleanly():
    """The node named in an internal error is the node, not 'conv):'."""
    from qdq.errors import QdqError
    from qdq.graph.surgery import verify

    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape_node")]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], {"shape": np.array([2, 2, 2], np.int64)})
    with pytest.raises(QdqError, match=r"at node 'reshape_node':"):
        verify(m, "test")


def test_scalar_input(tmp_path):
    """A rank-0 input (a threshold, a timestep): one value per sample, no batch axis."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Mul", ["c", "t"], ["y"], name="mul")]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 8, 8]),
                       helper.make_tensor_value_info("t", TensorProto.FLOAT, [])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32, 8, 8])], {"w": _w(32, 16, 3, 3)})
    folder = tmp_path / "d"
    folder.mkdir()
    np.savez(folder / "all.npz", x=RNG.standard_normal((24, 16, 8, 8)).astype(np.float32),
             t=RNG.uniform(.5, 2, 24).astype(np.float32))
    r = quantize(m, folder, quiet=True, bias_correction=False)
    assert r.summary.samples + r.summary.accuracy["held_back_samples"] == 24
    _check_written(r.model, m, {"x": RNG.standard_normal((1, 16, 8, 8)).astype(np.float32),
                                "t": np.asarray(1.5, np.float32)}, shapes={"x": (1, 16, 8, 8)})


def test_fixed_batch_of_four(tmp_path):
    """A model whose batch is fixed at 4 takes 4 rows a sample; a file of 6 rows is a clear error."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1] * 4)]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16, 8, 8])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32, 8, 8])], {"w": _w(32, 16, 3, 3)})
    r = quantize(m, _npz(tmp_path / "d", n=6, x=((16, 16, 8, 8), np.float32)), quiet=True, bias_correction=False)
    assert r.summary.samples + r.summary.accuracy["held_back_samples"] == 24
    _check_written(r.model, m, {"x": RNG.standard_normal((4, 16, 8, 8)).astype(np.float32)})
    onnx.save(m, tmp_path / "b4.onnx")
    bad = _npz(tmp_path / "bad", n=2, x=((6, 16, 8, 8), np.float32))
    r = run_qdq("quantize", tmp_path / "b4.onnx", "--calib", bad, "-o", tmp_path / "q.onnx")
    assert r.returncode == 2 and "has 6 rows; the model takes batches of 4" in r.stderr


def test_sensitivity_keeps_exclusions_of_non_weighted_nodes(tmp_path):
    """``--exclude`` naming a Concat: redoing the placement for a variant (--verify) keeps it."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("Conv", ["x", "w2"], ["b"], name="c2", pads=[1] * 4),
             helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
             helper.make_node("MaxPool", ["cat"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w3"], ["y"], name="c3")]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 4, 4])],
               {"w1": _w(16, 16, 3, 3), "w2": _w(16, 16, 3, 3), "w3": _w(16, 32, 1, 1)})
    onnx.save(m, tmp_path / "m.onnx")
    data = _npz(tmp_path / "d", x=((1, 16, 8, 8), np.float32))
    r = run_qdq("sensitivity", tmp_path / "m.onnx", "--calib", data, "--data", data, "--exclude", "cat", "pool",
                "--verify", "3", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["layers"]) == 3 and all(x["all_but_db"] is not None for x in doc["layers"])


def test_a_variant_makes_its_ranges_for_its_own_placement(tmp_path):
    """A Concat's inputs share one amax only while the Concat's output is quantized: with its consumer
    floated (a sensitivity variant), the small input ``p`` takes its own amax again, as mixed precision
    measures the same placement, not the shared one of the full file."""
    v = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
    nodes = [helper.make_node("MatMul", ["x", "wp"], ["p"], name="mp"), helper.make_node("MatMul", ["x", "wq"], ["q"], name="mq"),
             helper.make_node("MatMul", ["p", "w1"], ["y1"], name="m1"), helper.make_node("MatMul", ["q", "w2"], ["y2"], name="m2"),
             helper.make_node("Concat", ["p", "q"], ["cat"], name="cat", axis=-1),
             helper.make_node("MatMul", ["cat", "w3"], ["y3"], name="m3")]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])], [v("y1"), v("y2"), v("y3")],
               {"wp": _w(16, 16, scale=0.05), "wq": _w(16, 16, scale=2.0), "w1": _w(16, 16), "w2": _w(16, 16), "w3": _w(32, 16)})
    r = quantize(m, _npz(tmp_path / "d", x=((1, 8, 16), np.float32)), quiet=True, bias_correction=False,
                 mixed_precision=False, smoothquant="off")
    assert [set(g) for g in r.placement.groups] == [{"p", "q", "cat"}]
    shared = r.ranges["p"].amax
    assert shared == r.ranges["q"].amax
    m3 = next(i for i, n in enumerate(r.float_model.graph.node) if n.name == "m3")
    out = variant(r, {m3})
    q_of = {n.input[0]: n.input[1] for n in out.graph.node if n.op_type == "QuantizeLinear"}
    scales = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    own = float(scales[q_of["p"]]) * 127
    assert "cat" not in q_of and own < shared / 10
    assert own == pytest.approx(r.book.ranges(replace(r.index, r.placement, {m3: "test"}))["p"].amax, rel=1e-6)


def test_grouped_deconvolution_stays_float_and_its_batchnorm_folds_exactly(tmp_path):
    cin, cout, group = 32, 64, 2
    inits = {"w": _w(cin, cout // group, 3, 3), "g": RNG.uniform(.5, 1.5, cout).astype(np.float32),
             "b": _w(cout, scale=.1), "m": _w(cout, scale=.1), "v": RNG.uniform(.5, 1.5, cout).astype(np.float32),
             "w2": _w(32, cout, 1, 1)}
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["c"], name="deconv", group=group, pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["d"], name="bn"),
             helper.make_node("Conv", ["d", "w2"], ["y"], name="conv")]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 8, 8])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])], inits)
    feed = {"x": RNG.standard_normal((1, cin, 8, 8)).astype(np.float32)}
    folded = prepare(m)
    assert "BatchNormalization" not in [n.op_type for n in folded.graph.node]
    ref, out = _run(m, feed)["y"], _run(folded, feed)["y"]
    assert np.abs(ref - out).max() <= 1e-5 * np.abs(ref).max()
    r = quantize(m, _npz(tmp_path / "d", x=((1, cin, 8, 8), np.float32)), quiet=True, bias_correction=False)
    reasons = {s["node"]: s["reason"] for s in r.summary.skipped}
    assert "grouped ConvTranspose" in reasons["deconv"] and r.summary.quantized_layers == ["conv"]
    assert not [n for n in r.model.graph.node if n.op_type == "DequantizeLinear" and n.attribute and n.attribute[0].i == 1]
    _check_written(r.model, m, feed)


def test_few_samples_say_how_many(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1] * 4)]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])], {"w": _w(32, 16, 3, 3)})
    r = quantize(m, _npz(tmp_path / "d", n=12, x=((1, 16, 8, 8), np.float32)), quiet=True)
    w = next(w for w in r.summary.warnings if w.startswith("only"))
    assert w.startswith("only 12 samples") and "measured on 12" in w
    assert r.summary.accuracy["held_back_samples"] == 12 and not r.summary.accuracy["held_back"]


def test_macs_at_the_data_shapes(tmp_path):
    """Dynamic sequence length calibrated at 16: the MAC share is the one at 16, not at invented dims."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["q"], name="proj"),
             helper.make_node("Transpose", ["q"], ["kt"], name="t", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["att"], name="scores"),
             helper.make_node("MatMul", ["att", "q"], ["y"], name="mix")]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", 64])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seq", 64])], {"w1": _w(64, 64)})
    r = quantize(m, _npz(tmp_path / "d", x=((1, 16, 64), np.float32)), quiet=True, mixed_precision=False)
    seq = 16
    macs = {"proj": seq * 64 * 64, "scores": seq * seq * 64, "mix": seq * seq * 64}
    assert r.summary.mac_shapes == {"x": [1, 16, 64]}
    assert r.summary.int8_mac_share == pytest.approx(sum(macs[n] for n in r.summary.quantized_layers) / sum(macs.values()))
    assert r.macs == {i: macs[r.index.labels[i]] for i in r.macs}


@pytest.mark.parametrize("target", TARGETS)
def test_models_beyond_the_protobuf_limit(tmp_path, monkeypatch, target):
    """The > 2 GB path on a small model (the limit lowered to 50 kB): external data read, every check
    on a file of its own, the output written with its data beside it, the input folder untouched."""
    monkeypatch.setattr("qdq.modelio.PROTOBUF_LIMIT", 50_000)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2", pads=[1] * 4)]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 8, 8])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 8, 8])],
               {"w1": _w(64, 64, 3, 3), "w2": _w(64, 64, 3, 3)})
    src = tmp_path / "in" / "model.onnx"
    src.parent.mkdir()
    on_disk = onnx.ModelProto()
    on_disk.CopyFrom(m)                   # onnx.save_model moves the bytes of what it writes out of the model
    onnx.save_model(on_disk, str(src), save_as_external_data=True, location="model.data", size_threshold=1024)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.parent.iterdir()}
    r = quantize(src, _npz(tmp_path / "d", x=((1, 64, 8, 8), np.float32)), target=target, quiet=True,
                 bias_correction=False)
    out = tmp_path / "out" / "q.onnx"
    out.parent.mkdir()
    save_model(r.model, out)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.parent.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["q.onnx", "q.onnx.data"]
    onnx.checker.check_model(str(out), full_check=True)
    monkeypatch.setattr("qdq.modelio.PROTOBUF_LIMIT", 2 ** 31 - 1)
    _check_written(load_model(out), m, {"x": RNG.standard_normal((1, 64, 8, 8)).astype(np.float32)},
                   fp16=target == "trt11")


@pytest.mark.parametrize("target", TARGETS)
def test_real_recognizer_with_a_stale_output_shape(prepared, target):
    """ddddocr 1.6.1's recogniser (CNN + LSTM, declares [1, seqlen] and computes [T, 1, 8210]) quantizes
    by default on every target: a checked file that TensorRT-RTX parses and builds, reading the
    held-out text lines as the float model reads them.  (At trt8's opset 13 shape inference does not
    reach the output, so nothing disagrees and nothing is replaced.)"""
    from qdq.measure.comparison import compare

    ds = prepared("ddddocr_rec")
    r = quantize(ds.model, ds.calib, preprocess=ds.preprocess, target=target, limit=40, quiet=True)
    assert any("declared shapes" in w for w in r.summary.warnings) == (target != "trt8")
    assert r.summary.accuracy["task"]["name"] == "ctc"
    onnx.checker.check_model(r.model, full_check=True)
    res = check_model(r.model, {"input1": (1, 1, 64, 416)})
    assert res.ok, res.errors
    c = compare(ds.model, r.model, ds.val, preprocess=ds.preprocess, budget=False, quiet=True)
    exact = c.task["figures"]["exact"]
    print(target, c.sqnr, exact)
    assert exact["value"] >= 0.7 and c.task["figures"]["cer"]["value"] < 0.05


def test_external_data_written_without_touching_the_model(tmp_path):
    """write_external leaves the model byte-for-byte as it was (onnx's writer empties it and reading
    back grows protobuf's arena by a copy of the weights each time), puts each large tensor at a 4 KiB
    offset, and ONNX Runtime computes the same outputs from the file; a model's skeleton has no large
    weight in it and converts opset without one."""
    from qdq.modelio import convert_opset, skeleton, write_external

    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
             helper.make_node("ReduceSum", ["a", "axes"], ["y"], name="sum", keepdims=1)]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
               {"w": _w(256, 256), "axes": np.array([1], np.int64)}, opset=13)
    before = m.SerializeToString()
    write_external(m, tmp_path / "m.onnx", "m.data")
    assert m.SerializeToString() == before
    header = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    (w,) = [t for t in header.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    info = {e.key: e.value for e in w.external_data}
    assert w.name == "w" and int(info["offset"]) % 4096 == 0 and int(info["length"]) == 256 * 256 * 4
    import onnxruntime as ort
    x = RNG.standard_normal((1, 256)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, _run(m, {"x": x})["y"], rtol=1e-5)
    bare = skeleton(m)
    assert [t.name for t in bare.graph.initializer] == ["axes"] and "w" in {i.name for i in bare.graph.input}
    up = convert_opset(m, 17)
    assert {t.name for t in up.graph.initializer} == {"w", "axes"} and [i.name for i in up.graph.input] == ["x"]
    np.testing.assert_allclose(_run(up, {"x": x})["y"], got, rtol=1e-5)
