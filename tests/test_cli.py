"""The `qdq quantize` command on the real PP-OCRv4 detector and real text images; bad inputs get
one line on stderr, exit code 2, and nothing the user owns is touched."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from qdq.calib.calibrate import calibrate
from qdq.calib.data import Dataset, Preprocess, model_inputs
from qdq.graph.index import GraphIndex
from qdq.targets import prepare
from qdq.graph.placement import place
from qdq.calib.ranges import METHODS, compute_range

from clitools import one_line_error, run_qdq

DET = ["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--color", "BGR", "--size", "320x320"]


def test_quantize_writes_model_ranges_and_json(ppocr_det, tmp_path):
    out, ranges = tmp_path / "det.int8.onnx", tmp_path / "ranges.json"
    before = ppocr_det.model.read_bytes()
    r = run_qdq("quantize", ppocr_det.model, "--calib", ppocr_det.calib, "-o", out, "--ranges-out", ranges,
            "--method", "percentile", "--json", *DET)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["method"] == "percentile" and summary["output"] == str(out)
    doc = json.loads(ranges.read_text())
    assert set(doc["ranges"]) == set(summary["activations"])
    m = onnx.load(str(out))
    scales = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    for t, rr in doc["ranges"].items():
        assert 0.0 <= rr["clipped"] < 0.01
        assert scales[f"{t}_scale"] == pytest.approx(rr["amax"] / 127, rel=1e-6)
    assert ppocr_det.model.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_inputs_are_one_line_errors(ppocr_det, tmp_path):
    model = ppocr_det.model
    out = tmp_path / "out.onnx"
    one_line_error(run_qdq("quantize", model, "--calib", tmp_path / "nope", "-o", out), "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(run_qdq("quantize", model, "--calib", empty, "-o", out), "empty")
    np.savez(tmp_path / "wrong.npz", image=np.zeros((1, 3, 64, 64), np.float32))
    one_line_error(run_qdq("quantize", model, "--calib", tmp_path / "wrong.npz", "-o", out), "wrong.npz", "'x'")
    bad = np.zeros((1, 3, 64, 64), np.float32)
    bad[0, 1, 2, 3] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad)
    one_line_error(run_qdq("quantize", model, "--calib", tmp_path / "nan.npz", "-o", out), "nan.npz", "NaN")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    one_line_error(run_qdq("quantize", model, "--calib", tmp_path / "obj.npy", "-o", out), "obj.npy", "object")
    corrupt = tmp_path / "imgs"
    corrupt.mkdir()
    (corrupt / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    one_line_error(run_qdq("quantize", model, "--calib", corrupt, "-o", out, *DET), "broken.png")
    (tmp_path / "trunc.onnx").write_bytes(model.read_bytes()[:1000])
    one_line_error(run_qdq("quantize", tmp_path / "trunc.onnx", "--calib", ppocr_det.calib, "-o", out), "trunc.onnx")
    assert not out.exists()


def test_existing_output_and_input_path_are_refused(ppocr_det, tmp_path):
    model = tmp_path / "det.onnx"
    shutil.copy(ppocr_det.model, model)
    keep = tmp_path / "keep.onnx"
    keep.write_bytes(b"precious")
    one_line_error(run_qdq("quantize", model, "--calib", ppocr_det.calib, "-o", keep, *DET), "exists")
    assert keep.read_bytes() == b"precious"
    one_line_error(run_qdq("quantize", model, "--calib", ppocr_det.calib, "-o", model, "--overwrite", *DET), "input model")
    assert model.read_bytes() == ppocr_det.model.read_bytes()


def test_ranges_do_not_depend_on_batch_size_or_order(ppocr_det, tmp_path):
    m = prepare(str(ppocr_det.model))
    plan = place(GraphIndex.build(m))
    pre = Preprocess(size=(320, 320), mean=(0.5,) * 3, std=(0.5,) * 3, color="BGR")
    files = sorted(ppocr_det.calib.iterdir())[:16]
    ordered, shuffled = tmp_path / "ordered", tmp_path / "shuffled"
    ordered.mkdir(), shuffled.mkdir()
    perm = np.random.default_rng(0).permutation(len(files))
    for k, f in zip(perm, files):
        shutil.copy(f, ordered / f.name)
        shutil.copy(f, shuffled / f"{k:03d}_{f.name}")
    runs = [calibrate(m, Dataset(folder, model_inputs(m), pre), plan.activations, batch_size=bs, quiet=True)
            for folder, bs in ((ordered, 1), (ordered, 8), (shuffled, 1))]
    for method in METHODS:
        base = {t: compute_range(s, method).amax for t, s in runs[0].stats.items()}
        assert sum(v > 0 for v in base.values()) > 50
        for other in runs[1:]:
            for t, s in other.stats.items():
                assert compute_range(s, method).amax == pytest.approx(base[t], rel=1e-5, abs=1e-12), (method, t)


@pytest.mark.slow
def test_demo_runs_without_arguments(tmp_path):
    env = dict(os.environ, QDQ_CACHE=os.environ.get("QDQ_CACHE", str(tmp_path)))
    r = subprocess.run([sys.executable, "-m", "qdq.cli", "demo", "--out-dir", str(tmp_path), "--json"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (tmp_path / "ch_PP-OCRv4_det.int8.onnx").exists()
    c = doc["check"]
    acc = doc["summary"]["accuracy"]
    assert c["samples"] == 16 and doc["summary"]["samples"] + acc["held_back_samples"] + acc["chosen_on"] == 76
    assert c["output_sqnr_db"] > 15 and c["output_sqnr_db"] >= c["weights_only_db"] - 2 and c["fp16_db"] > 35
    assert len(doc["summary"]["quantized_layers"]) >= 20 and doc["summary"]["int8_mac_share"] >= 0.85
    assert c["interval_db"][0] < c["output_sqnr_db"] < c["interval_db"][1] and c["task"]["name"] == "textmap"
    assert c["task"]["figures"]["box_f1"]["value"] > 0.8 and "pinned to FP32" in c["remainder"]
    r = subprocess.run([sys.executable, "-m", "qdq.cli", "demo", "--out-dir", str(tmp_path)], capture_output=True,
                       text=True, env=env, timeout=900)
    assert "meaning:" in r.stdout and "qdq compare" in r.stdout and "qdq check" in r.stdout
    assert "the two checks" in r.stdout and "box F1" in r.stdout and "samples)" in r.stdout
