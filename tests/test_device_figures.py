"""Acceptance on real models: the task is detected right and judged right, trt11's FP16 remainder
holds on data it did not see, and the held-back interval covers what further data from the same
source measures."""
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qdq.graph.qdq_file import qdq_sites
from qdq.measure.comparison import compare
from qdq.pipeline import quantize

TASKS = {"effnet": "classify", "ppocr_det": "textmap", "ppocr_rec": "ctc", "ddddocr_det": "detect"}
HEADLINE = {"classify": "top1", "textmap": "box_f1", "ctc": "exact", "detect": "f1"}


def _plant(model, ratio=20.0):
    """amax/ratio on the widest range (like ±5 on values reaching 100): every Q/DQ of the scale group
    with the largest amax (a Concat's inputs share one range, as TensorRT runs them)."""
    sites = qdq_sites(model)
    top = max(s.amax for s in sites)
    wide = {f"{s.tensor}_scale": s.scale for s in sites if s.amax >= top * (1 - 1e-6)}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.name in wide:
            t.CopyFrom(numpy_helper.from_array(np.array(wide[t.name] / ratio, np.float32), t.name))
    return m


@pytest.fixture(scope="module")
def files(prepared):
    """trt10 and trt11 files of each model (40 calibration samples), without bias correction: its mode
    is a decision on 8 held-back samples, which can land apart for the two targets and would hide what
    the trt11 test measures, the FP16 remainder."""
    out = {}
    for name in list(TASKS) + ["minilm"]:
        ds = prepared(name)
        out[name] = ds, {t: quantize(ds.model, ds.calib, preprocess=ds.preprocess, target=t, limit=40, quiet=True,
                                     bias_correction=False) for t in ("trt10", "trt11")}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TASKS))
def test_task_detected_judged_and_a_planted_range_shows(files, name):
    ds, q = files[name]
    task, head = TASKS[name], HEADLINE[TASKS[name]]
    assert q["trt10"].summary.accuracy["task"]["name"] == task
    itself = compare(ds.model, onnx.load(str(ds.model)), ds.val, preprocess=ds.preprocess, budget=False,
                     quiet=True, limit=10, remainder="fp32")
    assert itself.task["name"] == task and itself.task["figures"][head]["value"] == 1.0
    assert itself.sqnr["value"] == float("inf")
    # two files judged on the same 40 images (the calibration images: more of them than held out)
    default = compare(ds.model, q["trt10"].model, ds.calib, preprocess=ds.preprocess, budget=False, quiet=True,
                      limit=40)
    planted = compare(ds.model, _plant(q["trt10"].model), ds.calib, preprocess=ds.preprocess, budget=False,
                      quiet=True, limit=40)
    good, bad = default.task["figures"][head], planted.task["figures"][head]
    print(name, task, head, good, bad)
    assert bad["high"] < good["low"] and bad["value"] < good["value"] - 0.1    # well below: the intervals part


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TASKS) + ["minilm"])
def test_trt11_within_1db_of_trt10_on_held_out_data(files, name):
    """The FP16 remainder trt11 writes costs under 1 dB against the trt10 file as written, on held-out
    data the FP16 plan never saw."""
    ds, q = files[name]
    t10 = compare(ds.model, q["trt10"].model, ds.val, preprocess=ds.preprocess, budget=False, quiet=True,
                  remainder="fp32")
    t11 = compare(ds.model, q["trt11"].model, ds.val, preprocess=ds.preprocess, budget=False, quiet=True)
    print(name, t10.sqnr["value"], t11.sqnr["value"])
    assert t11.sqnr["value"] >= t10.sqnr["value"] - 1.0


@pytest.mark.slow
def test_interval_covers_further_frames(prepared, tmp_path):
    """48 frames of a video calibrate (a fifth held back: 5 choose, 4 report); the reported interval contains the figure
    the file measures on the 208 later frames of the same video."""
    fr = prepared("frames")
    files = sorted(fr.calib.glob("*.png"))
    cal, val = tmp_path / "cal", tmp_path / "val"
    cal.mkdir()
    val.mkdir()
    for f in files[:48]:
        shutil.copy(f, cal / f.name)
    for f in files[48:]:
        shutil.copy(f, val / f.name)
    r = quantize(fr.model, cal, preprocess=fr.preprocess, quiet=True)
    acc = r.summary.accuracy
    later = compare(fr.model, r.model, val, preprocess=fr.preprocess, budget=False, quiet=True)
    assert later.samples >= 150 and acc["held_back_samples"] + acc["chosen_on"] == 9
    low, high = acc["final_interval_db"]
    assert low <= later.sqnr["value"] <= high, (low, later.sqnr["value"], high)
    top1 = acc["task"]["figures"]["top1"]
    assert top1["low"] <= later.task["figures"]["top1"]["value"] <= top1["high"]
