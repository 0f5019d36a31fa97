"""Known ranges: a softmax, sigmoid or tanh output can take amax 1 without data.  The pipeline tries
it where the data reach half the bound and takes it only when the held-back samples say it helps."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from qdq.graph.index import GraphIndex
from qdq.graph.placement import known_bounds, place
from qdq.pipeline import quantize

RNG = np.random.default_rng(7)
D = 32
# the shift (Outlier Suppression+) would centre these one-sided outputs first: off, to see the range alone
OPTS = dict(quiet=True, mixed_precision=False, smoothquant="off")


def _act_model(op: str, w1: np.ndarray):
    """x [1, 16, 32] → MatMul → ``op`` → MatMul → y: ``op``'s output is the second MatMul's INT8 input."""
    w2 = RNG.standard_normal((D, D)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node(op, ["h"], ["a"], name="act"),
             helper.make_node("MatMul", ["a", "w2"], ["y"], name="mm2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, D])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, D])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _data(folder, n=60, loc=0.0):
    for k in range(n):
        np.savez(folder / f"{k:02d}.npz", x=(RNG.standard_normal((1, 16, D)) + loc).astype(np.float32))
    return folder


def test_bounded_outputs_are_found_by_their_producer():
    m = _act_model("Sigmoid", np.eye(D, dtype=np.float32))
    idx = GraphIndex.build(m)
    plan = place(idx)
    assert set(plan.activations) == {"x", "a"}
    assert known_bounds(idx, plan) == {"a": "Sigmoid"}   # the graph input is not bounded


def test_the_bound_is_taken_where_calibration_clips(tmp_path):
    """Sigmoid outputs spread over (0, 1) calibrated at their 90th percentile clip a tenth of the values
    by up to 0.1, more error than the 1/127 step of amax 1: the bound is taken (the paired gap above 1 dB
    at its lower end; the input and weight noise stay alike)."""
    m = _act_model("Sigmoid", (3 * np.eye(D)).astype(np.float32))
    r = quantize(m, _data(tmp_path), method="percentile", percentile=90.0, **OPTS)
    known = r.summary.accuracy["known_ranges"]
    assert known["tensors"] == ["a"] and known["taken"] and known["gap_low_db"] > 1
    assert r.summary.activations["a"]["amax"] == 1.0 and r.summary.activations["a"]["method"] == "bound (Sigmoid)"


def test_the_bound_is_not_taken_where_the_data_use_half_of_it(tmp_path):
    """Sigmoid outputs within (0, ~0.6): amax 1 would double the step (6 dB); calibrated kept."""
    m = _act_model("Sigmoid", (0.5 * np.eye(D)).astype(np.float32))
    r = quantize(m, _data(tmp_path, loc=-3.0), **OPTS)
    known = r.summary.accuracy["known_ranges"]
    assert known["tensors"] == ["a"] and not known["taken"] and known["gap_low_db"] < 0
    assert r.summary.activations["a"]["method"] != "bound (Sigmoid)" and r.summary.activations["a"]["amax"] < 0.9


def test_outputs_far_below_the_bound_are_not_tried(tmp_path):
    """Sigmoid outputs below 0.5 are never put at amax 1 (more than a bit lost by construction)."""
    m = _act_model("Sigmoid", (0.3 * np.eye(D)).astype(np.float32))
    r = quantize(m, _data(tmp_path, loc=-6.0), **OPTS)
    assert "known_ranges" not in r.summary.accuracy


def test_a_file_left_all_int8_has_one_int8_figure(tmp_path):
    """Without mixed precision the file is the all-INT8 file: the summary's "all layers INT8" figure is
    the file's own, on the samples that report (not bias correction's, on those that chose)."""
    m = _act_model("Sigmoid", (3 * np.eye(D)).astype(np.float32))
    acc = quantize(m, _data(tmp_path), **OPTS).summary.accuracy
    assert acc["chosen_on"] == 6 and acc["held_back_samples"] == 6
    assert acc["int8_db"] == acc["final_db"]


def test_the_all_int8_file_is_measured_once(tmp_path, monkeypatch):
    """The uncorrected all-INT8 file is measured once on the choosing samples: the known-range
    decision's base serves the final figures (no bias correction, no mixed precision, no FP16 plan
    here), so the choosing evaluator runs twice, calibrated and known ranges, not three times."""
    from qdq import pipeline

    checks, held_back = [], pipeline.S.held_back

    def keep(*args):
        out = held_back(*args)
        checks.append(out[0])
        return out
    monkeypatch.setattr(pipeline.S, "held_back", keep)
    m = _act_model("Sigmoid", (3 * np.eye(D)).astype(np.float32))
    acc = quantize(m, _data(tmp_path), bias_correction=False, remainder="fp32", **OPTS).summary.accuracy
    assert acc["chosen_on"] == 6 and acc["known_ranges"]["tensors"] == ["a"]
    assert checks[0].ev.runs == 2
