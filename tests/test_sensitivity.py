"""Sensitivity analysis and --target-sqnr on EfficientNet-Lite0 with one planted sensitive layer:
a real layer whose input range is widened 50× (as a careless hand-set range would be)."""
import json
import subprocess
import sys

import pytest

from qdq.pipeline import quantize
from qdq.sensitivity import analyze, quantize_to_target

PLANTED = "/blocks/blocks.4/layers/layers.1/conv/Conv"   # a depthwise conv mid-network; its input feeds only it


@pytest.fixture(scope="module")
def planted_ranges(effnet, tmp_path_factory):
    r = quantize(effnet.model, effnet.calib, method="percentile", preprocess=effnet.preprocess, quiet=True)
    tensor = next(t for t, users in r.placement.activations.items() if (r.index.labels.index(PLANTED), 0) in users)
    path = tmp_path_factory.mktemp("ranges") / "wide.json"
    path.write_text(json.dumps({tensor: r.ranges[tensor].amax * 50}))
    return path


def test_planted_layer_is_found_first(effnet, planted_ranges):
    r = quantize(effnet.model, effnet.calib, method="percentile", preprocess=effnet.preprocess, quiet=True,
                 ranges=planted_ranges)
    sens = analyze(r, effnet.val, preprocess=effnet.preprocess, limit=6, quiet=True)
    first = sens.layers[0]
    assert first.node == PLANTED
    assert first.all_but_db > sens.full_db + 3        # keeping it in float recovers a lot
    assert first.only_db < min(x.only_db for x in sens.layers[1:])
    assert 0 < first.mac_share < 0.1
    assert sum(x.mac_share for x in sens.layers) == pytest.approx(1.0, abs=0.05)


def test_target_sqnr_falls_back_on_the_planted_layer(effnet, planted_ranges):
    base = quantize(effnet.model, effnet.calib, method="percentile", preprocess=effnet.preprocess, quiet=True,
                    ranges=planted_ranges)
    final, fb = quantize_to_target(effnet.model, effnet.calib, effnet.val, 17.0, 3, method="percentile",
                                   preprocess=effnet.preprocess, val_limit=6, quiet=True, ranges=planted_ranges)
    assert final.index.labels[fb.fallback[0]] == PLANTED and len(fb.fallback) <= 2
    assert fb.reached and fb.after_db >= 17.0 > fb.before_db
    assert PLANTED not in final.summary.quantized_layers
    assert any(s["node"] == PLANTED and "target-sqnr" in s["reason"] for s in final.summary.skipped)
    assert len(final.summary.quantized_layers) == len(base.summary.quantized_layers) - len(fb.fallback)
    assert 0.85 < fb.int8_mac_share < 1.0
    # the written model reads the planted layer's input in float: no DequantizeLinear feeds it
    producers = {o: n for n in final.model.graph.node for o in n.output}
    node = next(n for n in final.model.graph.node if n.name == PLANTED)
    assert producers[node.input[0]].op_type != "DequantizeLinear"


def test_sensitivity_cli_json_and_report(effnet, tmp_path):
    report = tmp_path / "sens.html"
    r = subprocess.run([sys.executable, "-m", "qdq.cli", "sensitivity", str(effnet.model), "--calib", str(effnet.calib),
                        "--data", str(effnet.val), "--limit", "8", "--val-limit", "2", "--report", str(report),
                        "--exclude", r"/blocks/blocks\.([2-9]|1[0-5])/.*", "--json", "--scale", "1",
                        "--mean", "127,127,127", "--std", "128,128,128"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    nodes = [x["node"] for x in doc["layers"]]
    assert len(nodes) == 6 and all(n.startswith(("/blocks/blocks.0/", "/blocks/blocks.1/", "/head/")) for n in nodes)
    scores = [x["all_but_db"] for x in doc["layers"]]
    assert scores == sorted(scores, reverse=True)
    assert 'id="sensitivity-chart"' in report.read_text() and report.read_text().count('class="only"') == 6
