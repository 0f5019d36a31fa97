"""The hand-set-ranges story on a small synthetic CNN with known answers: the diagnosis names the
planted ranges first, in words, with a measured recovery; imported ranges are never dropped silently;
the layer-by-layer figures never contradict each other."""
import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq.graph.qdq_file import qdq_sites
from qdq.measure.comparison import compare
from qdq.pipeline import quantize


def _cnn() -> onnx.ModelProto:
    """x[1,3,16,16] → Conv(8)+Relu → Conv(16)+Relu → Conv(16) (its output ×8: a wide tensor) → Relu →
    Conv(8) → GlobalAveragePool → Flatten → Gemm(10)."""
    rng = np.random.default_rng(3)
    inits, nodes, prev = [], [], "x"
    for k, (cin, cout, gain) in enumerate([(3, 8, 1.0), (8, 16, 1.0), (16, 16, 8.0), (16, 8, 1.0)]):
        w = (rng.standard_normal((cout, cin, 3, 3)) * gain / np.sqrt(9 * cin)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32) * 0.1, f"b{k}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{k}", f"b{k}"], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]))
        prev = f"c{k}"
        if k < 3:
            nodes.append(helper.make_node("Relu", [prev], [f"r{k}"], name=f"relu{k}"))
            prev = f"r{k}"
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1)]
    inits += [numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "wf"),
              numpy_helper.from_array(np.zeros(10, np.float32), "bf")]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """The float model, 40 samples, the calibrated file, and hand ranges: a tenth of the calibrated
    amax on the wide tensor r2 (clips) and 12x on the narrow r0 (wastes levels)."""
    root = tmp_path_factory.mktemp("story")
    onnx.save(_cnn(), root / "model.onnx")
    (root / "data").mkdir()
    rng = np.random.default_rng(0)
    for k in range(40):
        np.savez(root / "data" / f"s{k:02d}.npz", x=rng.standard_normal((1, 3, 16, 16)).astype(np.float32))
    base = quantize(root / "model.onnx", root / "data", quiet=True)
    cal = {t: r.amax for t, r in base.ranges.items()}
    hand = {"r2": cal["r2"] / 10, "r0": cal["r0"] * 12}
    (root / "hand.json").write_text(json.dumps(hand))
    return root, base, cal, hand


def test_diagnosis_names_the_planted_ranges_first_with_a_measured_recovery(story):
    root, _, cal, hand = story
    q = quantize(root / "model.onnx", root / "data", ranges=root / "hand.json", quiet=True)
    res = compare(root / "model.onnx", q.model, root / "data", layerwise=True, quiet=True)
    first = res.diagnosis[:2]
    assert {c["subject"] for c in first} == {"r2", "r0"} and all(c["kind"] == "imported range" for c in first)
    clip = next(c for c in first if c["subject"] == "r2")
    assert "clips" in clip["text"] and "hand.json" in clip["text"] and clip["evidence"]["clipped"] > 0.01
    assert abs(clip["evidence"]["calibrated_amax"] / cal["r2"] - 1) < 0.3   # calibration on the same data
    waste = next(c for c in first if c["subject"] == "r0")
    assert "levels" in waste["text"] and waste["evidence"]["levels_used"] < 0.2
    top = res.diagnosis[0]
    m = top["measured"]
    assert m["after"]["low"] > m["before"]["high"], "the fix recovers, beyond the intervals"
    assert top["estimated_db"] > res.sqnr["value"] + 3, "the estimate (on fewer samples) sees the recovery too"


def test_accumulated_sqnr_includes_the_tensors_own_qdq(story):
    root, _, _, _ = story
    q = quantize(root / "model.onnx", root / "data", ranges=root / "hand.json", quiet=True)
    res = compare(root / "model.onnx", q.model, root / "data", layerwise=True, quiet=True, budget=False)
    for r in res.layers:   # the accumulated noise holds the tensor's own Q/DQ noise: never far above local
        assert r.accumulated_sqnr_db <= r.local_sqnr_db + 1.0, (r.tensor, r.accumulated_sqnr_db, r.local_sqnr_db)
        assert math.isfinite(r.accumulated_sqnr_db)
    r2 = next(r for r in res.layers if r.tensor == "r2")
    assert res.first_below is None or res.layers.index(next(r for r in res.layers if r.tensor == res.first_below)) \
        <= res.layers.index(r2)


def test_mixed_precision_never_floats_a_layer_for_its_imported_range(story):
    root, _, _, hand = story
    q = quantize(root / "model.onnx", root / "data", ranges=root / "hand.json", quiet=True, max_loss_db=0.1)
    sites = {s.tensor: s for s in qdq_sites(q.model)}
    assert set(hand) <= set(sites) and all(sites[t].imported for t in hand)
    assert all(abs(sites[t].amax / hand[t] - 1) < 1e-5 for t in hand)
    assert q.summary.ranges_import["applied"] == len(hand) and not q.summary.ranges_import["unused"]
    floated = {f["node"] for f in q.summary.float_layers}
    assert not floated & {"conv1", "conv3"}   # the consumers of r0 and r2


def test_fallback_imported_lets_mixed_precision_float_them_and_says_so(story):
    root, _, _, hand = story
    q = quantize(root / "model.onnx", root / "data", ranges=root / "hand.json", quiet=True, max_loss_db=0.1,
                 fallback_imported=True, min_int8_share=0.0)
    rep = q.summary.ranges_import
    dropped = {u["tensor"]: u["reason"] for u in rep["unused"]}
    assert dropped, "with --fallback-imported and a tight target some imported range is dropped"
    assert all("mixed precision" in why for why in dropped.values())


def test_the_small_things_a_new_user_hit(story, tmp_path):
    from qdq.calib.data import InputSpec, Preprocess
    from qdq.errors import QdqError
    from qdq.cli.args import shapes

    with pytest.raises(QdqError, match="'image', which is not an input of the model; its inputs: x"):
        shapes(["image:1x3x16x16"], ["x"])
    assert shapes(["x:1x3x16x16"], ["x"]) == {"x": (1, 3, 16, 16)}
    gray = InputSpec("x", (1, 1, 32, 32), np.dtype(np.float32))
    with pytest.raises(QdqError, match="--mean has 3 values but input 'x' has 1 channel"):
        Preprocess(mean=(0.5, 0.5, 0.5)).resolved(gray)
    assert Preprocess(mean=(0.5,)).resolved(gray).mean == (0.5,)
    assert Preprocess(mean=(0.5,)).resolved(InputSpec("x", (1, 3, 8, 8), np.dtype(np.float32))).mean == (0.5,) * 3
    with pytest.raises(QdqError, match="GRAY gives 1 channel"):
        Preprocess(color="GRAY").resolved(InputSpec("x", (1, 3, 8, 8), np.dtype(np.float32)))


def test_a_layer_reading_a_tensor_before_its_qdq_pair_is_said_so(story):
    from qdq.graph.qdq_file import layer_precisions
    from qdq.graph.surgery import gs, import_graph, export_graph

    q = quantize(story[0] / "model.onnx", story[0] / "data", quiet=True, mixed_precision=False).model
    graph = import_graph(q)
    conv = next(n for n in graph.nodes if n.name == "conv2")
    dq = conv.inputs[0].inputs[0]
    conv.inputs[0] = dq.inputs[0].inputs[0].inputs[0]   # conv2 reads r1 itself, beside its Q/DQ pair
    extra = gs().Node("Relu", "extra", inputs=[dq.outputs[0]], outputs=[gs().Variable("extra_out", np.float32)])
    graph.nodes.append(extra)
    graph.outputs.append(extra.outputs[0].to_variable(dtype=np.float32, shape=[1, 16, 16, 16]))
    row = next(r for r in layer_precisions(export_graph(graph, q, "test")) if r["node"] == "conv2")
    assert not row["int8"] and "is read in float: its Q/DQ pair feeds only 'extra'" in row["reason"]


def test_engine_size_figures_add_up_or_say_why():
    from qdq.trt.layers import EngineLayer, EngineView, Tensor

    w = Tensor("w", "Float", [256, 256, 3, 3])            # 2.36 MB as the network declares it
    layers = [EngineLayer("a", "convolution", constants=[w]), EngineLayer("b", "convolution", constants=[w])]
    note = EngineView(layers=layers, engine_bytes=1_000_000).size_note()
    assert "2.4 MB layer weights" in note, "a constant two layers list is counted once"
    assert "exceed what the engine stores" in note
    assert "exceed" not in EngineView(layers=layers, engine_bytes=3_000_000).size_note()


def test_the_story_on_a_real_recognizer(prepared, tmp_path):
    """ddddocr's recognizer: ±10 on its two widest tensors, ±50 on two narrow ones, imported without
    --force-ranges.  Every range is applied or said why not; the diagnosis names all four first, in
    words, in quantize and in compare, with a measured recovery for the top one."""
    ds = prepared("ddddocr_rec")
    base = quantize(ds.model, ds.calib, preprocess=ds.preprocess, quiet=True)
    by_amax = sorted(base.ranges, key=lambda t: base.ranges[t].amax)
    wide = by_amax[-2:]
    narrow = [t for t in by_amax if 2.0 < base.ranges[t].amax < 10.0][:2]
    hand = {**{t: 10.0 for t in wide}, **{t: 50.0 for t in narrow}}
    (tmp_path / "hand.json").write_text(json.dumps(hand))
    q = quantize(ds.model, ds.calib, preprocess=ds.preprocess, ranges=tmp_path / "hand.json", quiet=True)
    imp = q.summary.ranges_import
    assert imp["applied"] + len(imp["unused"]) == len(hand) and all(u["reason"] for u in imp["unused"])
    assert imp["applied"] == len(hand), imp["unused"]   # none dropped: mixed precision leaves them be
    for causes in (q.summary.diagnosis,
                   compare(ds.model, q.model, ds.val, preprocess=ds.preprocess, layerwise=True, quiet=True).diagnosis):
        assert {c["subject"] for c in causes[:4]} == set(hand), [c["text"] for c in causes]
        assert all("hand.json" in c["text"] and c["kind"] == "imported range" for c in causes[:4])
        for c in causes[:4]:
            assert ("clips" in c["text"]) == (c["subject"] in wide)
        m = causes[0]["measured"]
        assert m["after"]["value"] > m["before"]["value"]


def test_a_tensor_sharing_your_range_through_a_concat_is_told_so(tmp_path):
    """Your ±50 on one Concat input becomes the scale of the other input and of the Concat's output
    (one scale group, rule 3): the diagnosis sends you to that range, not to --exclude."""
    from qdq.graph.index import GraphIndex
    from qdq.graph.placement import scale_group

    rng = np.random.default_rng(5)
    w = lambda *s: numpy_helper.from_array((rng.standard_normal(s) * 0.1).astype(np.float32))  # noqa: E731
    inits = [w(16, 16, 3, 3), w(16, 16, 3, 3), w(16, 32, 1, 1)]
    for t, name in zip(inits, ("w1", "w2", "w3")):
        t.name = name
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1] * 4), helper.make_node("Relu", ["c1"], ["a"], name="r1"),
             helper.make_node("Conv", ["x", "w2"], ["c2"], name="conv2", pads=[1] * 4), helper.make_node("Relu", ["c2"], ["b"], name="r2"),
             helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "w3"], ["y"], name="conv3")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    acts = {"x", "a", "b", "cat"}
    idx = GraphIndex.build(m)
    assert scale_group(idx, acts, "b") == {"a", "b", "cat"} and scale_group(idx, {"x", "a", "b"}, "b") == {"b"}
    (tmp_path / "d").mkdir()
    for k in range(30):
        np.savez(tmp_path / "d" / f"{k:02d}.npz", x=rng.standard_normal((1, 16, 8, 8)).astype(np.float32))
    (tmp_path / "hand.json").write_text(json.dumps({"a": 50.0}))
    s = quantize(m, tmp_path / "d", ranges=str(tmp_path / "hand.json"), quiet=True, mixed_precision=False).summary
    kinds = {c["kind"]: c for c in s.diagnosis}
    assert kinds["imported range"]["subject"] == "a"
    assert kinds["layer"]["subject"] in ("b", "cat")
    assert kinds["layer"]["text"].endswith("its scale is your range for 'a' (±50), shared through one scale group: "
                                           "fixing that range fixes this one too"), kinds["layer"]["text"]
