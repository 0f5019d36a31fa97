"""Outlier Suppression+ shifting (qdq.graph.equalize): a one-sided or off-centre input of Linear layers
is centred per channel, its product with the weights moved into the layers' bias; exact in float, one
INT8 bit more on a uniform [0, a] input, and the Sub fuses into the producer's kernel in TensorRT."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq.calib.session import run_session, session_for
from qdq.graph.equalize import smooth_quant
from qdq.graph.precision import runnable
from qdq.measure.comparison import compare
from qdq.pipeline import quantize

T, K, N = 32, 64, 48


def _model(nodes, inits, x_shape=(1, T, K), y_shape=(1, T, N)) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "shift", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _exact_int8_weight(rng) -> np.ndarray:
    """K×N weights on each column's INT8 grid (max |code| 127): per-channel weight quantization is
    exact, so the output error is the activation's alone."""
    codes = rng.integers(-127, 128, (K, N))
    codes[0] = 127
    return codes * (0.01 / 127)


def _same_function(a: onnx.ModelProto, b: onnx.ModelProto, feeds: list) -> None:
    for feed in feeds:
        ref = run_session(session_for(runnable(a)), feed, "x")["y"]
        out = run_session(session_for(runnable(b)), feed, "x")["y"]
        assert np.max(np.abs(out - ref)) <= 1e-5 * np.max(np.abs(ref))


def _data(tmp_path, model, draw, count=40):
    onnx.save(model, tmp_path / "m.onnx")
    (tmp_path / "data").mkdir()
    for k in range(count):
        np.savez(tmp_path / "data" / f"s{k:02d}.npz", x=draw().astype(np.float32))
    return [dict(np.load(f)) for f in sorted((tmp_path / "data").iterdir())[:8]]


def test_uniform_input_is_centred_exactly_and_gains_one_bit(tmp_path):
    rng = np.random.default_rng(0)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["mm"], name="fc"), helper.make_node("Add", ["mm", "b"], ["y"], name="fc_bias")],
                   {"w": _exact_int8_weight(rng), "b": np.zeros(N)})   # a large bias would lift the output to FP16 rounding
    feeds = _data(tmp_path, model, lambda: rng.uniform(0.0, 3.0, (1, T, K)))
    shifted, done = smooth_quant(model, feeds, layernorm_only=True)
    assert [n.op_type for n in shifted.graph.node] == ["Sub", "MatMul", "Add"], "z·W folded into the existing bias"
    assert [(d.scaled, d.shifted) for d in done.values()] == [(False, True)]
    z = numpy_helper.to_array(next(i for i in shifted.graph.initializer if i.name == shifted.graph.node[0].input[1]))
    assert np.allclose(z, 1.5, atol=0.05), "z = (min + max) / 2 per channel"
    _same_function(model, shifted, feeds)
    figs = {}
    for mode in ("off", "auto"):
        q = quantize(tmp_path / "m.onnx", tmp_path / "data", quiet=True, mixed_precision=False, smoothquant=mode)
        figs[mode] = compare(tmp_path / "m.onnx", q.model, tmp_path / "data", quiet=True, budget=False).sqnr
    # half the levels were spent on [-a, 0): centring doubles the resolution, 20·log10(2) = 6.02 dB
    assert figs["auto"]["low"] >= figs["off"]["high"] + 5.0, figs


def test_a_centred_input_is_left_alone(tmp_path):
    rng = np.random.default_rng(1)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], {"w": _exact_int8_weight(rng)})
    feeds = _data(tmp_path, model, lambda: rng.standard_normal((1, T, K)), count=8)
    assert smooth_quant(model, feeds, layernorm_only=True) == (model, {})


def test_layernorm_takes_the_shift_and_gemm_gains_a_bias(tmp_path):
    """LayerNorm with β = 2 + noise → Gemm without C: z goes into β, z·W into a new C; no node added."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "beta"], ["ln"], name="ln", axis=-1),
             helper.make_node("Gemm", ["ln", "w"], ["y"], name="fc", transB=1)]
    model = _model(nodes, {"g": np.ones(K), "beta": 2.0 + 0.1 * rng.standard_normal(K), "w": rng.standard_normal((N, K)) / 8},
                   x_shape=(T, K), y_shape=(T, N))
    feeds = _data(tmp_path, model, lambda: rng.standard_normal((T, K)), count=8)
    shifted, done = smooth_quant(model, feeds, layernorm_only=True)
    assert [n.op_type for n in shifted.graph.node] == ["LayerNormalization", "Gemm"] and len(shifted.graph.node[1].input) == 3
    assert all(d.shifted for d in done.values())
    beta = numpy_helper.to_array(next(i for i in shifted.graph.initializer if i.name == shifted.graph.node[0].input[2]))
    assert np.abs(beta).max() < 1.0, "LayerNorm output centred"
    _same_function(model, shifted, feeds)


def test_matmul_without_bias_gets_an_add(tmp_path):
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("MatMul", ["r", "w"], ["y"], name="fc")]
    model = _model(nodes, {"w": _exact_int8_weight(rng)})
    feeds = _data(tmp_path, model, lambda: rng.standard_normal((1, T, K)) + 1.0, count=8)
    shifted, _ = smooth_quant(model, feeds, layernorm_only=True)
    assert [n.op_type for n in shifted.graph.node] == ["Relu", "Sub", "MatMul", "Add"]
    assert shifted.graph.node[-1].output[0] == "y", "the graph output keeps its name"
    _same_function(model, shifted, feeds)


@pytest.mark.slow
def test_tensorrt_fuses_the_shift_into_the_gelu_kernel(tmp_path):
    """LayerNorm → Linear → GELU (erf form, as exporters write it) → Linear: the centred file builds with
    TensorRT-RTX into the same layers as the plain one, every GEMM INT8, no reformat."""
    from qdq.trt.backend import built_view

    rng = np.random.default_rng(4)
    f = 4 * K
    inits = {"g": np.ones(K), "beta": 0.1 * rng.standard_normal(K), "w1": rng.standard_normal((K, f)) / 8, "b1": 0.5 * rng.standard_normal(f),
             "w2": rng.standard_normal((f, K)) / 16, "b2": np.zeros(K), "sqrt2": np.sqrt(2.0), "one": 1.0, "half": 0.5}
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "beta"], ["ln"], name="ln", axis=-1),
             helper.make_node("MatMul", ["ln", "w1"], ["h0"], name="fc1"), helper.make_node("Add", ["h0", "b1"], ["h"], name="fc1_bias"),
             helper.make_node("Div", ["h", "sqrt2"], ["gd"], name="g_div"), helper.make_node("Erf", ["gd"], ["ge"], name="g_erf"),
             helper.make_node("Add", ["ge", "one"], ["ga"], name="g_add"), helper.make_node("Mul", ["h", "ga"], ["gm"], name="g_mul"),
             helper.make_node("Mul", ["gm", "half"], ["gelu"], name="g_half"),
             helper.make_node("MatMul", ["gelu", "w2"], ["y0"], name="fc2"), helper.make_node("Add", ["y0", "b2"], ["y"], name="fc2_bias")]
    model = _model(nodes, inits, y_shape=(1, T, K))
    _data(tmp_path, model, lambda: rng.standard_normal((1, T, K)))
    views = {}
    for mode in ("off", "auto"):
        q = quantize(tmp_path / "m.onnx", tmp_path / "data", quiet=True, mixed_precision=False, smoothquant=mode)
        views[mode], why = built_view(q.model)
        assert why is None, why
    assert any(n.op_type == "Sub" for n in q.model.graph.node), "the GELU output was centred"
    plain, centred = views["off"], views["auto"]
    assert [(x.type, x.precision) for x in centred.layers] == [(x.type, x.precision) for x in plain.layers]
    assert centred.reformats == 0 and centred.int8_layers == 2 and not centred.findings


def test_a_layernorm_output_the_user_reads_keeps_its_values(tmp_path):
    """The LayerNorm's output is also a graph output: the shift goes into a Sub, never into β."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "beta"], ["ln"], name="ln", axis=-1),
             helper.make_node("MatMul", ["ln", "w"], ["y"], name="fc")]
    model = _model(nodes, {"g": np.ones(K), "beta": 2.0 + 0.1 * rng.standard_normal(K), "w": _exact_int8_weight(rng)})
    model.graph.output.append(helper.make_tensor_value_info("ln", TensorProto.FLOAT, [1, T, K]))
    feeds = _data(tmp_path, model, lambda: rng.standard_normal((1, T, K)), count=8)
    shifted, done = smooth_quant(model, feeds, layernorm_only=True)
    assert [n.op_type for n in shifted.graph.node] == ["LayerNormalization", "Sub", "MatMul", "Add"]
    for feed in feeds:
        ref = run_session(session_for(runnable(model)), feed, "x")
        out = run_session(session_for(runnable(shifted)), feed, "x")
        for name in ("ln", "y"):
            assert np.max(np.abs(out[name] - ref[name])) <= 1e-5 * np.max(np.abs(ref[name]))


def test_compare_rebuilds_the_equalized_float_model_from_the_file(tmp_path):
    """The file records its equalization (qdq_equalization): compare's halves start from the same float
    model quantize used, so weights alone cost what quantize measured, not the shift's bias."""
    from qdq.modelio import metadata
    from qdq.targets import prepared_for

    rng = np.random.default_rng(6)
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "beta"], ["ln"], name="ln", axis=-1),
             helper.make_node("MatMul", ["ln", "w"], ["mm"], name="fc"), helper.make_node("Add", ["mm", "b"], ["h"], name="fc_bias"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"), helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    gamma = np.ones(K)
    gamma[3] = 30.0
    model = _model(nodes, {"g": gamma, "beta": 2.0 + 0.1 * rng.standard_normal(K), "w": rng.standard_normal((K, N)) / 8,
                           "b": np.zeros(N), "w2": rng.standard_normal((N, N)) / 8})
    _data(tmp_path, model, lambda: rng.standard_normal((1, T, K)))
    q = quantize(tmp_path / "m.onnx", tmp_path / "data", quiet=True, mixed_precision=False)
    assert "qdq_equalization" in metadata(q.model), q.summary.warnings
    rebuilt = prepared_for(onnx.load(tmp_path / "m.onnx"), q.model)
    theirs = {i.name: numpy_helper.to_array(i) for i in q.float_model.graph.initializer}
    ours = {i.name: numpy_helper.to_array(i) for i in rebuilt.graph.initializer}
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    budget = compare(tmp_path / "m.onnx", q.model, tmp_path / "data", quiet=True).budget
    both = q.summary.accuracy["final_db"]
    assert budget["weights_only"]["y"] > both + 1.0 and budget["activations_only"]["y"] > both - 1.0, (budget, both)
    del q.model.metadata_props[next(k for k, p in enumerate(q.model.metadata_props) if p.key == "qdq_equalization")]
    stale = compare(tmp_path / "m.onnx", q.model, tmp_path / "data", quiet=True).budget
    assert stale["weights_only"]["y"] < both - 10.0, "without the record the halves mix two float models"
