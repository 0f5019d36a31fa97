"""What TensorRT builds, read from TensorRT-RTX's ahead-of-time build on this CPU: every weighted
layer's engine precision, Q/DQ that do not fuse, the engine's size, and a log format we cannot read."""
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from clitools import one_line_error, run_qdq
from qdq.trt.backend import built_view
from qdq.trt.layers import EngineLogError, parse_log
from qdq.pipeline import quantize
from qdq.trt.backend import check_model

PLANTED = "/blocks/blocks.5/layers/layers.2/conv/Conv"


@pytest.fixture(scope="module")
def eff_int8(effnet):
    return quantize(effnet.model, effnet.calib, preprocess=effnet.preprocess, limit=8, quiet=True, mixed_precision=False)


def test_every_quantized_layer_runs_int8_and_the_views_agree(eff_int8, tmp_path):
    path = tmp_path / "e.onnx"
    onnx.save(eff_int8.model, path)
    r = run_qdq("check", path, "--layers", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    by_node = {w["node"]: w for w in doc["weighted"]}
    assert by_node["/stem/conv/Conv"]["precision"] == "fp32" and not by_node["/stem/conv/Conv"]["file_int8"]
    int8 = [w for w in doc["weighted"] if w["file_int8"]]
    assert len(int8) == 48 and all(w["precision"] == "int8" for w in int8)
    assert not [f for f in doc["findings"] if f["kind"] in ("int8 in the file, not in the engine", "views disagree")]
    assert doc["int8_layers"] == 48 and doc["int8_mac_share"] > 0.95
    assert doc["shapes"] == {"input": [1, 3, 224, 224]}
    assert all(x["precision"] in ("int8", "fp16", "fp32", "other") for x in doc["layers"])
    assert any(len(x["onnx_nodes"]) >= 3 for x in doc["layers"])       # Q, conv and DQ fused in one engine layer


def _plant_per_channel(model):
    """Make one conv's activation Q/DQ per-channel: valid ONNX, but TensorRT builds that conv in float."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    conv = next(n for n in m.graph.node if n.name == PLANTED)
    dq = next(n for n in m.graph.node if n.output[0] == conv.input[0])
    q = next(n for n in m.graph.node if n.output[0] == dq.input[0])
    inits = {t.name: t for t in m.graph.initializer}
    scale = float(numpy_helper.to_array(inits[dq.input[1]]))
    channels = next(t for t in m.graph.initializer if t.name == f"{conv.input[1].replace('_dequantized', '')}_quantized"
                    ).dims[1]
    m.graph.initializer.extend([numpy_helper.from_array(np.full(channels, scale, np.float32), "pc_scale"),
                                numpy_helper.from_array(np.zeros(channels, np.int8), "pc_zp")])
    for n in (q, dq):
        n.input[1], n.input[2] = "pc_scale", "pc_zp"
        n.attribute.append(onnx.helper.make_attribute("axis", 1))
    return m


def test_a_qdq_that_cannot_fuse_is_named_with_its_cause(eff_int8):
    view, _ = built_view(_plant_per_channel(eff_int8.model))
    layer = next(w for w in view.weighted if w["node"] == PLANTED)
    assert layer["file_int8"] and layer["precision"] == "fp32"
    finding = next(f for f in view.findings if f["node"] == PLANTED)
    assert finding["kind"] == "int8 in the file, not in the engine" and "per-channel" in finding["message"]
    assert view.int8_layers == 47


def test_engine_size_is_explained_and_depthwise_padding_can_be_removed(effnet, eff_int8):
    """TensorRT-RTX pads each INT8 depthwise conv to 4 channels per group with an Int8 zero block the
    size of its input: that, not the weights, makes the INT8 engine larger than the FP16 one."""
    full, _ = built_view(eff_int8.model)
    assert full.depthwise_int8 == 16
    padding = lambda v: sum(c.bytes for x in v.layers if x.type == "kgen" for c in x.constants if c.dtype == "Int8")  # noqa: E731
    assert padding(full) > 10e6 and "16 INT8 depthwise convs" in full.size_note()
    no_dw = quantize(effnet.model, effnet.calib, preprocess=effnet.preprocess, limit=8, quiet=True,
                     mixed_precision=False, exclude=["depthwise"])
    light, _ = built_view(no_dw.model)
    assert light.depthwise_int8 == 0 and padding(light) < 1e5
    assert light.engine_bytes < full.engine_bytes - 8e6


def test_trt_build_reports_engine_bytes(prepared, tmp_path):
    from qdq.calib.data import Dataset, model_inputs
    from qdq.modelio import load_model, save_model
    from qdq.cli.trt import engines_on

    ds = prepared("effnet")
    q = quantize(ds.model, ds.calib, preprocess=ds.preprocess, limit=8, quiet=True, mixed_precision=False)
    qpath = save_model(q.model, tmp_path / "q.onnx")
    data = Dataset(ds.val, model_inputs(load_model(ds.model)), ds.preprocess, limit=1)
    eng = engines_on(ds.model, qpath, data, tmp_path / "engines", quiet=True)
    assert eng.fp16_bytes == eng.fp16.stat().st_size and eng.int8_bytes == eng.int8.stat().st_size
    assert eng.int8_layers["int8_layers"] == 48 and "MB engine" in eng.int8_layers["size"]


def test_an_unreadable_layer_list_is_a_clear_error_never_numbers(eff_int8, tmp_path):
    res = check_model(eff_int8.model, verbose=True)
    assert parse_log(res.log)                                   # the real one reads
    changed = [m.replace("LayerType:", "Kind:") for m in res.log]
    with pytest.raises(EngineLogError, match="could not read the engine layer list"):
        parse_log(changed)
    with pytest.raises(EngineLogError, match="no 'Layers:' section"):
        parse_log([m for m in res.log if "Layers:" not in m])


def test_engine_view_in_quantize_and_the_compare_report(effnet, tmp_path):
    out = tmp_path / "q.onnx"
    pre = ["--scale", "1", "--mean", "127,127,127", "--std", "128,128,128"]
    r = run_qdq("quantize", effnet.model, "--calib", effnet.calib, "-o", out, "--limit", "24", "--json", *pre)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["engine"]["int8_layers"] == len(summary["quantized_layers"])
    report = tmp_path / "r.html"
    r = run_qdq("compare", effnet.model, out, "--data", effnet.val, "--limit", "2", "--no-budget", "-q",
                "--report", report, *pre)
    assert r.returncode == 0, r.stderr
    page = report.read_text()
    weighted = len(summary["quantized_layers"]) + len(summary["skipped"])
    assert 'id="precision-strip"' in page and page.count('class="engine-layer') == weighted
    assert page.count('stroke="#000"') == len(summary["float_layers"])     # mixed precision's float layers
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(out.read_bytes()[:500])
    one_line_error(run_qdq("check", bad, "--layers"), "trunc.onnx")
