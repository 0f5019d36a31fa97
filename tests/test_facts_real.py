"""Facts measured on real models the rest of the suite does not use, each from a PyPI wheel: PP-OCR's
text-direction classifier (2 classes, H and W both named '?'), captcha-whisperer's CRNN (CNN + a
bidirectional LSTM unrolled into Gemms, CTC with the blank last), and all-MiniLM-L6-v2 exported with a
dynamic token axis (Shape → Gather → Concat → Reshape) fed unpadded sentences of different lengths."""
import pytest

from qdq.graph.shapes import weighted_macs
from qdq.pipeline import quantize
from qdq.report.inspection import inspect_model
from qdq.graph.qdq_file import recorded_shapes
from qdq.trt.backend import built_view

MODELS = ("ppocr_cls", "captcha", "minilm_tokens")


@pytest.fixture(scope="module")
def runs(prepared):
    out = {}
    for name in MODELS:
        ds = prepared(name)
        out[name] = ds, quantize(ds.model, ds.calib, preprocess=ds.preprocess, quiet=True)
    return out


@pytest.mark.parametrize("name,task,words", [
    ("ppocr_cls", "classify", "rows of 2 probabilities"),
    ("captcha", "ctc", "blank 36 the commonest class"),
    ("minilm_tokens", "none", "named like an embedding"),
])
def test_the_task_is_inferred_from_evidence(runs, name, task, words):
    acc = runs[name][1].summary.accuracy
    assert acc["task"]["name"] == task and words in acc["task"]["reason"]


@pytest.mark.parametrize("name", MODELS)
def test_every_layers_macs_come_from_the_data_and_mixed_precision_runs(runs, name):
    ds, r = runs[name]
    s = r.summary
    assert s.mac_source == "data" and s.mac_unknown == [] and len(r.macs) == s.weighted_layers
    assert s.int8_mac_share >= 0.85 and s.accuracy["evaluations"] >= 1
    held = len(s.accuracy["held_back_sources"])   # a fifth; from 12 on, half choose and half report
    assert held >= 10 and s.accuracy["chosen_on"] == ((held + 1) // 2 if held >= 12 else 0)
    # inspect reads the same counts from the file: one INT8 share everywhere
    assert inspect_model(r.model).coverage["share"] == pytest.approx(s.int8_mac_share, abs=1e-4)


def test_the_classifier_whose_dims_are_all_named_question_mark(runs):
    """Shape inference alone leaves most of its layers unknown; the data knows them all, and TensorRT
    builds the file at the data's shapes (one name for H and W made it refuse 48×192)."""
    ds, r = runs["ppocr_cls"]
    unknown = [p for p, m in weighted_macs(r.float_model).items() if m is None]
    assert len(unknown) > 10
    assert recorded_shapes(r.model) == {"x": (1, 3, 48, 192)}
    view, problem = built_view(r.model)
    assert problem is None and view.int8_mac_share == pytest.approx(r.summary.int8_mac_share, abs=1e-4)
