"""Facts measured, not guessed: MACs from the dims calibration ran, held-back samples chosen at
random, per-output figures, the user's ranges as written, names that never collide."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq.graph.index import GraphIndex
from qdq.graph.shapes import weighted_macs
from qdq.pipeline import quantize

RNG = np.random.default_rng(11)


def _init(name, a, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(a, dtype), name)


def _tokens_model(dim=32, patch=4):
    """A ViT-style stem: a patch Conv, then tokens reshaped with a count computed as
    Shape → Gather → Cast → Div → Floor → Cast → Concat, arithmetic shape inference cannot follow,
    then two Linear layers (MatMul) over the tokens."""
    nodes = [
        helper.make_node("Conv", ["x", "wp", "bp"], ["p"], strides=[patch, patch], kernel_shape=[patch, patch], name="patch"),
        helper.make_node("Shape", ["x"], ["xs"], name="shape"),
        helper.make_node("Gather", ["xs", "i2"], ["h"], axis=0, name="gh"),
        helper.make_node("Gather", ["xs", "i3"], ["w"], axis=0, name="gw"),
        helper.make_node("Mul", ["h", "w"], ["hw"], name="mulhw"),
        helper.make_node("Cast", ["hw"], ["hwf"], to=TensorProto.FLOAT, name="c1"),
        helper.make_node("Div", ["hwf", "p2"], ["nf"], name="div"),
        helper.make_node("Floor", ["nf"], ["nfl"], name="floor"),
        helper.make_node("Cast", ["nfl"], ["n"], to=TensorProto.INT64, name="c2"),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["one", "dims", "n1"], ["shape3"], axis=0, name="cat"),
        helper.make_node("Reshape", ["p", "shape3"], ["t"], name="reshape"),
        helper.make_node("Transpose", ["t"], ["tok"], perm=[0, 2, 1], name="tr"),
        helper.make_node("MatMul", ["tok", "w1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "w2"], ["y"], name="fc2"),
    ]
    inits = [_init("wp", RNG.standard_normal((dim, 3, patch, patch)) * 0.2), _init("bp", np.zeros(dim)),
             _init("i2", 2, np.int64), _init("i3", 3, np.int64), _init("p2", float(patch * patch)),
             _init("ax0", [0], np.int64), _init("one", [1], np.int64), _init("dims", [dim], np.int64),
             _init("w1", RNG.standard_normal((dim, 64)) * 0.2), _init("w2", RNG.standard_normal((64, 16)) * 0.2)]
    g = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def test_macs_come_from_the_dims_calibration_ran(tmp_path):
    """Static inference loses the token count; the data's dims give every layer's MACs exactly."""
    m = _tokens_model()
    static = weighted_macs(m, {"x": (1, 3, 32, 48)})
    assert static[0] == 32 * 3 * 16 * (8 * 12) and static[13] is None and static[15] is None   # what inference gives
    for k in range(24):
        np.savez(tmp_path / f"{k:02d}.npz", x=RNG.standard_normal((1, 3, 32, 48)).astype(np.float32))
    r = quantize(m, tmp_path, quiet=True, mixed_precision=False, bias_correction=False)
    s = r.summary
    tokens = 8 * 12
    expected = {"patch": tokens * 32 * 48, "fc1": tokens * 32 * 64, "fc2": tokens * 64 * 16}
    labels = GraphIndex.build(r.float_model).labels
    assert {labels[p]: v for p, v in r.macs.items()} == expected
    int8 = sum(expected[n] for n in s.quantized_layers)
    assert s.mac_source == "data" and s.mac_unknown == [] and s.int8_mac_share == pytest.approx(int8 / sum(expected.values()))
    assert set(s.quantized_layers) >= {"fc1", "fc2"}


def test_held_back_samples_are_a_seeded_choice_spread_over_sources(tmp_path):
    """Three recordings of 90 samples in name order: every 5th sample took all of them from the first
    one; the seeded choice takes some from each, whatever the listing order, and names them."""
    from qdq.calib.data import Dataset, HoldOut, choose_held, model_inputs
    m = _tokens_model()
    for rec in ("rec1", "rec2", "rec3"):
        (tmp_path / rec).mkdir()
        for k in range(90):
            np.savez(tmp_path / rec / f"{k:03d}.npz", x=np.zeros((1, 3, 8, 8), np.float32))
    ds = Dataset(tmp_path, model_inputs(m))
    names = ds.sources()
    assert len(names) == 270
    split = HoldOut(ds)
    for _ in split:
        pass
    held = split.held_sources
    assert len(held) == len(split.held) == 32 and {n.split("/")[-2] for n in held} == {"rec1", "rec2", "rec3"}
    rel = [n[len(str(tmp_path)) + 1:] for n in names]
    assert {n[len(str(tmp_path)) + 1:] for n in held} == choose_held(rel[::-1], 32) != choose_held(rel, 32, seed=1)
    assert {n.split("/")[-2] for n in held[0::2]} == {n.split("/")[-2] for n in held[1::2]} == {"rec1", "rec2", "rec3"}


def test_npz_sample_names_come_from_headers(tmp_path):
    from qdq.calib.data import Dataset, model_inputs
    m = _tokens_model()
    np.savez(tmp_path / "a.npz", x=np.zeros((5, 3, 8, 8), np.float32))
    np.savez(tmp_path / "b.npz", x=np.zeros((3, 8, 8), np.float32))       # one sample without its batch axis
    ds = Dataset(tmp_path, model_inputs(m))
    assert ds.sources() == [s for s, _ in ds] == [f"{tmp_path}/a.npz[{i}]" for i in range(5)] + [f"{tmp_path}/b.npz[0]"]


def _bn_model(planted: dict):
    """Conv → BatchNorm → Relu → Conv, plus an extra output per ``planted`` name (an Add of the input to
    itself named so): each name one a pass would generate."""
    c = 16
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["a", "g", "b", "m", "v"], ["bn_out"], name="bn"),
             helper.make_node("Relu", ["bn_out"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 8, 8])]
    for k, name in enumerate(planted):
        nodes.append(helper.make_node("Mul", ["x", f"k{k}"], [name], name=f"plant{k}"))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, c, 8, 8]))
    inits = [_init("w1", RNG.standard_normal((c, c, 3, 3)) * 0.2), _init("w2", RNG.standard_normal((c, c, 1, 1)) * 0.3),
             _init("g", RNG.uniform(0.5, 2, c)), _init("b", RNG.standard_normal(c)), _init("m", RNG.standard_normal(c)),
             _init("v", RNG.uniform(0.5, 2, c))] + [_init(f"k{k}", float(k + 2)) for k in range(len(planted))]
    g = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])], outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


# names the passes generate from tensor and node names of this model (folding, analysis, bypass, FP16)
PLANTED = ["bn_folded_bias", "r__q", "r__s", "r__fq", "w2__dqw", "conv2__DQw", "y__h32", "r_float", "bn_out__r"]


def test_generated_names_never_collide(tmp_path):
    """A model that already holds every name a pass would make computes the same once prepared, and
    quantizes to a file whose held-back figures are measured against the user's own model."""
    from qdq.calib.session import run_session, session_for
    from qdq.targets import prepare
    m = _bn_model(PLANTED)
    feed = {"x": RNG.standard_normal((1, 16, 8, 8)).astype(np.float32)}
    want = run_session(session_for(m), feed, "x")
    got = run_session(session_for(prepare(m)), feed, "x")
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4)
    for k in range(30):
        np.savez(tmp_path / f"{k:02d}.npz", x=RNG.standard_normal((1, 16, 8, 8)).astype(np.float32))
    r = quantize(m, tmp_path, quiet=True, target="trt11")
    assert r.summary.accuracy["final_db"] > 25


def test_a_prepared_model_that_diverges_stops_the_run():
    """Every run checks its prepared float model against the user's: a wrong reference (here a folded
    bias wired to another tensor, as a name collision did) is an error naming the first diverging tensor."""
    from qdq.errors import QdqError
    from qdq.measure.prepared import check_prepared
    from qdq.targets import prepare
    m = _bn_model([])
    feeds = [{"x": RNG.standard_normal((1, 16, 8, 8)).astype(np.float32)} for _ in range(2)]
    good = prepare(m)
    check_prepared(m, good, feeds, "m.onnx")
    bad = onnx.ModelProto()
    bad.CopyFrom(good)
    conv = next(n for n in bad.graph.node if n.op_type == "Conv")
    bias = next(i for i in bad.graph.initializer if i.name == conv.input[2])
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 99.5, bias.name))
    with pytest.raises(QdqError, match=r"m.onnx: .*output 'y' .* dB away from your model \(first diverging tensor 'bn_out'\)"):
        check_prepared(m, bad, feeds, "m.onnx")


def test_a_file_with_external_data_is_checked_from_its_files(tmp_path, monkeypatch):
    """Given the path of a file whose weights lie beside it, the check hands ONNX Runtime the files to
    map instead of loading the weights a second time (loading them here fails the test), and still
    finds the wrong reference."""
    from qdq.errors import QdqError
    from qdq.measure.prepared import check_prepared
    from qdq.targets import prepare
    m = _bn_model([])
    on_disk = onnx.ModelProto()
    on_disk.CopyFrom(m)   # onnx's writer turns the model it writes into references
    onnx.save_model(on_disk, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    feeds = [{"x": RNG.standard_normal((1, 16, 8, 8)).astype(np.float32)} for _ in range(2)]
    good = prepare(m)
    bad = onnx.ModelProto()
    bad.CopyFrom(good)
    conv = next(n for n in bad.graph.node if n.op_type == "Conv")
    bias = next(i for i in bad.graph.initializer if i.name == conv.input[2])
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 99.5, bias.name))

    def refuse(*a, **k):
        raise AssertionError("the user's weights were loaded")
    monkeypatch.setattr(onnx, "load_external_data_for_model", refuse)
    check_prepared(tmp_path / "m.onnx", good, feeds, "m.onnx")
    with pytest.raises(QdqError, match=r"m.onnx: .*output 'y' .* dB away from your model \(first diverging tensor 'bn_out'\)"):
        check_prepared(tmp_path / "m.onnx", bad, feeds, "m.onnx")


def test_trt11_files_with_imported_ranges_are_diagnosed(tmp_path):
    """trt11 with --ranges, and compare --layerwise on a trt11 file: the diagnosis swaps a range on a Q
    whose scale is FP32 beside DQs whose scales are FP16 (one scale per dtype it feeds)."""
    import json
    from qdq.calib.data import Feeds, model_inputs
    from qdq.measure.comparison import compare
    m = _bn_model([])
    for k in range(30):
        np.savez(tmp_path / f"{k:02d}.npz", x=RNG.standard_normal((1, 16, 8, 8)).astype(np.float32))
    hand = tmp_path.parent / f"{tmp_path.name}_hand.json"
    hand.write_text(json.dumps({"r": 0.5, "x": 40.0}))
    r = quantize(m, tmp_path, ranges=str(hand), quiet=True, target="trt11")
    assert {d["subject"] for d in r.summary.diagnosis} >= {"r", "x"}
    feeds = [{"x": RNG.standard_normal((1, 16, 8, 8)).astype(np.float32)} for _ in range(8)]
    c = compare(m, r.model, Feeds(model_inputs(m), feeds), layerwise=True, quiet=True)
    assert c.diagnosis


def _concat_pool_model():
    """Two Conv branches → Concat → Conv → Relu → GlobalAveragePool → Conv (1×1) → y."""
    c = 16
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="ca"), helper.make_node("Relu", ["a"], ["r1"], name="ra"),
             helper.make_node("Conv", ["x", "wb"], ["b"], name="cb"), helper.make_node("Relu", ["b"], ["r2"], name="rb"),
             helper.make_node("Concat", ["r1", "r2"], ["cat"], axis=1, name="cat"),
             helper.make_node("Conv", ["cat", "wd"], ["d"], name="cd"), helper.make_node("Relu", ["d"], ["p_in"], name="rd"),
             helper.make_node("GlobalAveragePool", ["p_in"], ["pooled"], name="gap"),
             helper.make_node("Conv", ["pooled", "we"], ["y"], name="ce")]
    inits = [_init("wa", RNG.standard_normal((c, c, 1, 1)) * 0.3), _init("wb", RNG.standard_normal((c, c, 1, 1)) * 0.9),
             _init("wd", RNG.standard_normal((c, 2 * c, 1, 1)) * 0.2), _init("we", RNG.standard_normal((2 * c, c, 1, 1)) * 0.3)]
    g = helper.make_graph(nodes, "cp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2 * c, 1, 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def test_the_users_ranges_are_written_as_given(tmp_path):
    """A hand range on one Concat input wins for its scale group (the other input takes it, never the
    reverse), and a hand range feeding an averaging pool stays applied (no --fallback-imported)."""
    import json
    m = _concat_pool_model()
    for k in range(30):
        np.savez(tmp_path / f"{k:02d}.npz", x=RNG.standard_normal((1, 16, 8, 8)).astype(np.float32))
    hand = tmp_path.parent / f"{tmp_path.name}_hand.json"
    hand.write_text(json.dumps({"r1": 1.0, "p_in": 0.5}))
    s = quantize(m, tmp_path, ranges=str(hand), quiet=True).summary
    acts = s.activations
    assert acts["r1"]["amax"] == 1.0 and acts["r2"]["amax"] == 1.0 and acts["p_in"]["amax"] == 0.5
    imp = s.ranges_import
    assert imp["applied"] == 2 and imp["unused"] == [] and imp["shared"]["r1"] == ["cat", "r2"]


def _two_heads():
    """A trunk, then 'boxes' (×100) and 'scores' (a small head): pooled, scores' noise vanishes."""
    c = 16
    nodes = [helper.make_node("Conv", ["x", "w0"], ["t0"], name="trunk"), helper.make_node("Relu", ["t0"], ["t"], name="rt"),
             helper.make_node("Conv", ["t", "wb"], ["b0"], name="box_head"),
             helper.make_node("Mul", ["b0", "hundred"], ["boxes"], name="scale"),
             helper.make_node("Conv", ["t", "ws"], ["s0"], name="score_head"),
             helper.make_node("Relu", ["s0"], ["sr"], name="rs"),
             helper.make_node("Conv", ["sr", "ws2"], ["scores"], name="score_out")]
    inits = [_init("w0", RNG.standard_normal((c, c, 1, 1)) * 0.3), _init("wb", RNG.standard_normal((4, c, 1, 1)) * 0.3),
             _init("hundred", 100.0), _init("ws", RNG.standard_normal((c, c, 1, 1)) * 0.3),
             _init("ws2", RNG.standard_normal((c, c, 1, 1)) * 0.3)]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])],
                          [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4, 8, 8]),
                           helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, c, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def test_the_worst_output_decides(tmp_path):
    """A hand range that ruins 'scores' while 'boxes' (100× larger) is fine: the held-back figure, the
    metadata and compare's headline are the scores', named, with the pooled figure beside it."""
    import json
    from qdq.calib.data import Feeds, model_inputs
    from qdq.measure.comparison import compare
    m = _two_heads()
    for k in range(30):
        np.savez(tmp_path / f"{k:02d}.npz", x=RNG.standard_normal((1, 16, 8, 8)).astype(np.float32))
    hand = tmp_path.parent / f"{tmp_path.name}_hand.json"
    hand.write_text(json.dumps({"sr": 0.05}))
    r = quantize(m, tmp_path, ranges=str(hand), quiet=True, mixed_precision=False)
    acc = r.summary.accuracy
    outs = acc["final_outputs"]
    assert outs["output"] == "scores" and outs["outputs"] == 2
    assert acc["final_db"] == outs["per_output"]["scores"]["value"] < 10 < outs["pooled"]["value"] - 20
    meta = {p.key: p.value for p in r.model.metadata_props}
    assert meta["qdq_heldout_output"] == "scores" and float(meta["qdq_heldout_sqnr_db"]) < 10
    feeds = [{"x": RNG.standard_normal((1, 16, 8, 8)).astype(np.float32)} for _ in range(8)]
    c = compare(m, r.model, Feeds(model_inputs(m), feeds), quiet=True)
    assert c.sqnr["output"] == "scores" and c.sqnr["value"] < 10 < c.sqnr["pooled"]["value"] - 20


def test_compare_weights_alone_drop_the_files_bias_correction(tmp_path):
    """A file whose biases correct the activations' error too: compare's weights-only view puts the
    user's biases back (that correction without the activations' error is a stale shift), on Conv
    biases and on a correction the file added; the view without any correction is reproduced exactly."""
    from qdq.graph.bypass import without_bias_correction, weights_only
    from qdq.calib.session import run_session, session_for
    from qdq.graph.precision import runnable
    from qdq.graph.rewrite import set_metadata
    from qdq.graph.writer import build_model
    m = _two_heads()
    for k in range(30):
        np.savez(tmp_path / f"{k:02d}.npz", x=RNG.standard_normal((1, 16, 8, 8)).astype(np.float32))
    r = quantize(m, tmp_path, quiet=True, mixed_precision=False, bias_correction=False)
    shift = {p: np.full(r.index.constant(r.index.nodes[p].input[1]).shape[0], 0.5) for p in r.placement.quantized_layers}
    planted, _ = build_model(r.float_model, r.index, r.placement, r.ranges, "trt10", bias=shift)
    plain, _ = build_model(r.float_model, r.index, r.placement, r.ranges, "trt10")
    for f in (planted, plain):
        set_metadata(f, {"qdq_version": "test", "qdq_bias_correction": "full (3 layers)"})
    feed = {"x": RNG.standard_normal((1, 16, 8, 8)).astype(np.float32)}
    run = lambda f: run_session(session_for(runnable(weights_only(f))), feed, "x")   # noqa: E731
    want, stale, undone = run(plain), run(planted), run(without_bias_correction(planted, r.float_model))
    for k in want:
        assert np.abs(stale[k] - want[k]).max() > 0.1
        np.testing.assert_array_equal(undone[k], want[k])


def test_no_layer_to_quantize_says_why(tmp_path):
    """A model whose MatMuls are all GEMVs (M = 1) is told so, not that it has no weighted layer."""
    from qdq.errors import QdqError
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "gemv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
                          [_init("w1", RNG.standard_normal((64, 64))), _init("w2", RNG.standard_normal((64, 32)))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(QdqError, match=r"no layer to quantize: all 2 weighted layers stay float by the placement rules: "
                                       r"2 like 'fc1' \(GEMV shape \(M=1, N=64\)"):
        quantize(m, ranges=None, calibration=None)


def test_ranges_entries_naming_no_tensor_are_said_first(tmp_path, capsys):
    """Said before the long work, with the nearest names; a file naming no tensor at all is an error."""
    import json
    from qdq.errors import QdqError
    m = _concat_pool_model()
    for k in range(10):
        np.savez(tmp_path / f"{k:02d}.npz", x=RNG.standard_normal((1, 16, 8, 8)).astype(np.float32))
    hand = tmp_path.parent / f"{tmp_path.name}_hand.json"
    hand.write_text(json.dumps({"r1": 1.0, "p_inn": 0.5}))
    s = quantize(m, tmp_path, ranges=str(hand)).summary
    err = capsys.readouterr().err
    assert "1 of 2 entries" in err and "'p_inn' (nearest: 'p_in')" in err
    assert err.index("'p_inn'") < err.index("calibrating") if "calibrating" in err else True
    assert any("'p_inn'" in w for w in s.warnings)
    hand.write_text(json.dumps({"conv_out": 1.0}))
    with pytest.raises(QdqError, match="none of its 1 entries names a tensor"):
        quantize(m, tmp_path, ranges=str(hand), quiet=True)


def test_fp32_pins_name_only_float_layers_outside_int8():
    """The FP16 plan may keep an ArgMax (integer output) or an INT8 layer's node: neither is pinned."""
    from qdq.graph.index import GraphIndex
    from qdq.measure.autocast import Fp16Plan
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Add", ["c", "one"], ["a"], name="add"),
             helper.make_node("ArgMax", ["a"], ["y"], name="argmax", axis=1)]
    g = helper.make_graph(nodes, "p", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, [1, 1, 4, 4])],
                          [_init("w", RNG.standard_normal((16, 16, 1, 1))), _init("one", 1.0)])
    idx = GraphIndex.build(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    plan = Fp16Plan(keep={0: "big", 1: "big", 2: "big"})
    assert plan.pins(idx, int8_layers=[0]) == ["add"] and len(plan.names(idx)) == 3


def test_mixed_precision_never_floats_a_layer_whose_int8_costs_nothing():
    from qdq.measure.mixed_precision import NEGLIGIBLE, _add_until
    chosen = []
    added = _add_until([0, 1, 2], chosen, {0: 5.0, 1: 1e-9, 2: 3.0}, 1.0, 10.0, 0.0, lambda c, p: True)
    assert added and chosen == [0, 2] and NEGLIGIBLE * 10.0 > 1e-9


def test_missed_target_is_said_with_the_figures_printed(tmp_path):
    """The warning quotes the held-back line's own weights-alone figure (it quoted another before)."""
    import json
    m = _two_heads()
    for k in range(30):
        np.savez(tmp_path / f"{k:02d}.npz", x=RNG.standard_normal((1, 16, 8, 8)).astype(np.float32))
    hand = tmp_path.parent / f"{tmp_path.name}_hand.json"
    hand.write_text(json.dumps({"sr": 0.05}))
    s = quantize(m, tmp_path, ranges=str(hand), quiet=True).summary
    acc = s.accuracy
    warning = next(w for w in s.warnings if w.startswith("mixed precision:"))
    assert f"{acc['final_db']:.2f} dB" in warning and f"its weights alone at {acc['final_weights_only_db']:.2f} dB" in warning
    assert acc["reached"] is False


def test_max_task_loss_acts_only_on_a_task_named_or_confirmed(tmp_path):
    """An inferred task is reported, never a decision's ground; --task auto (or the task's name) confirms it."""
    from qdq.measure.tasks import TaskOptions
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["logits"], name="fc2")]
    g = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [4, 10])],
                          [_init("w1", RNG.standard_normal((64, 64)) * 0.2), _init("w2", RNG.standard_normal((64, 10)) * 0.2)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    for k in range(30):
        np.savez(tmp_path / f"{k:02d}.npz", x=RNG.standard_normal((4, 64)).astype(np.float32))
    inferred = quantize(m, tmp_path, quiet=True, max_task_loss=0.0).summary
    assert any(w.startswith("--max-task-loss did not act: the task classify was inferred") for w in inferred.warnings)
    named = quantize(m, tmp_path, quiet=True, max_task_loss=0.0, task=TaskOptions(task="auto", confirmed=True)).summary
    assert not any("--max-task-loss did not act" in w for w in named.warnings)


def test_a_candidate_built_as_the_device_runs_it_matches_the_file_then_its_device_view(tmp_path):
    """graph.writer.device_view (Q/DQ, FP16 remainder and its emulation on one graph, weights lent)
    computes exactly what remainder_fp16 of the written trt10 file computes, with and without pins, and
    its weights-alone view exactly what remainder_fp16 of weights_only of the file computes."""
    from qdq.calib.session import run_session, session_for
    from qdq.graph.bypass import weights_only
    from qdq.graph.precision import remainder_fp16
    from qdq.graph.writer import build_model, device_view
    m = _two_heads()
    for k in range(30):
        np.savez(tmp_path / f"{k:02d}.npz", x=RNG.standard_normal((1, 16, 8, 8)).astype(np.float32))
    r = quantize(m, tmp_path, quiet=True, mixed_precision=False)
    feed = {"x": RNG.standard_normal((1, 16, 8, 8)).astype(np.float32)}
    file, _ = build_model(r.float_model, r.index, r.placement, r.ranges, "trt10", bias=r.bias)
    pins = [lab for p, lab in enumerate(r.index.labels) if p not in r.placement.quantized_layers][:2]
    assert pins
    for keep in ([], pins):
        lean, lent = device_view(r.float_model, r.index, r.placement, r.ranges, r.bias, keep)
        got = run_session(session_for(lean, lent=lent), feed, "x")
        want = run_session(session_for(remainder_fp16(file, keep)), feed, "x")
        lean, lent = device_view(r.float_model, r.index, r.placement, {}, r.bias, keep, weights_alone=True)
        got_w = run_session(session_for(lean, lent=lent), feed, "x")
        want_w = run_session(session_for(remainder_fp16(weights_only(file), keep)), feed, "x")
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
            np.testing.assert_array_equal(got_w[k], want_w[k])


def test_the_fp16_plans_measured_model_is_the_cast_then_its_emulation():
    """precision.fp16_emulated (the FP16 cast and its emulation on one graph, weights lent) computes
    exactly what runnable(cast_float(…)) computes, with and without nodes kept FP32."""
    from qdq.calib.session import run_session, session_for
    from qdq.graph.precision import cast_float, fp16_emulated, runnable
    from qdq.targets import prepare
    m = prepare(_two_heads())
    feed = {"x": RNG.standard_normal((1, 16, 8, 8)).astype(np.float32)}
    for keep in (set(), {0, 1}):
        lean, lent = fp16_emulated(m, keep)
        got = run_session(session_for(lean, lent=lent), feed, "x")
        want = run_session(session_for(runnable(cast_float(m, np.float16, keep, check=False))), feed, "x")
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_an_fp16_file_with_external_data_is_checked_from_its_weights_loaded(tmp_path):
    """An FP16 file with its weights beside it: the check cannot let ONNX Runtime map them (the FP16
    emulation rewrites the weights), so it loads them; a wrong reference is still found and named."""
    from qdq.errors import QdqError
    from qdq.measure.prepared import _user_model, check_prepared
    from qdq.targets import prepare
    c = 16

    def half(name, a):
        return numpy_helper.from_array(np.asarray(a, np.float16), name)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"), helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "h", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, c, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, c, 8, 8])],
                          [half("w1", RNG.standard_normal((c, c, 3, 3)) * 0.2), half("b1", RNG.standard_normal(c)),
                           half("w2", RNG.standard_normal((c, c, 1, 1)) * 0.3)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    on_disk = onnx.ModelProto()
    on_disk.CopyFrom(m)
    onnx.save_model(on_disk, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    user, folder = _user_model(tmp_path / "m.onnx")
    assert folder is None and all(t.HasField("raw_data") for t in user.graph.initializer)
    feeds = [{"x": RNG.standard_normal((1, c, 8, 8)).astype(np.float16)} for _ in range(2)]
    good = prepare(m)
    check_prepared(tmp_path / "m.onnx", good, feeds, "m.onnx")
    bad = onnx.ModelProto()
    bad.CopyFrom(good)
    b = next(i for i in bad.graph.initializer if i.name == "b1")
    b.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(b) + np.asarray(99.5, numpy_helper.to_array(b).dtype), "b1"))
    with pytest.raises(QdqError, match=r"m.onnx: .*output 'y' .* dB away from your model \(first diverging tensor 'a'\)"):
        check_prepared(tmp_path / "m.onnx", bad, feeds, "m.onnx")


def test_max_task_loss_does_not_act_on_a_figure_with_nothing_to_count(tmp_path):
    """A detector named by the user that finds no box in FP32 on the held-back samples: its box F1 is
    unmeasured there, so --max-task-loss says it did not act instead of chasing (or passing) a
    vacuous 100 %."""
    from qdq.measure.tasks import TaskOptions
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["z"], name="fc2"), helper.make_node("Sigmoid", ["z"], ["s"], name="sig"),
             helper.make_node("Mul", ["s", "tenth"], ["p"], name="damp"),          # every score below 0.25: no box
             helper.make_node("Transpose", ["p"], ["output0"], name="to_yolo", perm=[0, 2, 1])]
    g = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128, 64])],
                          [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 128])],
                          [_init("w1", RNG.standard_normal((64, 64)) * 0.2), _init("w2", RNG.standard_normal((64, 6)) * 0.2),
                           _init("tenth", np.float32(0.1))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    for k in range(30):
        np.savez(tmp_path / f"{k:02d}.npz", x=RNG.standard_normal((1, 128, 64)).astype(np.float32))
    s = quantize(m, tmp_path, quiet=True, max_task_loss=0.0, task=TaskOptions(task="detect", confirmed=True)).summary
    assert any(w.startswith("--max-task-loss did not act: the task's f1 is unmeasured on the held-back samples "
                            "(no boxes in either model)") for w in s.warnings), s.warnings
    f1 = s.accuracy["task"]["figures"]["f1"]
    assert f1["value"] is None or f1["value"] != f1["value"]
