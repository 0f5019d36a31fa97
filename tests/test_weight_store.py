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


def test_a_checked_export_writes_what_graphsurgeon_writes_without_its_copies():
    """export_graph exports references and then copies each weight in: the file's bytes are those of
    onnx-graphsurgeon's own export (a weight the model holds, an array a pass made, a small constant),
    and the source model's initializers keep their names."""
    from qdq.graph.surgery import export_graph, gs, import_graph, tidy

    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    model = _matmul(w)
    model.ir_version = 8

    def edited():
        graph = import_graph(model)
        graph.tensors()["W"].name = "W_renamed"
        extra = gs().Constant("W2", (w * 3).astype(np.float32))
        small = gs().Constant("b", np.ones(64, np.float32))
        mid, y2 = gs().Variable("mid", dtype=np.float32), gs().Variable("y2", dtype=np.float32, shape=[1, 64])
        graph.nodes += [gs().Node("MatMul", "mm2", inputs=[graph.inputs[0], extra], outputs=[mid]),
                        gs().Node("Add", "add", inputs=[mid, small], outputs=[y2])]
        graph.outputs.append(y2)
        return graph

    ours = export_graph(edited(), model, "test")
    assert [t.name for t in model.graph.initializer] == ["W"]
    graph = edited()
    tidy(graph)   # as export_graph does first
    theirs = gs().export_onnx(graph, do_type_check=False)
    assert [t.name for t in ours.graph.initializer] == ["W_renamed", "W2", "b"]
    assert ours.graph.SerializeToString() == theirs.graph.SerializeToString()


def test_large_weights_are_fed_as_inputs_with_the_same_outputs(monkeypatch):
    """Past FED_BYTES the lent weights are inputs ONNX Runtime reads in place (its
    add_external_initializers copies them): the session holds the store's own arrays, and its outputs
    are bit for bit a plain session's without prepacking (which a session past the limit never had),
    and within float rounding of a prepacked one."""
    import onnxruntime as ort

    import qdq.calib.session as S

    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    model = _matmul(w)
    x = {"x": rng.standard_normal((1, 64)).astype(np.float32)}
    with shared_weights():
        lent = session_for(model)
        monkeypatch.setattr(S, "FED_BYTES", 0)
        fed = session_for(model)
        assert not lent.qdq_fed and sorted(fed.qdq_fed) == ["W"]
        assert [i.name for i in fed.get_inputs()] == ["x", "W"]
        assert fed.qdq_fed["W"] is lent.qdq_lent[1][0]        # one OrtValue: the same buffer
        so = ort.SessionOptions()
        so.add_session_config_entry("session.disable_prepacking", "1")
        plain = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(run_session(fed, x, "s")["y"], plain.run(None, x)[0])
        np.testing.assert_allclose(run_session(fed, x, "s")["y"], run_session(lent, x, "s")["y"], rtol=1e-5, atol=1e-5)
    assert model.graph.initializer[0].HasField("raw_data")    # the caller's model keeps its weights


def test_peek_reads_a_weight_without_keeping_it_in_the_graph():
    """gs caches a lazily read weight in its Constant for the graph's lifetime; passes that read every
    weight read them through surgery.peek, which leaves the Constant lazy."""
    from onnx_graphsurgeon.ir.tensor import LazyValues

    from qdq.graph.surgery import import_graph, peek

    w = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    const = import_graph(_matmul(w)).tensors()["W"]
    np.testing.assert_array_equal(peek(const), w)
    assert isinstance(const._values, LazyValues)
    const.values   # gs's own read keeps it
    assert not isinstance(const._values, LazyValues)


def test_a_large_run_feeds_every_session_even_a_small_one(monkeypatch):
    """feed_large decides for the whole run from the run's weight bytes: a session that borrows little
    (a candidate's INT8 weights) is fed too once the run is large, and not before; outside a store nothing changes."""
    import qdq.calib.session as S

    model = _matmul(np.ones((64, 64), np.float32))    # 16 KiB lent
    monkeypatch.setattr(S, "FED_BYTES", 1 << 20)
    S.feed_large(1 << 30)                               # no store: no effect
    with shared_weights():
        assert not session_for(model).qdq_fed
        S.feed_large(1 << 20)                           # not past the limit
        assert not session_for(model).qdq_fed
        S.feed_large((1 << 20) + 1)
        assert sorted(session_for(model).qdq_fed) == ["W"]
    with shared_weights():                              # a new run starts unfed
        assert not session_for(model).qdq_fed


def test_weight_quantization_leaves_its_input_unless_told():
    """quantize_weight works in one float64 temporary: a float64 weight is its own scratch only with
    overwrite=True; the codes are the same either way (amax from max/−min equals |w|'s)."""
    from qdq.graph.rewrite import quantize_weight

    w = np.random.default_rng(3).standard_normal((8, 5)) * np.arange(1, 6)
    keep = w.copy()
    q, s, _ = quantize_weight(w, 1, np.float32)
    np.testing.assert_array_equal(w, keep)
    np.testing.assert_array_equal(s, (np.abs(keep).max(axis=0) / 127).astype(np.float32))
    q2, s2, _ = quantize_weight(w, 1, np.float32, overwrite=True)
    np.testing.assert_array_equal(q, q2)
    np.testing.assert_array_equal(s, s2)
    assert not np.array_equal(w, keep)


def _conv_bn(tmp_path=None):
    """Conv → BatchNorm → Relu → 1×1 Conv with weights above the lent size: the BN folds (a weight the
    preparation changes), the second Conv's weight ``M`` passes unchanged; with ``tmp_path`` saved with
    its data in an external file."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 16, 3, 3)).astype(np.float32)
    m = rng.standard_normal((32, 64, 1, 1)).astype(np.float32)
    bn = [np.full(64, v, np.float32) for v in (1.5, 0.1, 0.2, 2.0)]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Conv", ["r", "M"], ["y"])]
    inits = [numpy_helper.from_array(a, k) for a, k in zip([w, m, *bn], ["W", "M", "g", "b", "mu", "var"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    if tmp_path is None:
        return model
    onnx.save_model(model, str(tmp_path / "model.onnx"), save_as_external_data=True, location="model.data",
                    size_threshold=0)   # the BatchNorm's 256 bytes too: below the held size, read in
    return tmp_path / "model.onnx"


def test_a_held_model_keeps_its_weights_once_and_is_made_whole_byte_for_byte():
    from qdq.calib.session import fill, held, hold
    from qdq.graph.index import GraphIndex
    from qdq.graph.surgery import import_graph

    model = _conv_bn()
    before = model.SerializeToString()
    x = {"x": np.random.default_rng(4).standard_normal((1, 16, 8, 8)).astype(np.float32)}
    want = run_session(session_for(model), x, "s")["y"]
    with shared_weights() as store:
        skel = hold(model)
        assert model.SerializeToString() == before                      # the caller's model untouched
        big = [t for t in skel.graph.initializer if t.name in ("W", "M")]
        assert all(not t.HasField("raw_data") for t in big)             # the protobuf holds no weight
        assert sum(a.nbytes for a in store.models["qdq-weight-store/held/0"].values()) == (64 * 16 * 9 + 32 * 64) * 4
        m = held(big[1])
        assert not m.flags.writeable and GraphIndex.build(skel).constants["M"] is m   # read, not copied
        assert import_graph(skel).tensors()["M"].values is m
        np.testing.assert_array_equal(run_session(session_for(skel), x, "s")["y"], want)
        assert fill(skel, move=True).SerializeToString() == before     # whole again, byte for byte
        assert store.models["qdq-weight-store/held/0"] == {}             # moved out, not copied
    stale = hold(model)                                                  # outside a run: as it is
    assert stale is model


def test_a_held_reference_outside_its_run_is_an_error_never_a_written_file(tmp_path):
    import pytest

    from qdq.calib.session import held, hold
    from qdq.errors import QdqError
    from qdq.modelio import save_model

    with shared_weights():
        skel = hold(_conv_bn())
    ref = next(t for t in skel.graph.initializer if t.name == "M")
    with pytest.raises(QdqError, match="internal error: the weights of 'M' were read after their run"):
        held(ref)
    with pytest.raises(QdqError, match="internal error: tensor 'W' has no data outside its run; nothing was written"):
        save_model(skel, tmp_path / "out.onnx")
    assert not list(tmp_path.iterdir())


def test_a_run_reads_external_data_into_the_store_not_the_protobuf(tmp_path):
    from qdq.calib.session import held, hold, keep_held
    from qdq.measure.prepared import _user_model
    from qdq.modelio import load_model
    from qdq.targets import prepare

    path = _conv_bn(tmp_path)
    data = (tmp_path / "model.data").read_bytes()
    outside = prepare(str(path))                                         # no run: loaded whole
    with shared_weights() as store:
        inside = prepare(str(path))
        kinds = {t.name: held(t) is not None for t in inside.graph.initializer if t.name in ("W", "M")}
        assert kinds == {"W": False, "M": True}       # M read from the file, W made anew (the BN folded)
        again = hold(inside)                          # as the run's preparation ends: W held too
        assert all(held(t) is not None for t in again.graph.initializer if t.name in ("W", "M"))
        assert [len(a) for a in store.models.values()] == [2, 1]   # the file's W and M, then the folded W
        user, folder = _user_model(str(path))          # the prepared-model check runs the user's model
        assert folder is None                          # not mapped by ONNX Runtime from the files again
        m_user = held(next(t for t in user.graph.initializer if t.name == "M"))
        assert m_user is held(next(t for t in again.graph.initializer if t.name == "M"))   # read once
        keep_held(again)                               # after the check: the user's W is not needed
        kept = {id(a) for d in [*store.models.values(), store.files] for a in d.values()}
        assert kept == {id(held(t)) for t in again.graph.initializer if t.name in ("W", "M")}
        skel = load_model(path, external=False)
        want = numpy_helper.to_array(next(t for t in onnx.load(str(path)).graph.initializer if t.name == "M"))
        assert any(t.name == "M" and t.data_location == TensorProto.EXTERNAL for t in skel.graph.initializer)
        np.testing.assert_array_equal(held(next(t for t in inside.graph.initializer if t.name == "M")), want)
    assert (tmp_path / "model.data").read_bytes() == data                # the user's data untouched
    assert outside.graph.initializer[0].HasField("raw_data")


def test_quantize_returns_whole_models_equal_to_those_made_without_a_store(tmp_path):
    import qdq
    from qdq.targets import prepare

    path = _conv_bn(tmp_path)
    rng = np.random.default_rng(5)
    (tmp_path / "data").mkdir()
    for k in range(6):
        np.savez(tmp_path / "data" / f"{k}.npz", x=rng.standard_normal((1, 16, 8, 8)).astype(np.float32))
    r = qdq.quantize(str(path), str(tmp_path / "data"), quiet=True)
    for m in (r.model, r.float_model):
        assert not any(t.data_location == TensorProto.EXTERNAL for t in m.graph.initializer)
    m = numpy_helper.to_array(next(t for t in onnx.load(str(path)).graph.initializer if t.name == "M"))
    np.testing.assert_array_equal(r.index.constants["M"], m)   # the result's index reads the whole model
    want = prepare(str(path))     # loaded whole: its tensors say data_location DEFAULT, a filled one leaves it unset
    for t in want.graph.initializer:
        t.ClearField("data_location")
    assert r.float_model.SerializeToString() == want.SerializeToString()


def test_fp16_emulation_reads_each_fp16_weight_through_a_cast_not_an_fp32_copy():
    from qdq.graph.precision import fp16_emulated

    rng = np.random.default_rng(6)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    x = {"x": rng.standard_normal((1, 64)).astype(np.float32)}
    model, lent = fp16_emulated(_matmul(w))
    assert {k: v.dtype for k, v in lent.items()} == {"W": np.float16}      # no FP32 copy beside it
    assert [n.op_type for n in model.graph.node if "W" in n.input] == ["Cast"]
    got = run_session(session_for(model, lent=lent), x, "s")["y"]
    half = lambda a: a.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(got, half(half(x["x"]) @ half(w)), rtol=2e-3, atol=1e-3)


def test_a_constant_nodes_external_data_is_read_in_a_run(tmp_path):
    from onnx.external_data_helper import convert_model_to_external_data

    from qdq.targets import prepare

    w = np.random.default_rng(7).standard_normal((64, 64)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])
    nodes = [helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w, "Wv")),
             helper.make_node("MatMul", ["x", "W"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    convert_model_to_external_data(model, location="m.data", size_threshold=0, convert_attribute=True)
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    with shared_weights():
        got = prepare(str(tmp_path / "m.onnx"))
        np.testing.assert_array_equal(numpy_helper.to_array(got.graph.initializer[0]), w)


def _dq_chain(rng) -> onnx.ModelProto:
    """x → MatMul(W1) → MatMul(W2) → MatMul(W3), each weight INT8 with a per-channel DequantizeLinear:
    W1 along its last axis (zero points 0), W2 along its first, W3 along its last with zero points ≠ 0."""
    nodes, inits, x = [], [], "x"
    for k, (shape, axis, zero) in enumerate((((64, 96), 1, 0), ((96, 32), 0, 0), ((32, 16), 1, 3)), 1):
        c = shape[axis]
        inits += [numpy_helper.from_array(rng.integers(-127, 128, shape, dtype=np.int8), f"W{k}"),
                  numpy_helper.from_array(rng.uniform(1e-3, 1e-2, c).astype(np.float32), f"s{k}"),
                  numpy_helper.from_array(np.full(c, zero, np.int8), f"z{k}")]
        nodes += [helper.make_node("DequantizeLinear", [f"W{k}", f"s{k}", f"z{k}"], [f"w{k}"], name=f"dq{k}", axis=axis),
                  helper.make_node("MatMul", [x, f"w{k}"], [f"y{k}"], name=f"mm{k}")]
        x = f"y{k}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [4, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_weight_dequantized_along_its_last_axis_runs_as_cast_and_mul_bit_for_bit():
    """ONNX Runtime's DequantizeLinear takes 1.7 ns per element along a weight's last axis; a session
    runs it as Cast and Mul instead, which computes the same float(q)·s: the outputs equal a plain
    session's bit for bit.  Only that form is rewritten (first axis and zero points ≠ 0 are left to the
    kernel), and the zero points the rewrite leaves unread are gone from the session's lent weights."""
    import onnxruntime as ort

    import qdq.calib.session as S

    rng = np.random.default_rng(3)
    model = _dq_chain(rng)
    m, lent = S.lent_view(model)
    S._dequantize_as_mul(m, lent)
    assert [n.op_type for n in m.graph.node] == ["Cast", "Mul", "MatMul", "DequantizeLinear", "MatMul",
                                                 "DequantizeLinear", "MatMul"]
    assert m.graph.node[1].output[0] == "w1" and "W1" in lent   # the codes are still lent, as INT8
    assert {t.name for t in m.graph.initializer} >= {"z2", "z3"} and "z1" not in {t.name for t in m.graph.initializer}
    x = {"x": rng.standard_normal((4, 64)).astype(np.float32) * 10}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    with shared_weights():
        y = run_session(session_for(model), x, "s")["y3"]
    assert np.array_equal(y.view(np.int32), plain.run(None, x)[0].view(np.int32))
    assert [n.op_type for n in model.graph.node][:2] == ["DequantizeLinear", "MatMul"]   # the caller's model as it was
