"""Task-level agreement and figures with intervals, on synthetic outputs with known answers."""
import sys

import numpy as np
import pytest

from qdq.errors import QdqError
from qdq.measure.evaluate import Measurement
from qdq.measure.metrics import resample_sums, sqnr_figure
from qdq.measure.tasks import (Classify, Ctc, Detect, Segment, TaskOptions, TextMap, UserMetric, choose_task,
                               components, ctc_decode, edit_distance)

RNG = np.random.default_rng(3)


def _figures(task, pairs, feed=None):
    """Pooled figures of ``task`` over (ref outputs, quantized outputs) pairs."""
    rows = np.array([task.row(r, q, feed or {}) for r, q in pairs])
    return {k: float(v[0]) for k, v in task.figures(rows.sum(0, keepdims=True)).items()}


def test_classify_top1_top5_and_rank():
    ref = np.zeros((4, 10), np.float32)
    ref[np.arange(4), [1, 2, 3, 4]] = 5.0
    q = ref.copy()
    q[0, 1], q[0, 7], q[0, 8] = 4.0, 4.5, 4.2          # row 0: FP32's class comes third
    f = _figures(Classify("y"), [({"y": ref}, {"y": q})])
    assert f == {"top1": 0.75, "top5": 1.0, "rank": (3 + 1 + 1 + 1) / 4}
    assert _figures(Classify("y"), [({"y": ref}, {"y": ref})]) == {"top1": 1.0, "top5": 1.0, "rank": 1.0}


def test_top5_is_not_given_where_five_classes_are_all():
    """A 4-class classifier's top-5 agreement is 100 % by construction: not a figure."""
    four = _softmax(RNG.standard_normal((1, 4)))
    t = choose_task({"y": four}, IMG64, TaskOptions())
    assert t.figures_of == ("top1", "rank") and set(_figures(t, [({"y": four}, {"y": four[:, ::-1]})])) == {"top1", "rank"}
    assert choose_task({"logits": RNG.standard_normal((1, 6))}, IMG64, TaskOptions()).figures_of == ("top1", "top5", "rank")


def _yolov8(boxes, classes=2, anchors=200):
    """[1, 4 + classes, anchors]: boxes (cx, cy, w, h, class, score) on the first anchors, others scoring 0."""
    out = np.zeros((1, 4 + classes, anchors), np.float32)
    out[0, :4] = 10.0
    for a, (cx, cy, w, h, c, s) in enumerate(boxes):
        out[0, :4, a] = cx, cy, w, h
        out[0, 4 + c, a] = s
    return out


def test_detect_f1_and_mean_iou_yolov8_layout():
    ref = _yolov8([(50, 50, 20, 20, 0, .9), (150, 50, 20, 20, 1, .8), (50, 150, 30, 30, 0, .7)])
    q = _yolov8([(52, 50, 20, 20, 0, .9), (150, 50, 20, 20, 0, .8),      # same box, other class: not a match
                 (50, 150, 30, 30, 0, .2), (51, 50, 20, 20, 0, .85)])    # under the threshold; a duplicate NMS drops
    task = Detect("y", opts=TaskOptions(), layout="yolov8")
    f = _figures(task, [({"y": ref}, {"y": q})])
    iou = (18 * 20) / (2 * 400 - 18 * 20)
    assert f["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 2)) and f["mean_iou"] == pytest.approx(iou)
    assert _figures(task, [({"y": ref}, {"y": ref})])["f1"] == 1.0


def test_raw_yolox_head_is_decoded_on_its_grid():
    """[1, A, 5 + C] with A = the grid cells of strides 8/16/32: (x, y) offsets and log sizes."""
    h = w = 128
    anchors = sum((h // s) * (w // s) for s in (8, 16, 32))
    raw = np.zeros((1, anchors, 6), np.float32)
    raw[0, 1 * 16 + 1, :] = [0.5, 0.5, np.log(2.0), np.log(2.0), 0.9, 1.0]   # cell (1, 1) at stride 8: box at (12, 12), 16×16
    feed = {"images": np.zeros((1, 3, h, w), np.float32)}
    task = choose_task({"output": raw}, feed, TaskOptions())
    assert task.name == "detect" and "YOLOX" in task.reason and task.grid is not None
    boxes, scores, _ = task.decode({"output": raw}, 0)
    assert boxes.tolist() == [pytest.approx([4.0, 4.0, 20.0, 20.0])] and scores.tolist() == pytest.approx([0.9])


def test_detr_boxes_and_logits():
    boxes = np.array([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]] + [[0.5, 0.5, 0.1, 0.1]] * 8], np.float32)
    logits = np.full((1, 10, 4), -5.0, np.float32)
    logits[0, :, 3] = 5.0                       # "no object"
    logits[0, 0, 0] = logits[0, 1, 2] = 8.0
    task = choose_task({"pred_boxes": boxes, "pred_logits": logits}, {"x": np.zeros((1, 3, 32, 32), np.float32)},
                       TaskOptions())
    assert task.name == "detect" and task.layout == "detr"
    q = logits.copy()
    q[0, 1, 2] = 0.0                           # the second object falls under the no-object class
    f = _figures(task, [({"pred_boxes": boxes, "pred_logits": logits}, {"pred_boxes": boxes, "pred_logits": q})])
    assert f["f1"] == pytest.approx(2 / 3) and f["recall"] == 0.5


def test_components_and_textmap_boxes():
    m = np.zeros((40, 60), np.float32)
    m[5:15, 5:30] = 0.9         # a text line
    m[25:35, 10:20] = 0.8       # another
    m[30:33, 40:43] = 0.9       # 3×3: kept (min side 3)
    m[1, 50] = 0.9              # a speck: dropped
    labels = components(m > 0.3)
    assert len(np.unique(labels)) - 1 == 4
    t = TextMap("p", opts=TaskOptions())
    assert len(t.boxes(m)) == 3
    q = m.copy()
    q[25:35, 10:20] = 0.2       # the second line lost
    f = _figures(t, [({"p": m[None, None]}, {"p": q[None, None]})])
    assert f["box_f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert f["map_iou"] == pytest.approx((250 + 9 + 1) / (250 + 100 + 9 + 1))


def test_ctc_greedy_decode_exact_strings_and_cer():
    def probs(seq, classes=12):
        p = np.full((len(seq), classes), 0.01, np.float32)
        p[np.arange(len(seq)), seq] = 0.9
        return p
    assert ctc_decode(probs([0, 3, 3, 0, 3, 4, 0]), 0) == (3, 3, 4)
    assert edit_distance((1, 2, 3), (1, 3)) == 1 and edit_distance((), (1, 2)) == 2
    ref = np.stack([probs([3, 0, 4, 5]), probs([6, 6, 0, 7]), probs([0, 0, 0, 0])])   # "3 4 5", "6 7", ""
    q = np.stack([probs([3, 0, 4, 4]), probs([6, 6, 0, 7]), probs([0, 0, 0, 0])])     # "3 4",   "6 7", ""
    f = _figures(Ctc("s", opts=TaskOptions()), [({"s": ref}, {"s": q})])
    assert f == {"exact": 0.5, "cer": pytest.approx(1 / 5)}        # two empty readings are not an agreement
    time_first = Ctc("s", opts=TaskOptions(), time_major=True)
    assert _figures(time_first, [({"s": ref.transpose(1, 0, 2)}, {"s": q.transpose(1, 0, 2)})]) == f


def test_segment_pixel_agreement_and_mean_iou():
    ref = np.zeros((1, 3, 4, 4), np.float32)
    ref[0, 0, :2], ref[0, 1, 2:] = 1, 1                 # class 0 top half, class 1 bottom
    q = ref.copy()
    q[0, 1, 3], q[0, 2, 3] = 0, 2                        # last row → class 2
    f = _figures(Segment("m", opts=TaskOptions(), classes=3), [({"m": ref}, {"m": q})])
    assert f["pixel"] == 12 / 16 and f["miou"] == pytest.approx((1.0 + 4 / 8 + 0.0) / 3)


def test_user_metric(tmp_path, monkeypatch):
    (tmp_path / "mymetric.py").write_text("def agree(ref, q):\n    return float((ref['y'] > 0).mean() == (q['y'] > 0).mean())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    t = choose_task({"y": np.ones((1, 4))}, {}, TaskOptions(metric="mymetric:agree"))
    assert isinstance(t, UserMetric)
    y = np.ones((1, 4))
    assert _figures(t, [({"y": y}, {"y": y}), ({"y": y}, {"y": -y})]) == {"metric": 0.5}
    with pytest.raises(QdqError, match="module:function"):
        TaskOptions(metric="nocolon") and choose_task({}, {}, TaskOptions(metric="nocolon"))
    sys.modules.pop("mymetric", None)


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _ctc(steps, classes, reading, time_major=False, probs=True, blank=0):
    """Scores of a CTC sequence reading ``reading`` (class ids), ``blank`` elsewhere."""
    x = RNG.normal(0, 1, (steps, classes))
    x[:, blank] += 6
    for k, c in enumerate(reading):
        x[2 + 3 * k, c] += 12
    x = _softmax(x) if probs else x
    return (x[:, None] if time_major else x[None]).astype(np.float32)


def _db_map(h=64, w=64):
    m = np.full((1, 1, h, w), 0.01, np.float32)
    m[0, 0, 10:20, 8:40] = 0.97
    m[0, 0, 9, 8:40] = m[0, 0, 20, 8:40] = 0.5     # a soft edge
    return m


def _blob(h=64, w=64):
    yy, xx = np.mgrid[:h, :w]
    return np.exp(-((yy - 30) ** 2 + (xx - 30) ** 2) / 400.0)[None, None].astype(np.float32)


def _pixel_yolo(anchors, classes, v8):
    box = np.column_stack([RNG.uniform(0, 640, anchors), RNG.uniform(0, 640, anchors), RNG.uniform(4, 200, anchors),
                           RNG.uniform(4, 200, anchors)])
    scores = RNG.uniform(0, 0.05, (anchors, classes + (0 if v8 else 1)))
    scores[:3] = 0.9
    a = np.concatenate([box, scores], 1).astype(np.float32)
    return (a.T if v8 else a)[None]


IMG64, IMG640 = {"x": np.zeros((1, 3, 64, 64), np.float32)}, {"images": np.zeros((1, 3, 640, 640), np.float32)}
AUDIO = {"audio": np.zeros((1, 16000), np.float32)}
TABLE = [   # (outputs, feed, expected task, words in the reason): 25 outputs, real shapes, synthetic values
    ({"logits": RNG.standard_normal((1, 1000))}, IMG64, "classify", "named like class scores"),
    ({"output": _softmax(RNG.standard_normal((1, 2)))}, IMG64, "classify", "2 probabilities"),    # 2 classes
    ({"y": _softmax(RNG.standard_normal((1, 4)))}, IMG64, "classify", "4 probabilities"),
    ({"scores": RNG.standard_normal((1, 3, 1, 1))}, IMG64, "classify", "named like class scores"),
    ({"keypoints": RNG.uniform(0, 64, (1, 24))}, IMG64, "none", "not probabilities"),
    ({"output": RNG.standard_normal((1, 24))}, IMG64, "none", "not probabilities"),
    ({"embedding": RNG.standard_normal((1, 384))}, {"ids": np.zeros((1, 32), np.int64)}, "none", "embedding"),
    ({"last_hidden_state": RNG.standard_normal((1, 128, 384))}, {"ids": np.zeros((1, 128), np.int64)}, "none",
     "embedding, hidden state"),
    ({"output": RNG.uniform(0, 1, (1, 1)), "stateN": RNG.standard_normal((2, 1, 128))},
     {"input": np.zeros((1, 512), np.float32), "state": np.zeros((2, 1, 128), np.float32)}, "none", "fed back"),
    ({"cache_out": RNG.standard_normal((1, 8, 64))}, {"ids": np.zeros((1, 8), np.int64)}, "none", "recurrent state"),
    ({"out": RNG.standard_normal((2, 1, 128))}, {"h0": np.zeros((2, 1, 128), np.float32)}, "none", "fed back"),
    ({"features": RNG.standard_normal((1, 50, 80))}, AUDIO, "none", "embedding"),
    ({"y": RNG.standard_normal((1, 50, 80))}, AUDIO, "none", "not a CTC sequence"),
    ({"onsets": RNG.uniform(0, 1, (1, 172, 88))}, AUDIO, "none", "reads no image"),            # a piano roll
    ({"softmax": _ctc(40, 6625, [5, 9, 9, 30])}, {"x": np.zeros((1, 3, 48, 320), np.float32)}, "ctc", "40 steps"),
    ({"seq": _ctc(32, 100, [3, 4], time_major=True)}, {"x": np.zeros((1, 1, 64, 256), np.float32)}, "ctc",
     "time first"),
    ({"out": _ctc(26, 37, [1, 2, 3], probs=False)}, {"x": np.zeros((1, 1, 64, 416), np.float32)}, "ctc", "blank 0 the commonest"),
    ({"logits": _ctc(20, 37, [1, 2, 3], time_major=True, probs=False, blank=36)}, {"image": np.zeros((1, 3, 60, 160), np.float32)},
     "ctc", "blank 36 the commonest"),                                        # TensorFlow/Keras: the last class
    ({"transpose_2.tmp_0": 0.3 * _ctc(1900, 10, [1, 2, 3])}, {"image": np.zeros((1, 3, 800, 608), np.float32)}, "none",
     "not a CTC distribution"),       # a dense head's per-class sigmoid scores (PicoDet), blank-like class 0 commonest
    ({"sigmoid_0.tmp_0": _db_map()}, IMG64, "textmap", "DB text detector"),
    ({"focus": _blob()}, IMG64, "none", "not a DB text map"),                              # a smooth saliency map
    ({"p": RNG.uniform(0, 1, (1, 1, 64, 64)).astype(np.float32)}, IMG64, "none", "not a DB text map"),
    ({"image": RNG.uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)}, IMG64, "none", "not probabilities"),  # RGB out
    ({"out": _softmax(RNG.standard_normal((1, 21, 64, 64)), 1)}, IMG64, "segment", "probabilities over the channels"),
    ({"seg_logits": RNG.standard_normal((1, 5, 64, 64))}, IMG64, "segment", "named like class scores"),
    ({"output0": _pixel_yolo(8400, 80, True)}, IMG640, "detect", "YOLOv8"),
    ({"output": _pixel_yolo(25200, 80, False)}, IMG640, "detect", "YOLOv5/YOLOX pixel boxes"),
]


@pytest.mark.parametrize("outputs,feed,task,words", TABLE)
def test_auto_detection_needs_positive_evidence(outputs, feed, task, words):
    t = choose_task(outputs, feed, TaskOptions())
    assert t.name == task and words in t.reason, t.reason
    assert t.detected == (task != "none")


def test_forced_task_takes_the_shape_alone():
    """--task names what the user knows: the shape is enough, and the task is not marked as inferred."""
    t = choose_task({"keypoints": RNG.standard_normal((1, 24))}, IMG64, TaskOptions(task="classify"))
    assert t.name == "classify" and t.reason.startswith("--task classify") and not t.detected
    with pytest.raises(QdqError, match="--task ctc"):
        choose_task({"y": RNG.standard_normal((1, 24))}, IMG64, TaskOptions(task="ctc"))


def test_yolov8_output_is_not_taken_for_a_sequence():
    out = _yolov8([(50, 50, 20, 20, 0, .9)], classes=80, anchors=8400)
    t = choose_task({"output0": out}, {"images": np.zeros((1, 3, 640, 640), np.float32)}, TaskOptions())
    assert t.name == "detect" and t.layout == "yolov8"


def test_interval_is_honest_and_order_free():
    rows = np.column_stack([RNG.uniform(1, 2, 12), RNG.uniform(0.001, 0.01, 12)])
    f = sqnr_figure(rows)
    assert f.low < f.value < f.high and f.samples == 12
    assert sqnr_figure(rows[::-1]) == f                              # the same samples in another order
    wide, narrow = sqnr_figure(rows[:6]), sqnr_figure(np.tile(rows, (8, 1)))
    assert narrow.high - narrow.low < (wide.high - wide.low) / 2
    same = np.column_stack([np.ones(5), np.zeros(5)])
    assert sqnr_figure(same).value == sqnr_figure(same).low == float("inf")
    assert str(f).endswith(", 12 samples)") and " dB (" in str(f)
    assert resample_sums(rows, resamples=10).shape == (10, 2)


def test_task_figures_come_with_intervals():
    task = Classify("y")
    rows = np.array([[1, 1, 1, 1]] * 9 + [[1, 0, 1, 2]], np.float64)
    m = Measurement(np.ones((10, 2)), task, rows)
    top1 = m.task_figures()["top1"]
    assert top1.value == 0.9 and top1.low < 0.9 <= top1.high <= 1.0 and top1.samples == 10
    assert [s["top1"] for s in m.per_sample()] == [1.0] * 9 + [0.0]


def test_a_share_seen_on_few_samples_keeps_its_uncertainty():
    """Every one of 4 samples agreeing is not certainty: Wilson's 90 % interval (0.60–1.00) bounds the
    bootstrap's (1.00–1.00) from below; on many samples the two agree."""
    from qdq.measure.metrics import wilson_interval
    assert wilson_interval(1.0, 4) == (pytest.approx(0.5965, abs=1e-4), 1.0)
    lo, hi = wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.4188, abs=1e-4) and hi == pytest.approx(0.5812, abs=1e-4)
    m = Measurement(np.ones((4, 2)), Classify("y"), np.array([[1, 1, 1, 1]] * 4, np.float64))
    top1 = m.task_figures()["top1"]
    assert top1.value == 1.0 and top1.low == pytest.approx(0.5965, abs=1e-4) and top1.high == 1.0


def test_nothing_to_count_is_unmeasured_never_perfect_agreement():
    """A detector that finds nothing in either model on every sample has no box F1: NaN, not 100 %, and
    the summary says why; the same for two CTC readers that both read nothing."""
    import math

    from qdq.report.text import task_line
    empty = _yolov8([])
    task = Detect("y", opts=TaskOptions(), layout="yolov8")
    f = _figures(task, [({"y": empty}, {"y": empty})] * 3)
    assert all(math.isnan(f[k]) for k in ("f1", "precision", "recall", "mean_iou"))
    missed = _figures(task, [({"y": _yolov8([(50, 50, 20, 20, 0, .9)])}, {"y": empty})])
    assert missed["f1"] == 0.0 and missed["recall"] == 0.0 and math.isnan(missed["precision"])
    m = Measurement(np.ones((6, 2)), task, np.array([task.row({"y": empty}, {"y": empty}, {})] * 6))
    figs = m.task_figures()
    assert math.isnan(figs["f1"].value) and math.isnan(figs["f1"].low) and math.isnan(figs["f1"].high)
    line = task_line({"name": "detect", "figures": {k: v.to_dict() for k, v in figs.items()}}, 6)
    assert line.startswith("box F1 – (no boxes in either model, 6 samples)"), line
    blank = np.zeros((1, 5, 3), np.float32)
    blank[..., 0] = 1.0                                   # every step blank: nothing read
    f = _figures(Ctc("y", blank=0), [({"y": blank}, {"y": blank})])
    assert math.isnan(f["exact"]) and math.isnan(f["cer"])


def test_boxes_lost_at_the_threshold_are_told_apart():
    """A box FP32 scores 0.27 that INT8 scores under 0.25, and one INT8 scores 0.26 that FP32 lacks, sit at
    the threshold; a 0.8 box only INT8 finds does not: 2 of the 3 differing boxes are borderline."""
    ref = _yolov8([(50, 50, 20, 20, 0, .9), (150, 150, 20, 20, 0, .27)])
    q = _yolov8([(50, 50, 20, 20, 0, .9), (150, 150, 20, 20, 0, .24), (100, 30, 20, 20, 1, .26), (30, 100, 20, 20, 1, .8)])
    task = Detect("y", opts=TaskOptions(), layout="yolov8")
    row = task.row({"y": ref}, {"y": q}, {})
    assert row.tolist() == [1, pytest.approx(1.0), 2, 1, 2]     # tp, Σ IoU, fp, fn, near
    assert task.explain(row) == ("3 boxes found by one model only: 2 with a score under 1.25× the 0.25 threshold in "
                                 "that model, scores that crossed it; 1 with a higher score")
    m = Measurement(np.ones((1, 2)), task, row[None])
    assert m.task_note() == task.explain(row) and task.explain(task.row({"y": ref}, {"y": ref}, {})) == ""


def test_text_boxes_lost_at_the_box_threshold_are_told_apart():
    """A DB map's text box whose mean probability drops from 0.7 to 0.55 crosses the 0.6 box threshold:
    told apart from the agreement figures, which stay as they were."""
    ref = np.full((1, 1, 40, 60), 0.01, np.float32)
    ref[0, 0, 5:15, 5:30], ref[0, 0, 25:35, 5:30] = 0.95, 0.7
    q = ref.copy()
    q[0, 0, 25:35, 5:30] = 0.55
    task = TextMap("y", opts=TaskOptions())
    row = task.row({"y": ref}, {"y": q}, {})
    f = task.figures(row[None])
    assert row[2:].tolist() == [1, pytest.approx(1.0), 0, 1, 1] and f["box_f1"][0] == pytest.approx(2 / 3)
    assert task.explain(row) == ("1 box found by one model only: 1 with a mean probability under 1.25× the 0.6 threshold "
                                 "in that model, a score that crossed it")


def test_a_changed_top1_says_whether_fp32_was_near_a_tie():
    """Two samples change their top-1: one where FP32 scored its top two 0.50 and 0.45 (a near tie), one
    where it scored 0.90 and 0.05; logits are read through a softmax, probabilities as they are."""
    ref = np.array([[0.50, 0.45, 0.05], [0.90, 0.05, 0.05], [0.2, 0.7, 0.1]], np.float32)
    q = np.array([[0.45, 0.50, 0.05], [0.40, 0.55, 0.05], [0.2, 0.7, 0.1]], np.float32)
    task = Classify("y", classes=3)
    row = task.row({"y": ref}, {"y": q}, {})
    assert row[[0, 1, 4]].tolist() == [3, 1, 1]
    assert task.explain(row) == "2 samples with another top-1: 1 where the reference's top two classes were within 1.25× of each other (a near tie), 1 not"
    logits = np.log(ref)
    assert task.row({"y": logits}, {"y": np.log(q)}, {})[4] == 1


def test_a_figure_is_named_after_the_reference_it_was_measured_against():
    """The rank figure names the reference's top-1: FP16 in a device comparison, not FP32; the text line
    and the HTML report read one name."""
    from qdq.measure.tasks import figure_name
    from qdq.report.text import task_line

    task = {"name": "classify", "figures": {"top1": {"value": 0.9, "low": 0.8, "high": 1.0},
                                            "rank": {"value": 1.1, "low": 1.0, "high": 1.3}}}
    assert figure_name("rank", "fp16") == "mean rank of FP16's top-1"
    assert "mean rank of FP16's top-1 1.1 (1–1.3)" in task_line(task, 6, "fp16")
    assert "mean rank of FP32's top-1" in task_line(task, 6) and figure_name("top1") == "top-1 agreement"


def test_a_map_binary_on_one_sample_and_soft_on_the_others_is_no_text_map():
    """A saliency map near binary on one sample and lit but soft on three is not a DB text map (the
    samples that contradict outnumber the one that shows it); a text detector's map, lit on one sample
    in four and dark on the others (no text there), still is."""
    from qdq.measure.tasks import choose_task_on

    dark = np.full((1, 1, 64, 64), 0.01, np.float32)
    soft = [({"focus": _blob()}, IMG64)] * 3
    t = choose_task_on([({"focus": _db_map()}, IMG64)] + soft, TaskOptions())
    assert t.name == "none" and "on 3 of the first 4 samples the same output is lit and not near binary" in t.reason
    t = choose_task_on([({"focus": _db_map()}, IMG64)] + [({"focus": dark}, IMG64)] * 3, TaskOptions())
    assert t.name == "textmap" and "evidence on 1 of the first 4 samples" in t.reason
