"""The device in the loop, end to end, with Polygraphy's ONNX Runtime backend standing in for TensorRT:
qdq bundle → polygraphy run --load-inputs … --save-outputs … on the float and the Q/DQ file → qdq compare
--outputs … --reference-outputs … gives the figures qdq compare gives on the models directly."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from clitools import one_line_error, run_qdq
from qdq.bundle import bundle
from qdq.calib.polygraphy_io import read_inputs, read_outputs
from qdq.errors import QdqError
from qdq.measure.comparison import compare
from qdq.measure.device import compare_device
from qdq.pipeline import quantize

pytest.importorskip("polygraphy")
POLYGRAPHY = "import sys; from polygraphy.tools import main; sys.argv[0] = 'polygraphy'; sys.exit(main())"


def polygraphy(*args):
    r = subprocess.run([sys.executable, "-c", POLYGRAPHY, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-800:] + r.stderr[-800:]
    return r


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A small CNN quantized by qdq, its bundle, and Polygraphy's saved outputs of both models."""
    root = tmp_path_factory.mktemp("loop")
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((32, 16, 3, 3)) * 0.1).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(32, np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((32, 32, 3, 3)) * 0.1).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal(32) * 0.1).astype(np.float32), "b2"),
             numpy_helper.from_array((rng.standard_normal((10, 32)) * 0.3).astype(np.float32), "wf")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf"], ["logits"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), root / "m.onnx")
    (root / "data").mkdir()
    for k in range(40):
        np.savez(root / "data" / f"s{k:02d}.npz", x=rng.standard_normal((1, 16, 16, 16)).astype(np.float32))
    q = quantize(root / "m.onnx", root / "data", quiet=True)
    onnx.save(q.model, root / "q.onnx")
    b = bundle(root / "m.onnx", root / "q.onnx", root / "data", root / "bundle", samples=12, quiet=True)
    d = b.folder
    for model, out in (("model_int8.onnx", "int8.json"), ("model_float.onnx", "fp32.json")):
        polygraphy("run", d / model, "--onnxrt", "--load-inputs", d / "inputs.json", "--save-outputs", d / out)
    return root, b


def test_bundle_holds_the_samples_the_prediction_and_the_commands(loop):
    root, b = loop
    d = b.folder
    assert len(b.samples) == 12 and len(read_inputs(d / "inputs.json")) == 12
    assert {"RUN.txt", "inputs.json", "model_float.onnx", "model_int8.onnx", "prediction.json"} <= {p.name for p in d.iterdir()}
    pred = json.loads((d / "prediction.json").read_text())
    assert pred["samples"] == b.samples and pred["int8_vs_fp16"]["sqnr"]["samples"] == 12
    run = (d / "RUN.txt").read_text()
    assert "polygraphy run model_int8.onnx --trt --int8 --fp16" in run and "--load-inputs inputs.json" in run
    assert "--exportProfile=int8_profile.json --exportLayerInfo=int8_layers.json" in run
    assert "--profilingVerbosity=detailed" in run and "qdq compare model_float.onnx model_int8.onnx" in run
    assert "qdq check model_int8.onnx --profile int8_profile.json --profile-fp16 fp16_profile.json" in run


def test_polygraphy_reads_our_inputs_as_we_wrote_them(loop, tmp_path):
    """Polygraphy loads inputs.json and saves it back (--save-inputs): the same arrays, bit for bit."""
    _, b = loop
    polygraphy("run", b.folder / "model_float.onnx", "--onnxrt", "--load-inputs", b.folder / "inputs.json",
               "--save-inputs", tmp_path / "again.json")
    ours, theirs = read_inputs(b.folder / "inputs.json"), read_inputs(tmp_path / "again.json")
    assert len(ours) == len(theirs) and all(np.array_equal(a["x"], t["x"]) for a, t in zip(ours, theirs))


def test_saved_outputs_give_the_figures_of_running_the_models(loop):
    root, b = loop
    d = b.folder
    direct = compare(root / "m.onnx", root / "q.onnx", d / "inputs.json", remainder="fp32", budget=False, quiet=True)
    saved = compare(root / "m.onnx", root / "q.onnx", d / "inputs.json", remainder="fp32", quiet=True,
                    outputs=d / "int8.json", reference_outputs=d / "fp32.json")
    assert saved.samples == direct.samples == 12
    # Polygraphy's ONNX Runtime session and qdq's round a hair differently at 55 dB (its graph optimizations)
    for key, tol in (("value", 0.05), ("low", 0.1), ("high", 0.1)):
        assert saved.sqnr[key] == pytest.approx(direct.sqnr[key], abs=tol), (saved.sqnr, direct.sqnr)
    assert saved.task["name"] == direct.task["name"] == "classify"
    dev = compare_device(root / "m.onnx", root / "q.onnx", d / "inputs.json", d / "int8.json", remainder="fp32",
                         quiet=True)
    assert dev.agreement.agree and dev.agreement.text.endswith("agree"), dev.agreement.text


def test_compare_cli_prints_device_beside_prediction(loop):
    root, b = loop
    d = b.folder
    r = run_qdq("compare", root / "m.onnx", root / "q.onnx", "--data", d / "inputs.json", "--outputs", d / "int8.json",
                "--reference-outputs", d / "fp32.json", "--remainder", "fp32", "--json", "-")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["agreement"]["agree"] and doc["device"]["samples"] == 12


def test_the_bundles_own_compare_line_prints_against_the_devices_fp16(loop):
    """RUN.txt's command (--reference fp16 with the device's FP16 outputs, a table for people): the
    device's FP16 reference also measured against FP32 run here, no internal error."""
    root, b = loop
    d = b.folder
    r = run_qdq("compare", d / "model_float.onnx", d / "model_int8.onnx", "--data", d / "inputs.json", "--outputs",
                d / "int8.json", "--reference-outputs", d / "fp32.json", "--reference", "fp16")
    assert r.returncode == 0, r.stderr
    assert "FP16 vs FP32 dB" in r.stdout and "as the device ran it" in r.stdout
    row = next(line for line in r.stdout.splitlines() if line.startswith("│ logits"))
    assert row.rstrip(" │").endswith("inf")   # the saved "FP16" outputs here are ORT's FP32: identical


def test_saved_outputs_that_do_not_match_are_one_clear_line(loop, tmp_path):
    root, b = loop
    d = b.folder
    iterations = read_outputs(d / "int8.json")
    assert len(iterations) == 12
    short = json.loads((d / "int8.json").read_text())
    short["lst"][0][1] = short["lst"][0][1][:5]
    (tmp_path / "short.json").write_text(json.dumps(short))
    r = run_qdq("compare", root / "m.onnx", root / "q.onnx", "--data", d / "inputs.json",
                "--outputs", tmp_path / "short.json")
    one_line_error(r, "short.json", "holds 5 iterations")
    two = json.loads((d / "int8.json").read_text())
    two["lst"].append(["trt-runner-N0", two["lst"][0][1]])
    (tmp_path / "two.json").write_text(json.dumps(two))
    with pytest.raises(QdqError, match="holds the runners"):
        read_outputs(tmp_path / "two.json")
    assert len(read_outputs(tmp_path / "two.json", "trt-runner")) == 12
    (tmp_path / "bad.json").write_text(json.dumps([{"x": {"array": "AAAA", "polygraphy_class": "ndarray"}}]))
    with pytest.raises(QdqError, match="bad.json"):
        read_inputs(tmp_path / "bad.json")


def test_rank_puts_a_layer_no_faster_in_int8_first():
    """Three layers of equal MACs; layer 2 costs least noise but the device runs it slower in INT8."""
    from qdq.measure.mixed_precision import rank

    cands, macs = {0: 3.0, 1: 2.0, 2: 1.0}, {0: 100, 1: 100, 2: 100}
    assert rank(cands, macs) == [0, 1, 2]
    assert rank(cands, macs, {0: 0.5, 1: 0.5, 2: -0.2}) == [2, 0, 1]
    assert rank(cands, macs, {0: 0.0, 1: 0.5, 2: -0.2}) == [2, 0, 1], "the most slowed first"
    assert rank(cands, macs, {0: 0.1, 1: 0.6}) == [0, 1, 2], "layer 0 saves little time: its noise per useful MAC rises"
    assert rank(cands, macs, {0: 0.05, 1: 0.5, 2: 0.5}) == [0, 1, 2]
    assert rank({0: 1.0, 1: 1.5}, {0: 100, 1: 100}, {0: 0.9, 1: 0.1}) == [1, 0]


def test_quantize_floats_the_layer_the_device_runs_slower_in_int8(loop, tmp_path):
    """With the device's profiles, mixed precision keeps the layer that INT8 does not speed up in float
    first, where by noise per MAC alone it would keep another."""
    root, _ = loop
    q = onnx.load(root / "q.onnx")
    plain = quantize(root / "m.onnx", root / "data", quiet=True, min_int8_share=0.3, max_loss_db=0.0)
    first = [f["node"] for f in plain.summary.float_layers]
    weighted = [n.name for n in q.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    other = next(n for n in ("conv1", "conv2") if n not in first)
    prof = (lambda ms: [{"count": 1}] + [{"name": n, "timeMs": ms(n), "averageMs": ms(n), "medianMs": ms(n), "percentage": 0}
                                          for n in weighted])
    (tmp_path / "int8_profile.json").write_text(json.dumps(prof(lambda n: 0.02 if n == other else 0.01)))
    (tmp_path / "fp16_profile.json").write_text(json.dumps(prof(lambda n: 0.015)))
    timed = quantize(root / "m.onnx", root / "data", quiet=True, min_int8_share=0.3, max_loss_db=0.0,
                     device_profile=tmp_path)
    assert [f["node"] for f in timed.summary.float_layers][:1] == [other], (first, timed.summary.float_layers)
    assert any(w.startswith("device profile") and other in w for w in timed.summary.warnings)


def test_a_device_that_differs_is_named_with_its_samples(loop, tmp_path):
    """Outputs scaled by 1.1 on the device (as a wrong scale would): beyond the intervals, said per output
    with the samples furthest apart, and with the layers the engine ran otherwise when known."""
    import base64
    import io

    from qdq.measure.device import agreement

    root, b = loop
    d = b.folder
    doc = json.loads((d / "int8.json").read_text())
    for it in doc["lst"][0][1]:
        arr = it["outputs"]["logits"]["values"]
        buf = io.BytesIO()
        np.save(buf, np.load(io.BytesIO(base64.b64decode(arr["array"]))) * 1.1)
        arr["array"] = base64.b64encode(buf.getvalue()).decode()
    (tmp_path / "scaled.json").write_text(json.dumps(doc))
    dev = compare_device(root / "m.onnx", root / "q.onnx", d / "inputs.json", tmp_path / "scaled.json", quiet=True)
    a = dev.agreement
    assert not a.agree and "disagree beyond the intervals on logits" in a.text and len(a.samples) == 3
    assert a.samples[0]["sample"] in b.samples
    named = agreement(dev.device.sqnr, dev.predicted.sqnr, None, ["conv2 (Q/DQ in the file, but TensorRT runs it in fp16)"])
    assert "runs 1 layers in another precision than the file plans: conv2" in named.text


def test_bundle_with_bad_input_writes_nothing(loop, tmp_path):
    root, _ = loop
    r = run_qdq("bundle", root / "m.onnx", tmp_path / "missing.onnx", "--data", root / "data", "-o", tmp_path / "b")
    one_line_error(r, "missing.onnx")
    r = run_qdq("bundle", root / "m.onnx", root / "q.onnx", "--data", tmp_path / "nodata", "-o", tmp_path / "b")
    one_line_error(r, "nodata")
    assert not (tmp_path / "b").exists()


def test_onnx_runtime_outputs_of_an_fp16_file_come_with_the_caveat(loop, tmp_path):
    """A trt11 file (FP16 scales) run by Polygraphy's ONNX Runtime runner: the agreement says that runner
    is no stand-in for TensorRT there (docs/jetson.md), whatever the figures."""
    root, _ = loop
    q = quantize(root / "m.onnx", root / "data", quiet=True, target="trt11")
    onnx.save(q.model, tmp_path / "q11.onnx")
    b = bundle(root / "m.onnx", tmp_path / "q11.onnx", root / "data", tmp_path / "b", samples=4, quiet=True)
    assert (b.folder / "model_fp16.onnx").exists() and "--int8" not in "\n".join(b.commands)
    polygraphy("run", b.folder / "model_int8.onnx", "--onnxrt", "--load-inputs", b.folder / "inputs.json",
               "--save-outputs", tmp_path / "int8.json")
    dev = compare_device(root / "m.onnx", tmp_path / "q11.onnx", b.folder / "inputs.json", tmp_path / "int8.json", quiet=True)
    assert "Polygraphy's ONNX Runtime runner" in dev.agreement.text
