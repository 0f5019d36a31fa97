"""Attention as a unit, on a synthetic self-attention block with a known structure: Q·Kᵀ → scale →
mask → Softmax → (Dropout) → ·V, found as one block, placed with both MatMul inputs and the softmax
output quantized, moved by mixed precision as a whole, and linted when a file splits it."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq.graph.index import GraphIndex
from qdq.graph.placement import attention_units, place
from qdq.measure.mixed_precision import by_unit
from qdq.pipeline import quantize
from qdq.report.inspection import inspect_model

T, D = 16, 64


def _block(dropout: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    w = {k: numpy_helper.from_array((rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32), k)
         for k in ("wq", "wk", "wv", "wo")}
    consts = [numpy_helper.from_array(np.float32(1 / np.sqrt(D)), "scale"),
              numpy_helper.from_array(np.triu(np.full((T, T), -1e4, np.float32), 1), "mask")]
    nodes = [helper.make_node("MatMul", ["x", k], [k[1]], name=f"proj_{k[1]}") for k in ("wq", "wk", "wv")]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
              helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scale_mul"),
              helper.make_node("Add", ["scaled", "mask"], ["masked"], name="mask_add"),
              helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1)]
    probs = "probs"
    if dropout:
        nodes.append(helper.make_node("Dropout", ["probs"], ["probs_d"], name="dropout"))
        probs = "probs_d"
    nodes += [helper.make_node("MatMul", [probs, "v"], ["ctx"], name="av"),
              helper.make_node("MatMul", ["ctx", "wo"], ["y"], name="proj_o")]
    g = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, D])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, D])], list(w.values()) + consts)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("dropout", [False, True])
def test_the_block_is_found_and_placed_whole(dropout):
    idx = GraphIndex.build(_block(dropout))
    units = attention_units(idx)
    assert [(idx.nodes[a].name, idx.nodes[b].name) for a, b in units] == [("qk", "av")]
    plan = place(idx)
    qk, av = units[0]
    assert {qk, av} <= set(plan.quantized_layers)
    users = {t: set(u) for t, u in plan.activations.items()}
    assert (qk, 0) in users["q"] and (qk, 1) in users["kt"] and (av, 1) in users["v"]
    assert (av, 0) in users["probs_d" if dropout else "probs"], "the softmax output is quantized for ·V"


def test_mixed_precision_merges_a_block_and_expands_it():
    cands, macs, expand = by_unit({4: 1.0, 7: 3.0, 9: 0.5}, {4: 10, 7: 20, 9: 5}, [(4, 7)])
    assert cands == {4: 4.0, 9: 0.5} and macs == {4: 30, 9: 5}
    assert expand({4}) == {4, 7} and expand({9}) == {9} and expand(set()) == set()


def test_quantize_keeps_a_block_whole_and_inspect_flags_a_split(tmp_path):
    model = _block()
    onnx.save(model, tmp_path / "attn.onnx")
    (tmp_path / "data").mkdir()
    rng = np.random.default_rng(0)
    for k in range(30):
        np.savez(tmp_path / "data" / f"s{k:02d}.npz", x=rng.standard_normal((1, T, D)).astype(np.float32) * 3)
    q = quantize(tmp_path / "attn.onnx", tmp_path / "data", quiet=True, max_loss_db=0.5)
    # the block (11 % of the MACs) is what the 0.5 dB target and the 85 % floor leave room for, whole
    assert {f["node"] for f in q.summary.float_layers} == {"qk", "av"}
    loose = quantize(tmp_path / "attn.onnx", tmp_path / "data", quiet=True, max_loss_db=0.5, min_int8_share=0.5)
    floated = {f["node"] for f in loose.summary.float_layers}
    assert ("qk" in floated) == ("av" in floated) and len(floated) > 2, floated
    assert not [f for f in inspect_model(q.model).findings if f.rule == "QDQ010"]
    # a file that splits the block (qk float, av INT8) is flagged
    split = quantize(tmp_path / "attn.onnx", tmp_path / "data", quiet=True, exclude=["qk"], mixed_precision=False)
    found = [f for f in inspect_model(split.model).findings if f.rule == "QDQ010"]
    assert len(found) == 1 and "'qk' is float, 'av' INT8" in found[0].message


def _heads_block(t: int = 32, d: int = 128, heads: int = 2) -> onnx.ModelProto:
    """Self-attention as exporters write it for BERT-like models: Linear → Reshape to heads → Transpose
    (K to [B, N, H, S]) → Q·Kᵀ → Div by √H → mask Add → Softmax → ·V → Transpose → Reshape → Linear."""
    rng, dh = np.random.default_rng(2), d // heads
    inits = [numpy_helper.from_array((rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32), k)
             for k in ("wq", "wk", "wv", "wo")]
    inits += [numpy_helper.from_array(np.array([1, t, heads, dh], np.int64), "to_heads"),
              numpy_helper.from_array(np.array([1, t, d], np.int64), "merged"),
              numpy_helper.from_array(np.float32(np.sqrt(dh)), "sqrt_h"),
              numpy_helper.from_array(np.triu(np.full((t, t), -1e4, np.float32), 1), "mask")]
    nodes = [helper.make_node("MatMul", ["x", f"w{k}"], [f"{k}0"], name=f"proj_{k}") for k in "qkv"]
    nodes += [helper.make_node("Reshape", [f"{k}0", "to_heads"], [f"{k}r"], name=f"heads_{k}") for k in "qkv"]
    nodes += [helper.make_node("Transpose", ["qr"], ["q"], name="t_q", perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["kr"], ["kt"], name="t_k", perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["vr"], ["v"], name="t_v", perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
              helper.make_node("Div", ["scores", "sqrt_h"], ["scaled"], name="scale_div"),
              helper.make_node("Add", ["scaled", "mask"], ["masked"], name="mask_add"),
              helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="av"),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], name="t_ctx", perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx_t", "merged"], ["ctx_m"], name="merge"),
              helper.make_node("MatMul", ["ctx_m", "wo"], ["y"], name="proj_o")]
    g = helper.make_graph(nodes, "heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, t, d])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, t, d])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.slow
def test_an_int8_attention_block_builds_as_one_fused_int8_attention_kernel(tmp_path):
    """The placement quantizes Q, Kᵀ, V and the softmax output, the inputs TensorRT's fused attention
    takes in INT8: TensorRT-RTX builds Q·Kᵀ, the softmax and ·V as one engine layer in INT8, and the
    file's INT8 layers are the engine's (the graph input's Q runs alone, as any input's does)."""
    from qdq.trt.backend import built_view

    onnx.save(_heads_block(), tmp_path / "heads.onnx")
    (tmp_path / "data").mkdir()
    rng = np.random.default_rng(3)
    for k in range(24):
        np.savez(tmp_path / "data" / f"s{k:02d}.npz", x=3 * rng.standard_normal((1, 32, 128)).astype(np.float32))
    q = quantize(tmp_path / "heads.onnx", tmp_path / "data", quiet=True, mixed_precision=False, smoothquant="off")
    view, why = built_view(q.model)
    assert why is None, why
    rows = {w["node"]: w for w in view.weighted}
    assert rows["qk"]["engine_layer"] == rows["av"]["engine_layer"]
    assert rows["qk"]["precision"] == rows["av"]["precision"] == "int8"
    fused = next(x for x in view.layers if x.name == rows["qk"]["engine_layer"])
    assert {"qk", "softmax", "av"} <= set(fused.onnx_nodes)
    assert view.int8_layers == 6 and not [f for f in view.findings if f["kind"] == "int8 in the file, not in the engine"]
