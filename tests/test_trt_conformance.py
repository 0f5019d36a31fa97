"""qdq's TensorRT code read against NVIDIA's own material, not against stand-ins written from the same
reading: the Python API and enum values of TensorRT 8.5, 8.6, 10.3 and 11.0 (fixtures/tensorrt_api.json,
from NVIDIA's bindings and headers), and engine layer information in the JSON forms of 8.x, 10.x and
11.x (fixtures/engine_inspector.json)."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq.pipeline import quantize
from qdq.trt.backend import Backend
from qdq.trt.layers import EngineLogError, engine_view, from_inspector, inspector_dtype
from clitools import one_line_error, run_qdq
from trt_standins import API, make

FIXTURES = Path(__file__).parent / "fixtures"


def test_enum_values_are_nvidias():
    """Values from include/NvInfer.h of each release branch: what the Python enums hold."""
    nd = {v: API[v]["enums"]["NetworkDefinitionCreationFlag"] for v in ("8.5", "10.3", "11.0")}
    assert nd["8.5"] == {"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1}
    assert nd["10.3"] == {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    assert nd["11.0"]["STRONGLY_TYPED"] == 0 and nd["11.0"]["PREFER_JIT_PYTHON_PLUGINS"] == 1
    bf = {v: API[v]["enums"]["BuilderFlag"] for v in ("8.5", "10.3", "11.0")}
    assert (bf["8.5"]["OBEY_PRECISION_CONSTRAINTS"], bf["10.3"]["OBEY_PRECISION_CONSTRAINTS"]) == (10, 9)
    assert not {"FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"} & set(bf["11.0"])


@pytest.mark.parametrize("version,flags", [("8.5.2", 1), ("8.6.1", 1), ("10.3.0", 0), ("11.0.0", 1)])
def test_network_flags_per_version(version, flags):
    """8.x: 1 << EXPLICIT_BATCH (bit 0); 10.x: 0 (always explicit); 11.x: 1 << STRONGLY_TYPED, which is
    bit 0 there; bit 1 would be PREFER_JIT_PYTHON_PLUGINS."""
    mod = make(version)
    assert Backend("tensorrt", mod, version).network_flags() == flags


def test_standins_expose_only_the_versions_api():
    """What the bindings of each release register: ParserError.node_name from 10.x on (not 8.6);
    ILayer.precision up to 10.x; no FP16/INT8 builder flags on 11."""
    assert "node_name" not in API["8.6"]["classes"]["ParserError"] and "node_name" in API["10.3"]["classes"]["ParserError"]
    assert "precision" in API["10.3"]["classes"]["ILayer"] and "precision" not in API["11.0"]["classes"]["ILayer"]
    assert not hasattr(make("11.0.0").BuilderFlag, "FP16") and hasattr(make("10.3.0").BuilderFlag, "FP16")


def _model():
    """x → Conv c1 → Relu r1 → Conv c2 → Add (shortcut r1) → Conv c3 → y, 16/32 channels."""
    rng = np.random.default_rng(0)
    w = {"w1": rng.standard_normal((32, 16, 3, 3)) * .2, "w2": rng.standard_normal((32, 32, 3, 3)) * .1,
         "w3": rng.standard_normal((32, 32, 1, 1)) * .2}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in w.items()]
    inits += [numpy_helper.from_array(np.zeros(32, np.float32), f"b{k}") for k in (1, 2, 3)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a1"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["a1"], ["h1"], name="r1"),
             helper.make_node("Conv", ["h1", "w2", "b2"], ["a2"], name="c2", pads=[1] * 4),
             helper.make_node("Add", ["a2", "h1"], ["s"], name="add"),
             helper.make_node("Conv", ["s", "w3", "b3"], ["y"], name="c3")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture(scope="module")
def qmodel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("d")
    rng = np.random.default_rng(1)
    for k in range(4):
        np.savez(folder / f"{k}.npz", x=rng.standard_normal((1, 16, 8, 8)).astype(np.float32))
    return quantize(_model(), folder, quiet=True, mixed_precision=False, bias_correction=False).model


@pytest.mark.parametrize("form", ["8.x", "10.x", "11.x"])
def test_engine_view_reads_each_inspector_form(qmodel, form):
    info = json.loads((FIXTURES / "engine_inspector.json").read_text())[form]
    layers = from_inspector(info)
    assert [x.type for x in layers] == ["reformat", "convolution", "convolution", "reformat", "convolution"]
    view = engine_view(qmodel, layers)
    assert {w["node"]: w["precision"] for w in view.weighted} == {"c1": "int8", "c2": "int8", "c3": "fp16"}
    assert [w["engine_layer"] == layers[i].name for w, i in zip(view.weighted, (1, 2, 4))] == [True] * 3
    kinds = [(f["kind"], f["node"]) for f in view.findings]
    assert ("int8 in the file, not in the engine", "c3") in kinds
    assert layers[3].reformat and not layers[3].onnx_nodes and view.reformats == 1   # the graph input's Q is a layer


@pytest.mark.parametrize("text,dtype", [
    ("Row major linear FP32", "Float"), ("Row major Int8 format", "Int8"),
    ("Thirty-two wide channel vectorized row major Int8 format", "Int8"),
    ("Channel major FP16 format where channel % 8 == 0", "Half"), ("Row major linear BFloat16 format", "BFloat16"),
    ("Row major linear UInt8 format", "UInt8"), ("Row major linear Int64 format", "Int64"), ("Half", "Half"),
    ("Int8", "Int8"), ("Float", "Float"), ("Row major linear FP8 format", "FP8"), ("N/A due to dynamic shapes", "N/A")])
def test_datatype_strings_of_the_inspector(text, dtype):
    """NVIDIA's format descriptions (TREx's table of them) name one datatype each; BFloat16 is not Float
    and UInt8 is not Int8, though the words contain each other."""
    assert inspector_dtype(text) == dtype


def test_an_unknown_datatype_is_an_error_never_float():
    info = json.loads((FIXTURES / "engine_inspector.json").read_text())["10.x"]
    info["Layers"][1]["Inputs"][0]["Format/Datatype"] = "Row major linear E2M1 format"
    with pytest.raises(EngineLogError, match="unknown datatype"):
        from_inspector(info)
    info["Layers"][1]["Inputs"][0]["Format/Datatype"] = "N/A due to dynamic shapes"
    assert from_inspector(info)[1].precision == "unknown"


def test_written_file_keeps_its_names_for_the_engine(qmodel):
    """The names the fixtures use are the ones qdq writes (Q/DQ named after their tensor)."""
    names = [n.name for n in qmodel.graph.node]
    assert {"x_QuantizeLinear", "x_DequantizeLinear", "w1_DequantizeLinear", "h1_DequantizeLinear", "s_DequantizeLinear",
            "c1", "c2", "c3"} <= set(names)
    onnx.checker.check_model(qmodel, full_check=True)


def _write(tmp_path, name, doc) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_a_real_8x_profile_maps_layers_to_nodes_by_name(tmp_path):
    """The TREx example profile (TensorRT 8.x): layer names join the fused ONNX nodes with ' + '; weight
    names in them are no nodes; reformats are told apart."""
    from qdq.trt.profile import attach, read_profile, timing_view

    prof = read_profile(_write(tmp_path, "p.json", json.loads((FIXTURES / "trtexec_profile.json").read_text())["8.x"]))
    assert len(prof) == 9 and prof[1].ms == pytest.approx(0.201728)
    known = {"QuantizeLinear_2", "QuantizeLinear_7", "Conv_9", "MaxPool_12", "Conv_22", "Conv_34", "Add_36", "Relu_37"}
    layers = attach(prof, known)
    assert layers[1].nodes == ("QuantizeLinear_7", "Conv_9") and layers[3].reformat and not layers[3].nodes
    view = timing_view({"Conv_9": "Conv", "Conv_22": "Conv", "Conv_34": "Conv"}, layers)
    assert [n.int8_ms for n in view.nodes] == pytest.approx([0.201728, 0.032768, 0.036864])
    assert view.reformat_ms["int8"] == pytest.approx(0.036864)


@pytest.mark.parametrize("form", ["10.x", "11.x"])
def test_device_timings_name_the_layer_slower_in_int8(qmodel, tmp_path, form, capsys):
    from qdq.cli.main import main

    profiles = json.loads((FIXTURES / "trtexec_profile.json").read_text())
    info = json.loads((FIXTURES / "engine_inspector.json").read_text())[form]
    onnx.save(qmodel, tmp_path / "q.onnx")
    args = [str(a) for a in ("check", tmp_path / "q.onnx", "--profile", _write(tmp_path, "int8.json", profiles[form]),
                             "--profile-fp16", _write(tmp_path, "fp16.json", profiles["fp16"]),
                             "--layer-info", _write(tmp_path, "int8_layers.json", info), "--json")]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    by = {n["node"]: n for n in doc["nodes"]}
    assert by["c2"]["slower"] and not by["c1"]["slower"] and doc["exclude"] == "--exclude c2"
    assert by["c3"]["precision"] == "fp16" and by["c1"]["precision"] == "int8"
    assert doc["reformat_ms"]["int8"] == pytest.approx(0.003) and doc["unmapped"] == {"int8": [], "fp16": []}
    assert main(args[:-1]) == 0
    text = capsys.readouterr().out
    assert "1 layers are slower in INT8 than in FP16" in text and "--exclude c2" in text


def test_a_profile_qdq_cannot_read_or_map_is_one_clear_line(qmodel, tmp_path):
    profiles = json.loads((FIXTURES / "trtexec_profile.json").read_text())
    onnx.save(qmodel, tmp_path / "q.onnx")
    odd = [dict(e) for e in profiles["10.x"]]
    odd[1]["stdMs"] = 0.1
    one_line_error(run_qdq("check", tmp_path / "q.onnx", "--profile", _write(tmp_path, "odd.json", odd)),
                   "odd.json", "unknown fields ['stdMs']")
    from qdq.errors import QdqError
    from qdq.trt.profile import attach, read_profile, timing_view

    other = attach(read_profile(_write(tmp_path, "other.json", profiles["8.x"])), {n.name for n in qmodel.graph.node})
    with pytest.raises(QdqError, match="names none of the model's weighted layers"):
        timing_view({"c1": "Conv", "c2": "Conv", "c3": "Conv"}, other)
