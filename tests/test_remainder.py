"""The engine's FP16 remainder, measured and pinned: a graph that adds and subtracts 2000 (FP16 keeps
no fraction there) is fine as written, lost when TensorRT 8.x/10.x runs its remainder in FP16 with
``--int8 --fp16``, and fine again with the nodes qdq's FP16 plan keeps in FP32 pinned."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq.calib.session import run_session, session_for
from qdq.graph.precision import remainder_fp16, runnable
from qdq.measure.comparison import compare
from qdq.measure.metrics import sqnr_db
from qdq.pipeline import quantize
from qdq.trt.backend import Backend, check_model, pinned_layers, trtexec_lines
from trt_standins import make

FRAGILE = {"add_big", "sub_big"}


def _fragile():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 16, 3, 3)) * s).astype(np.float32), w)
             for w, s in (("w1", 0.05), ("w2", 0.2))]
    inits.append(numpy_helper.from_array(np.full((1,), 2000, np.float32), "k"))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "k"], ["b"], name="add_big"),
             helper.make_node("Sub", ["b", "k"], ["c"], name="sub_big"),
             helper.make_node("Conv", ["c", "w2"], ["y"], name="conv2", pads=[1] * 4)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("d")
    rng = np.random.default_rng(1)
    for k in range(30):
        np.savez(folder / f"{k:02d}.npz", x=rng.standard_normal((1, 16, 16, 16)).astype(np.float32))
    return folder


@pytest.fixture(scope="module")
def trt10(data):
    return quantize(_fragile(), data, quiet=True, target="trt10")


def _sqnr(reference, model, folder):
    a, b = session_for(runnable(reference)), session_for(runnable(model))
    outs = [(run_session(a, {"x": np.load(f)["x"]}, f.name)["y"], run_session(b, {"x": np.load(f)["x"]}, f.name)["y"])
            for f in sorted(folder.iterdir())]
    return sqnr_db(np.concatenate([r for r, _ in outs]), np.concatenate([q for _, q in outs]))


def test_the_plan_finds_the_fragile_nodes_and_the_file_carries_them(trt10):
    assert set(pinned_layers(trt10.model)) == FRAGILE
    assert trt10.summary.accuracy["remainder"] == "fp16"
    onnx.checker.check_model(trt10.model, full_check=True)
    assert not any(t.data_type == TensorProto.FLOAT16 for t in trt10.model.graph.initializer)   # the file stays FP32


def test_held_back_figure_is_the_devices(trt10, data):
    """As written 35 dB; the device with its remainder in FP16 and nothing pinned loses it; pinned, it
    holds; the held-back figure qdq prints is the pinned device's."""
    fm = _fragile()
    as_written = _sqnr(fm, trt10.model, data)
    blind = _sqnr(fm, remainder_fp16(trt10.model), data)
    pinned = _sqnr(fm, remainder_fp16(trt10.model, FRAGILE), data)
    assert as_written > 30 and blind < 15 and pinned > as_written - 1
    acc = trt10.summary.accuracy
    assert acc["final_db"] == pytest.approx(pinned, abs=1.5)
    low, high = acc["final_interval_db"]
    assert low < acc["final_db"] < high
    fp32 = quantize(fm, data, quiet=True, remainder="fp32")
    assert fp32.summary.accuracy["remainder"] == "fp32" and "qdq_fp32_nodes" not in {p.key for p in fp32.model.metadata_props}


def test_compare_runs_the_remainder_as_the_device(trt10, data):
    fm = _fragile()
    device = compare(fm, trt10.model, data, quiet=True, budget=False)
    written = compare(fm, trt10.model, data, quiet=True, budget=False, remainder="fp32")
    assert "2 pinned to FP32" in device.remainder and "as written" in written.remainder
    assert abs(device.outputs[0].metrics["sqnr_db"] - written.outputs[0].metrics["sqnr_db"]) < 1.5
    stripped = onnx.ModelProto()
    stripped.CopyFrom(trt10.model)
    for p in stripped.metadata_props:
        if p.key == "qdq_fp32_nodes":
            p.value = ""                  # the file says: nothing pinned
    assert compare(fm, stripped, data, quiet=True, budget=False).outputs[0].metrics["sqnr_db"] < 15


def test_trtexec_lines_pin_the_fragile_nodes(trt10):
    lines = trtexec_lines("float.onnx", "int8.onnx", None, pins=pinned_layers(trt10.model))
    int8 = next(line for line in lines if "--int8" in line)
    assert "--precisionConstraints=obey" in int8
    spec = int8.split("--layerPrecisions=")[1].split()[0]
    assert {s.split(":")[0] for s in spec.split(",")} == FRAGILE and all(s.endswith(":fp32") for s in spec.split(","))
    assert "--layerOutputTypes=" in int8 and "--precisionConstraints" not in lines[0]


@pytest.mark.parametrize("version", ["8.5.2", "10.3.0", "11.0.0"])
def test_tensorrt_versions_take_the_layer_precisions(trt10, version):
    """8.5 and 10.3 (weakly typed): layer.precision and output types FP32 plus OBEY_PRECISION_CONSTRAINTS,
    through API names NVIDIA's bindings have; 11.0 (strongly typed) has neither and needs none."""
    mod = make(version)
    res = check_model(trt10.model, backend=Backend("tensorrt", mod, version))
    assert res.ok, res.errors
    if version.startswith("11"):
        assert res.pinned == [] and mod.calls["layer_precision"] == {}
        return
    assert set(res.pinned) == FRAGILE
    assert mod.calls["layer_precision"] == {n: mod.float32 for n in FRAGILE}
    assert mod.BuilderFlag.OBEY_PRECISION_CONSTRAINTS in mod.calls["builder_flags"]
    assert {name for name, _ in mod.calls["output_types"]} == FRAGILE


def test_tensorrt_rtx_builds_the_file(trt10):
    res = check_model(trt10.model)
    assert res.ok and res.pinned == []          # strongly typed: precision from the graph
