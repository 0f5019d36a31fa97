"""LayerNorm → Linear with one channel 100x wider than the rest (as transformers' LayerNorm outputs
have): the per-channel scale moves into the LayerNorm's γ/β and the Linear's weight rows exactly, with
the strength chosen by the joint activation+weight error at the Linear's output."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdq.calib.session import run_session, session_for
from qdq.graph.equalize import smooth_quant
from qdq.graph.precision import runnable
from qdq.measure.comparison import compare
from qdq.pipeline import quantize

T, H, N = 32, 64, 96


def _ln_linear(rng) -> onnx.ModelProto:
    gamma = np.ones(H, np.float32)
    gamma[5] = 100.0
    inits = [numpy_helper.from_array(gamma, "g"), numpy_helper.from_array(rng.standard_normal(H).astype(np.float32) * 0.1, "b"),
             numpy_helper.from_array((rng.standard_normal((H, N)) / np.sqrt(H)).astype(np.float32), "w")]
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["ln"], name="ln", axis=-1),
             helper.make_node("MatMul", ["ln", "w"], ["y"], name="fc")]
    g = helper.make_graph(nodes, "lnfc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, H])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, N])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_layernorm_reparameterisation_is_exact_and_gains_10_db(tmp_path):
    rng = np.random.default_rng(7)
    model = _ln_linear(rng)
    onnx.save(model, tmp_path / "m.onnx")
    (tmp_path / "data").mkdir()
    for k in range(30):
        np.savez(tmp_path / "data" / f"s{k:02d}.npz", x=rng.standard_normal((1, T, H)).astype(np.float32))
    feeds = [dict(np.load(f)) for f in sorted((tmp_path / "data").iterdir())[:8]]
    smoothed, done = smooth_quant(model, feeds, layernorm_only=True)
    assert list(done) == ["ln"] and [x.op_type for x in smoothed.graph.node] == ["LayerNormalization", "MatMul"], "no node added"
    for feed in feeds:
        ref = run_session(session_for(runnable(model)), feed, "x")["y"]
        out = run_session(session_for(runnable(smoothed)), feed, "x")["y"]
        assert np.max(np.abs(out - ref)) <= 1e-5 * np.max(np.abs(ref))
    figs = {}
    for mode in ("off", "auto"):
        q = quantize(tmp_path / "m.onnx", tmp_path / "data", quiet=True, mixed_precision=False, smoothquant=mode)
        figs[mode] = compare(tmp_path / "m.onnx", q.model, tmp_path / "data", quiet=True, budget=False).sqnr
    assert figs["auto"]["low"] >= figs["off"]["high"] + 10.0, figs


def test_massive_activations_are_named_and_their_consumers_decided_together(tmp_path):
    """Token 0 of x carries values 1000x the rest (a high-norm token): the summary names x, and
    mixed precision keeps its two consumers INT8 or floats both; ordinary data names nothing."""
    from qdq.calib.ranges import massive
    from qdq.calib.stats import TensorStats

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((H, H)) / 8).astype(np.float32), k) for k in ("w1", "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="fc1"), helper.make_node("MatMul", ["x", "w2"], ["b"], name="fc2"),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    g = helper.make_graph(nodes, "massive", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, H])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, H])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    (tmp_path / "data").mkdir()
    for k in range(30):
        x = rng.standard_normal((1, T, H)).astype(np.float32)
        x[0, 0, :4] *= 1000.0
        np.savez(tmp_path / "data" / f"s{k:02d}.npz", x=x)
    st = TensorStats("g")
    st.update(rng.standard_normal(100_000).astype(np.float32))
    assert 1.2 < massive(st) < 3.0, "Gaussian values: max about twice the 99th percentile"
    q = quantize(tmp_path / "m.onnx", tmp_path / "data", quiet=True, max_loss_db=0.5, min_int8_share=0.0)
    assert any(w.startswith("massive activations: 'x'") for w in q.summary.warnings), q.summary.warnings
    floated = {f["node"] for f in q.summary.float_layers}
    assert floated in (set(), {"fc1", "fc2"}), floated
