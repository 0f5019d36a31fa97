"""Sessions borrow their weights from one store: equal contents are lent once, different contents under
one name never confused, entries gone with the sessions that read them, outputs as a plain session's."""
import gc

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdq.calib.session import run_session, session_for, shared_weights


def _matmul(w: np.ndarray) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[1]])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g", [x], [y],
                          [numpy_helper.from_array(w, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_equal_weights_are_lent_once_and_different_ones_apart():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)   # 16 KiB: lent
    x = {"x": rng.standard_normal((1, 64)).astype(np.float32)}
    with shared_weights() as store:
        a, b = session_for(_matmul(w)), session_for(_matmul(w.copy()))
        assert store.nbytes == w.nbytes                        # one copy for two sessions
        c = session_for(_matmul(w * 2))                        # same name, other contents
        assert store.nbytes == 2 * w.nbytes
        np.testing.assert_allclose(run_session(a, x, "s")["y"], x["x"] @ w, rtol=1e-5)
        np.testing.assert_allclose(run_session(b, x, "s")["y"], x["x"] @ w, rtol=1e-5)
        np.testing.assert_allclose(run_session(c, x, "s")["y"], x["x"] @ (w * 2), rtol=1e-5)
        del a, b
        gc.collect()
        assert store.nbytes == w.nbytes                        # only what a live session reads
        del c
        gc.collect()
        assert store.nbytes == 0


def test_a_session_outside_a_store_keeps_its_weights_alive():
    w = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096
    sess = session_for(_matmul(w))
    gc.collect()
    x = {"x": np.ones((1, 64), np.float32)}
    np.testing.assert_allclose(run_session(sess, x, "s")["y"], x["x"] @ w, rtol=1e-5)


def test_a_graph_exported_for_a_session_carries_no_weights_and_computes_the_same():
    from qdq.graph.surgery import export_lent, gs, import_graph

    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    model = _matmul(w)
    graph = import_graph(model)
    extra = gs().Constant("W2", (w * 3).astype(np.float32))          # an array made by a pass
    y2 = gs().Variable("y2", dtype=np.float32, shape=[1, 64])
    graph.nodes.append(gs().Node("MatMul", "mm2", inputs=[graph.inputs[0], extra], outputs=[y2]))
    graph.outputs.append(y2)
    lean, lent = export_lent(graph, model)
    assert sorted(lent) == ["W", "W2"]
    assert all(not t.raw_data for t in lean.graph.initializer if t.name in lent)
    assert lean.ByteSize() < w.nbytes / 4
    x = {"x": rng.standard_normal((1, 64)).astype(np.float32)}
    out = run_session(session_for(lean, lent=lent), x, "s")
    np.testing.assert_allclose(out["y"], x["x"] @ w, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["y2"], x["x"] @ (w * 3), rtol=1e-5, atol=1e-4)
    assert isinstance(graph.tensors()["W2"].values, np.ndarray)     # the graph is left as it was
    np.testing.assert_array_equal(np.asarray(graph.tensors()["W"].values), w)
