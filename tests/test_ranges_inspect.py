"""Bring-your-own ranges (JSON, TensorRT cache, ONNX Runtime tables), export, and `qdq inspect`
lint rules, each planted on a real model."""
import json
import math
import subprocess
import sys
import time
import urllib.request

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from qdq.errors import QdqError
from qdq.graph.qdq_file import model_ranges, qdq_sites
from qdq.report.inspection import inspect_model
from qdq.pipeline import quantize
from qdq.calib.range_files import read_ranges, trt_cache_text


@pytest.fixture(scope="module")
def eff_direct(effnet):
    return quantize(effnet.model, effnet.calib, method="percentile", preprocess=effnet.preprocess, quiet=True,
                    mixed_precision=False)   # every placement-rule Q/DQ, as a ranges file without data reproduces


@pytest.fixture(scope="module")
def det_direct(ppocr_det):
    return quantize(ppocr_det.model, ppocr_det.calib, preprocess=ppocr_det.preprocess, limit=16, quiet=True,
                    mixed_precision=False)


def _scales(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_scale")}


def test_trt_cache_round_trip_is_bitwise(effnet, eff_direct, tmp_path):
    cache = tmp_path / "calib.cache"
    r = subprocess.run([sys.executable, "-m", "qdq.cli", "ranges", "-", "--to", "trt-cache"], capture_output=True,
                       text=True)  # a one-line error for a missing file, before the real export
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    q = tmp_path / "direct.onnx"
    onnx.save(eff_direct.model, q)
    r = subprocess.run([sys.executable, "-m", "qdq.cli", "ranges", str(q), "--to", "trt-cache", "-o", str(cache)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert cache.read_text().startswith("TRT-8601-EntropyCalibration2\n")
    imported = quantize(effnet.model, None, ranges=cache, quiet=True)   # no calibration data needed
    a, b = _scales(eff_direct.model), _scales(imported.model)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    assert imported.summary.ranges_import["applied"] == len(eff_direct.placement.activations)
    assert imported.summary.samples == 0


def test_cache_with_zero_entries_and_internal_names(effnet, eff_direct, tmp_path):
    scales = {t: a / 127 for t, a in model_ranges(eff_direct.model).items()}
    text = trt_cache_text(scales, 100300, "EntropyCalibration2")
    text += "(Unnamed Layer* 12) [Shuffle]_output: 3c010a14\n/head/conv/Conv_output_0: 0\nlogits: 3e800000\n"
    cache = tmp_path / "c.cache"
    cache.write_text(text)
    rf = read_ranges(cache)
    assert rf.kind == "trt-cache" and rf.header == "TRT-100300-EntropyCalibration2"
    assert rf.amax["logits"] == pytest.approx(0.25 * 127)
    r = quantize(effnet.model, None, ranges=cache, quiet=True)
    imp = r.summary.ranges_import
    assert imp["not_in_model"] == ["(Unnamed Layer* 12) [Shuffle]_output"]
    assert imp["zero"] == ["/head/conv/Conv_output_0"] and "logits" in {u["tensor"] for u in imp["unused"]}


def test_json_ranges_land_on_their_tensors(ppocr_det, det_direct, tmp_path):
    sites = [s.tensor for s in qdq_sites(det_direct.model)]
    t1, t2, t3 = sites[3], sites[10], sites[20]
    f = tmp_path / "ranges.json"
    f.write_text(json.dumps({t1: 5.0, t2: [-2.0, 8.0], t3: {"lowest": [-3.5], "highest": [1.0]}}))
    r = quantize(ppocr_det.model, ppocr_det.calib, ranges=f, preprocess=ppocr_det.preprocess, limit=8, quiet=True,
                 mixed_precision=False)
    back = onnx.load_from_string(r.model.SerializeToString())
    got = {k[: -len("_scale")]: float(v) for k, v in _scales(back).items() if v.size == 1}
    assert got[t1] == pytest.approx(5.0 / 127, rel=1e-7)
    assert got[t2] == pytest.approx(8.0 / 127, rel=1e-7)
    assert got[t3] == pytest.approx(3.5 / 127, rel=1e-7)
    assert r.summary.activations[t1]["method"].startswith("imported")
    assert r.summary.activations[sites[0]]["method"] == "mse"       # the rest calibrated (default method)
    assert any("asymmetric" in w and t2 in w for w in r.summary.warnings)


def test_ort_calibration_cache_is_decimal_amax(tmp_path):
    f = tmp_path / "calibration.cache"
    f.write_text("input 2.5\nconv_out 0.125\n")
    rf = read_ranges(f)
    assert rf.kind == "ort-cache" and rf.amax == {"input": 2.5, "conv_out": 0.125}
    assert "max(lowest, highest)" in rf.note


def test_onnxruntime_calibration_files_as_it_writes_them(tmp_path):
    """ONNX Runtime's own writer: calibration.json as TensorsData with NumPy values as dicts, and a
    .cache holding max(lowest, highest), signed.  [−5, 1] must import as amax 5."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData
    from onnxruntime.quantization.quant_utils import write_calibration_table

    data = TensorsData(CalibrationMethod.MinMax, {
        "a": (np.array(-5.0, np.float32), np.array(1.0, np.float32)),
        "b": (np.array(0.0, np.float32), np.array(2.5, np.float32))})
    write_calibration_table(data, str(tmp_path))
    rf = read_ranges(tmp_path / "calibration.json")
    assert rf.kind == "ort-json" and rf.amax == {"a": 5.0, "b": 2.5} and rf.asymmetric == ["a", "b"]
    rf = read_ranges(tmp_path / "calibration.cache")       # the .json beside it is read instead
    assert rf.amax == {"a": 5.0, "b": 2.5} and "calibration.json" in rf.note
    (tmp_path / "calibration.json").unlink()
    rf = read_ranges(tmp_path / "calibration.cache")       # alone, the signed value is all there is: say so
    assert rf.amax == {"a": 1.0, "b": 2.5} and "import calibration.json" in rf.note


def test_complete_trt_cache_covers_every_layer_and_round_trips(effnet, eff_direct, tmp_path):
    """Implicit INT8 needs a range for every tensor an INT8 layer reads or writes; the Q/DQ ranges
    survive the round trip bit for bit and the header names the calibrator for the method."""
    from qdq.graph.index import GraphIndex
    from qdq.graph.placement import WEIGHTED

    q = tmp_path / "direct.onnx"
    onnx.save(eff_direct.model, q)
    cache = tmp_path / "full.cache"
    r = subprocess.run([sys.executable, "-m", "qdq.cli", "ranges", str(q), "--to", "trt-cache", "-o", str(cache),
                        "--calib", str(effnet.calib), "--limit", "8", "--scale", "1", "--mean", "127,127,127",
                        "--std", "128,128,128", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = cache.read_text().splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"          # percentile: TensorRT reads it with EntropyCalibrator2
    names = {ln.rsplit(":", 1)[0] for ln in lines[1:]}
    fidx = GraphIndex.build(eff_direct.float_model)
    for node in fidx.nodes:
        if node.op_type in WEIGHTED or node.op_type in ("Add", "Clip", "GlobalAveragePool", "Flatten"):
            for t in [node.input[0], *node.output]:
                assert t in names, (node.name, t)              # Conv outputs included
    from qdq.trt_cache import network_tensors

    assert set(network_tensors(eff_direct.float_model)) <= names    # every tensor TensorRT's network has
    assert len(names) > len(eff_direct.placement.activations) + 40
    imported = quantize(effnet.model, None, ranges=cache, quiet=True)
    a, b = _scales(eff_direct.model), _scales(imported.model)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    r = subprocess.run([sys.executable, "-m", "qdq.cli", "ranges", str(q), "--to", "trt-cache", "--method", "max",
                        "--calib", str(effnet.calib), "--limit", "2", "-q", "--scale", "1"], capture_output=True, text=True)
    assert r.stdout.startswith("TRT-8601-MinMaxCalibration\n"), r.stderr
    r = subprocess.run([sys.executable, "-m", "qdq.cli", "ranges", str(q), "--to", "trt-cache"], capture_output=True,
                       text=True)                               # without data: exported, and said to be incomplete
    assert r.returncode == 0 and "incomplete" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("text,line,needle", [
    ('{"a": 1,\n "b": }', 2, "malformed JSON"),
    ("TRT-8601-EntropyCalibration2\nx: 3c01\n", 2, "hex"),
    ("TRT-8601-EntropyCalibration2\nx: 3c010a14\nx: 3c010a14\n", 3, "twice"),
    ('{"a": -1}', None, ">= 0"),
    ('{"a": NaN}', None, "finite"),
    ('{"a": [3, 1]}', None, "min <= max"),
    ("conv_out abc\n", 1, "not a number"),
])
def test_bad_ranges_files_give_one_line_errors(tmp_path, text, line, needle):
    f = tmp_path / "r.txt"
    f.write_text(text)
    with pytest.raises(QdqError) as e:
        read_ranges(f)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    if line:
        assert f"{f}:{line}:" in msg


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | st.sampled_from(["TRT-8601-X\n", "{", "TRT-1-E\na: 0\n"]).flatmap(
    lambda head: st.text(max_size=200).map(lambda tail: head + tail)))
def test_parser_fuzz_never_crashes(tmp_path_factory, text):
    f = tmp_path_factory.mktemp("fuzz") / "r"
    f.write_text(text, encoding="utf-8")
    try:
        rf = read_ranges(f)
    except QdqError as e:
        assert "\n" not in str(e)
        return
    assert all(math.isfinite(v) and v > 0 for v in rf.amax.values())


# ---- lint rules, each planted on a real Q/DQ model ----

def _copy(model):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _init(m, name):
    return next(t for t in m.graph.initializer if t.name == name)


def _first(m, op, weight=None):
    inits = {t.name for t in m.graph.initializer}
    return next(n for n in m.graph.node if n.op_type == op and (weight is None or (n.input[0] in inits) == weight))


def _rules(model, target=None):
    return {f.rule for f in inspect_model(model, target).findings}


def test_clean_models_have_no_lint_errors(eff_direct, det_direct):
    for r in (eff_direct, det_direct):
        ins = inspect_model(r.model, "trt10")
        assert ins.errors == 0, [(f.rule, f.message) for f in ins.findings]
    cov = inspect_model(eff_direct.model).coverage
    assert 0.9 < cov["share"] < 1.0 and cov["total_macs"] > 3e8        # stem conv and GEMV stay float
    assert {r["node"] for r in inspect_model(eff_direct.model).float_layers} == {"/stem/conv/Conv", "/fc/Gemm"}


def test_each_lint_rule_fires_on_its_planted_violation(eff_direct, det_direct):
    base = eff_direct.model

    m = _copy(base)
    q = _first(m, "QuantizeLinear")
    _init(m, q.input[2]).CopyFrom(numpy_helper.from_array(np.array(3, np.int8), q.input[2]))
    assert "QDQ001" in _rules(m)

    m = _copy(base)
    _init(m, _first(m, "QuantizeLinear").input[1]).CopyFrom(
        numpy_helper.from_array(np.array(0.0, np.float32), _first(m, "QuantizeLinear").input[1]))
    assert "QDQ002" in _rules(m)

    m = _copy(base)
    out = m.graph.output[0].name
    prod = next(n for n in m.graph.node if out in n.output)
    prod.output[0] = out + "_raw"
    s, z = _first(m, "QuantizeLinear").input[1:3]
    m.graph.node.extend([helper.make_node("QuantizeLinear", [out + "_raw", s, z], [out + "_q"], name="outQ"),
                         helper.make_node("DequantizeLinear", [out + "_q", s, z], [out], name="outDQ")])
    assert "QDQ003" in _rules(m)

    m = _copy(base)
    dq = _first(m, "DequantizeLinear", weight=True)
    for a in dq.attribute:
        if a.name == "axis":
            a.i = 1
    assert "QDQ005" in _rules(m)

    assert "QDQ006" not in _rules(base, "trt8") and "QDQ006" in _rules(quantize_trt11_like(base), "trt8")

    m = _copy(base)
    q = _first(m, "QuantizeLinear")
    m.graph.node.append(helper.make_node("QuantizeLinear", list(q.input), ["dangling_q"], name="danglingQ"))
    assert "QDQ007" in _rules(m)

    m = _copy(base)
    q = _first(m, "QuantizeLinear")
    _init(m, q.input[2]).CopyFrom(numpy_helper.from_array(np.array(0, np.uint8), q.input[2]))
    assert "QDQ008" in _rules(m)

    m = _copy(base)
    conv = next(n for n in m.graph.node if n.op_type == "Conv" and len(n.input) == 3 and n.input[2])
    bias = numpy_helper.to_array(_init(m, conv.input[2]))
    m.graph.initializer.extend([numpy_helper.from_array(np.round(bias / 1e-4).astype(np.int32), "b_i32"),
                                numpy_helper.from_array(np.array(1e-4, np.float32), "b_s"),
                                numpy_helper.from_array(np.array(0, np.int32), "b_z")])
    m.graph.node.insert(0, helper.make_node("DequantizeLinear", ["b_i32", "b_s", "b_z"], ["b_dq"], name="biasDQ"))
    conv.input[2] = "b_dq"
    assert "QDQ009" in _rules(m)

    m = _copy(det_direct.model)
    concat_q = [s for s in qdq_sites(m) if any("Concat" in c for c in s.consumers)]
    if len(concat_q) < 2:  # PP-OCRv4 det's only Concat: plant a second scale on one of its Q/DQ inputs
        concat = _first(m, "Concat")
        src = concat.input[0]
        s, z = _first(m, "QuantizeLinear").input[1:3]
        m.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "other_scale"))
        m.graph.node.append(helper.make_node("QuantizeLinear", [src, "other_scale", z], ["cq"], name="cQ"))
        m.graph.node.append(helper.make_node("DequantizeLinear", ["cq", "other_scale", z], ["cdq"], name="cDQ"))
        src2 = concat.input[1]
        m.graph.node.append(helper.make_node("QuantizeLinear", [src2, s, z], ["cq2"], name="cQ2"))
        m.graph.node.append(helper.make_node("DequantizeLinear", ["cq2", s, z], ["cdq2"], name="cDQ2"))
        concat.input[0], concat.input[1] = "cdq", "cdq2"
    else:
        first = concat_q[0]
        _init(m, f"{first.tensor}_scale").CopyFrom(
            numpy_helper.from_array(np.array(first.scale * 3, np.float32), f"{first.tensor}_scale"))
    assert "QDQ004" in _rules(m)


def quantize_trt11_like(model):
    """FP16 scales at opset 17: invalid for every target."""
    m = _copy(model)
    for t in m.graph.initializer:
        if t.name.endswith("_scale"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    return m


def test_inspect_cli_exit_code_and_netron(eff_direct, tmp_path):
    bad = _copy(eff_direct.model)
    q = _first(bad, "QuantizeLinear")
    _init(bad, q.input[2]).CopyFrom(numpy_helper.from_array(np.array(3, np.int8), q.input[2]))
    bad_path, good_path = tmp_path / "bad.onnx", tmp_path / "good.onnx"
    onnx.save(bad, bad_path)
    onnx.save(eff_direct.model, good_path)
    r = subprocess.run([sys.executable, "-m", "qdq.cli", "inspect", str(bad_path), "--json"], capture_output=True, text=True)
    assert r.returncode == 1 and json.loads(r.stdout)["errors"] >= 1
    r = subprocess.run([sys.executable, "-m", "qdq.cli", "inspect", str(good_path), "--json", "--target", "trt8"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-500:]
    pytest.importorskip("netron")
    port = 18000 + int(time.time()) % 1000
    proc = subprocess.Popen([sys.executable, "-m", "qdq.cli", "inspect", str(good_path), "--netron", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        page = None
        for _ in range(100):
            try:
                page = urllib.request.urlopen(f"http://localhost:{port}/", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert page and 'name="file" content="/data/good.onnx"' in page
        data = urllib.request.urlopen(f"http://localhost:{port}/data/good.onnx", timeout=5).read()
        assert data == good_path.read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_ranges_diff_names_the_tensors_that_moved(effnet, eff_direct, tmp_path):
    a = tmp_path / "a.onnx"
    onnx.save(eff_direct.model, a)                                  # percentile
    ranges = model_ranges(eff_direct.model)
    moved = sorted(ranges)[:3]
    edited = {t: (v * 2 if t in moved else v * 1.01) for t, v in ranges.items()}
    b = tmp_path / "b.json"
    b.write_text(json.dumps(edited))
    r = subprocess.run([sys.executable, "-m", "qdq.cli", "ranges", str(a), str(b), "--ratio", "1.1", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert sorted(d["tensor"] for d in doc["differ"]) == moved
    assert all(d["ratio"] == pytest.approx(2.0) for d in doc["differ"])


def test_forced_ranges_survive_mixed_precision(ppocr_det, det_direct, tmp_path):
    # a Conv output: the placement rules leave it float, --force-ranges puts Q/DQ on it; the layers
    # mixed precision then keeps in float must not take the forced Q/DQ away
    conv_out = next(n.output[0] for n in det_direct.float_model.graph.node if n.op_type == "Conv"
                    and n.output[0] not in det_direct.placement.activations)
    f = tmp_path / "forced.json"
    f.write_text(json.dumps({conv_out: 3.0}))
    r = quantize(ppocr_det.model, ppocr_det.calib, ranges=f, force_ranges=True, preprocess=ppocr_det.preprocess,
                 limit=16, quiet=True)
    assert r.summary.float_layers, "mixed precision kept no layer in float: the test needs one"
    assert conv_out in r.placement.activations
    assert r.summary.activations[conv_out]["amax"] == 3.0
    assert float(_scales(r.model)[f"{conv_out}_scale"]) == pytest.approx(3.0 / 127, rel=1e-7)


def test_a_long_list_of_ranges_not_applied_is_grouped_by_reason():
    """A calibration cache of every tensor leaves hundreds unapplied: one line per reason with its count
    and first tensors; a short list keeps a line per range."""
    import io

    from qdq.report.text import UNUSED_LINES, _unused_lines, console
    rule = "the placement rules put no Q/DQ there (read by Mul 'm{k}'); --force-ranges applies it"
    unused = [{"tensor": f"t{k}", "reason": rule.format(k=k)} for k in range(20)]
    unused += [{"tensor": "i0", "reason": "an integer tensor: no INT8 range"}]
    buf = io.StringIO()
    _unused_lines(console(buf), unused)
    lines = buf.getvalue().splitlines()
    assert lines == ["  not applied: 20 tensors (t0, t1, t2 …): the placement rules put no Q/DQ there; --force-ranges "
                     "applies them", "  not applied: 1 tensor (i0): an integer tensor: no INT8 range",
                     "  (--json lists each range not applied with its reason)"]
    buf = io.StringIO()
    _unused_lines(console(buf), unused[:UNUSED_LINES])
    assert len(buf.getvalue().splitlines()) == UNUSED_LINES and "read by Mul 'm0'" in buf.getvalue()


def test_a_complete_cache_gives_an_all_zero_tensor_a_positive_scale(tmp_path):
    """``qdq ranges MODEL --to trt-cache``: a tensor that is zero on every calibration sample gets scale 1
    (its zeros exact), as the Q/DQ file's scales do, never 0, on which TensorRT 8.5 fails to build;
    the other entries are amax / 127 of their data."""
    from clitools import run_qdq

    w = numpy_helper.from_array(np.zeros((1, 4, 1, 1), np.float32), "zero")
    nodes = [helper.make_node("Mul", ["x", "zero"], ["dead"]), helper.make_node("Add", ["x", "dead"], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 4, 8, 8])],
                                            [helper.make_tensor_value_info("y", 1, [1, 4, 8, 8])], [w]),
                          opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, tmp_path / "m.onnx")
    (tmp_path / "data").mkdir()
    x = np.linspace(-2.54, 2.54, 256, dtype=np.float32).reshape(1, 4, 8, 8)
    np.savez(tmp_path / "data" / "s.npz", x=x)
    r = run_qdq("ranges", tmp_path / "m.onnx", "--to", "trt-cache", "--method", "max", "--calib", tmp_path / "data",
                "-o", tmp_path / "c.cache")
    assert r.returncode == 0, r.stderr
    entries = dict(line.split(": ") for line in (tmp_path / "c.cache").read_text().splitlines()[1:])
    assert entries["dead"] == "3f800000"   # 1.0
    assert read_ranges(tmp_path / "c.cache").amax["x"] == pytest.approx(2.54, rel=1e-6)
