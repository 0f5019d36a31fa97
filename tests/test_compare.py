"""`qdq compare` on real models: numbers match numpy, a planted wrong range is named first,
FP16 references work, and the HTML report renders in headless Chromium."""
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qdq.calib.session import run_session, session_for
from qdq.graph.precision import remainder_fp16, runnable
from qdq.trt.backend import pinned_layers
from qdq.graph.bypass import activations_only, weights_only
from qdq.measure.comparison import compare
from qdq.calib.data import Dataset, model_inputs
from qdq.report.html import render
from qdq.pipeline import quantize


@pytest.fixture(scope="module")
def eff_q(effnet):
    return quantize(effnet.model, effnet.calib, method="percentile", preprocess=effnet.preprocess, quiet=True).model


@pytest.fixture(scope="module")
def det_q(ppocr_det):
    return quantize(ppocr_det.model, ppocr_det.calib, method="percentile", preprocess=ppocr_det.preprocess,
                    quiet=True).model


def _plant(model, ratio=20.0):
    """Hand-set range: the tensor with the largest amax gets amax/ratio (like ±5 on values reaching 100)."""
    from qdq.graph.qdq_file import qdq_sites

    site = max(qdq_sites(model), key=lambda s: s.amax)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.name == f"{site.tensor}_scale":
            t.CopyFrom(numpy_helper.from_array(np.array(site.scale / ratio, np.float32), t.name))
    return m, site.tensor


@pytest.mark.parametrize("remainder", ["fp32", "fp16"])
def test_output_metrics_match_numpy(effnet, eff_q, remainder):
    """The figures are numpy's on the file as written (fp32) and on the file as the device runs it
    (fp16: its remainder in FP16 with its pinned nodes FP32)."""
    res = compare(effnet.model, eff_q, effnet.val, preprocess=effnet.preprocess, budget=False, quiet=True,
                  remainder=remainder)
    fm = onnx.load(str(effnet.model))
    device = runnable(eff_q) if remainder == "fp32" else remainder_fp16(eff_q, pinned_layers(eff_q))
    fs, qs = session_for(runnable(fm)), session_for(device)
    refs, qs_out = [], []
    for src, feed in Dataset(effnet.val, model_inputs(fm), effnet.preprocess):
        refs.append(run_session(fs, feed, src)["logits"])
        qs_out.append(run_session(qs, feed, src)["logits"])
    r, q = np.concatenate(refs).astype(np.float64), np.concatenate(qs_out).astype(np.float64)
    m = res.outputs[0].metrics
    assert m["sqnr_db"] == pytest.approx(20 * np.log10(np.linalg.norm(r) / np.linalg.norm(q - r)), rel=1e-9)
    assert m["cosine"] == pytest.approx((r.ravel() @ q.ravel()) / np.linalg.norm(r) / np.linalg.norm(q), rel=1e-9)
    assert m["max_abs"] == pytest.approx(np.abs(q - r).max(), rel=1e-9)
    assert m["mean_abs"] == pytest.approx(np.abs(q - r).mean(), rel=1e-9)
    assert m["bias"] == pytest.approx((q - r).mean() / r.std(), rel=1e-6, abs=1e-9)
    assert m["gain"] == pytest.approx(np.polyfit(r.ravel(), q.ravel(), 1)[0], rel=1e-6)
    assert res.outputs[0].top1 == pytest.approx(np.mean(r.argmax(1) == q.argmax(1)))
    top5 = np.argsort(-q, axis=1)[:, :5]
    assert res.outputs[0].top5 == pytest.approx(np.mean((top5 == r.argmax(1)[:, None]).any(1)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["effnet", "ppocr_det"])
def test_planted_wrong_range_is_named_first(request, name):
    ds = request.getfixturevalue(name)
    qmodel = request.getfixturevalue("eff_q" if name == "effnet" else "det_q")
    planted, tensor = _plant(qmodel)
    res = compare(ds.model, planted, ds.val, preprocess=ds.preprocess, layerwise=True, budget=False, quiet=True,
                  limit=12)
    assert res.ranked[0] == tensor
    layer = next(r for r in res.layers if r.tensor == tensor)
    assert layer.clipped > 0.001 and layer.local_sqnr_db < 25
    clean = compare(ds.model, qmodel, ds.val, preprocess=ds.preprocess, budget=False, quiet=True, limit=12)
    assert res.outputs[0].metrics["sqnr_db"] < clean.outputs[0].metrics["sqnr_db"] - 0.5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["effnet", "ppocr_det"])
def test_fp16_reference_and_budget(request, name):
    ds = request.getfixturevalue(name)
    qmodel = request.getfixturevalue("eff_q" if name == "effnet" else "det_q")
    res = compare(ds.model, qmodel, ds.val, preprocess=ds.preprocess, reference="fp16", quiet=True, limit=8)
    out = res.outputs[0]
    assert out.fp16_vs_fp32["sqnr_db"] > 35          # FP16 is far closer to FP32 than INT8 is
    assert 5 < out.metrics["sqnr_db"] < out.fp16_vs_fp32["sqnr_db"]
    b = res.budget
    o = out.name
    assert b["both"][o] == out.metrics["sqnr_db"]
    if {p.key: p.value for p in qmodel.metadata_props}.get("qdq_bias_correction", "off").startswith("off"):
        assert b["weights_only"][o] > b["both"][o]   # a bias correction can take the file past the raw weights
    # the two halves really are what they say
    w_only, a_only = weights_only(qmodel), activations_only(qmodel, onnx.load(str(ds.model)))
    inits = {t.name for t in qmodel.graph.initializer}
    ops = [n.op_type for n in w_only.graph.node]
    assert ops.count("QuantizeLinear") == 0 and ops.count("DequantizeLinear") > 10
    assert [n.op_type for n in a_only.graph.node].count("QuantizeLinear") > 10
    assert not [n for n in a_only.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]


def test_html_report_renders_in_chromium(effnet, eff_q, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (tools/test.sh installs it)")
    res = compare(effnet.model, eff_q, effnet.val, preprocess=effnet.preprocess, layerwise=True, quiet=True, limit=8)
    page = tmp_path / "report.html"
    page.write_text(render(res, "float.onnx", "int8.onnx"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert 'id="layer-chart"' in dom.stdout and dom.stdout.count('class="local"') == len(res.layers)
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # the bars are the only light blue on the page; wherever the sections above push the chart,
    # its bars cover a band about 1000 px wide and over 100 px tall
    blue = (img[..., 2] > 180) & (img[..., 0] < 190) & (img[..., 1] > 150)
    rows = np.flatnonzero(blue.sum(axis=1) > 500)
    assert rows.size > 100, "the SQNR bars did not render"


def test_cli_compare_json_and_fail_below(ppocr_det, det_q, tmp_path):
    q = tmp_path / "det.int8.onnx"
    onnx.save(det_q, q)
    pre = ["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--color", "BGR", "--size", "640x640"]
    r = subprocess.run([sys.executable, "-m", "qdq.cli", "compare", str(ppocr_det.model), str(q), "--data",
                        str(ppocr_det.val), "--json", "--limit", "4", "--no-budget", *pre],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["samples"] == 4 and doc["outputs"][0]["metrics"]["sqnr_db"] > 5
    r = subprocess.run([sys.executable, "-m", "qdq.cli", "compare", str(ppocr_det.model), str(q), "--data",
                        str(ppocr_det.val), "--limit", "4", "--no-budget", "-q", "--fail-below-db", "60", *pre],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "below 60 dB" in r.stderr
