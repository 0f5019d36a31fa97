"""The device in the loop: what the engines on the device gave (Polygraphy's ``--save-outputs``),
beside what qdq predicts for exactly those samples, and whether the two agree.

Two figures agree when their 90 % intervals overlap (:mod:`qdq.measure.metrics`); a disagreement is
said per output, with the samples on which device and prediction differ most."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from ..calib.data import Dataset, Feeds, Preprocess, model_inputs
from ..calib.polygraphy_io import SavedRun
from ..graph.precision import has_fp16
from ..modelio import load_model
from ..trt.layers import engine_view
from ..trt.profile import read_layer_info
from .comparison import CompareResult, compare

WORST_SAMPLES = 3
ONNXRT_FP16 = (" (these outputs come from Polygraphy's ONNX Runtime runner, whose CPU provider computes FP16-scale "
               "Q/DQ wrongly once it optimizes the graph: docs/jetson.md; TensorRT's outputs are what to compare)")


@dataclass(frozen=True)
class Agreement:
    """Device against prediction on the same samples (dB figures: {"value", "low", "high", "samples"})."""

    agree: bool
    text: str                                       # one line: "device 24.1 dB (…), predicted 24.6 (…): agree"
    outputs: dict = field(default_factory=dict)     # output -> {"device", "predicted", "agree"}
    samples: list = field(default_factory=list)     # [{"sample", "device_db", "predicted_db"}], largest gap first

    def to_dict(self) -> dict:
        return {"agree": self.agree, "text": self.text, "outputs": self.outputs, "samples": self.samples}


@dataclass(frozen=True)
class DeviceComparison:
    device: CompareResult       # the saved outputs against the reference
    predicted: CompareResult    # the file run here as the device runs it, against the same reference
    agreement: Agreement

    def to_dict(self) -> dict:
        return {"device": self.device.to_dict(), "predicted": self.predicted.to_dict(),
                "agreement": self.agreement.to_dict()}


def _overlap(a: dict, b: dict) -> bool:
    return a["low"] <= b["high"] and b["low"] <= a["high"]


def _fig(f: dict) -> str:
    return f"{f['value']:.1f} dB ({f['low']:.1f}–{f['high']:.1f})"


def agreement(device: dict, predicted: dict, names: list | None = None, differing: list | None = None) -> Agreement:
    """Compare two :attr:`CompareResult.sqnr` figures of the same samples, output by output; a
    disagreement names ``differing`` (layers the engine runs in another precision than the file plans)."""
    outputs = {}
    for o, d in device["per_output"].items():
        p = predicted["per_output"].get(o)
        outputs[o] = {"device": d, "predicted": p, "agree": p is not None and _overlap(d, p)}
    agree = all(v["agree"] for v in outputs.values())
    ds, ps = device.get("per_sample", []), predicted.get("per_sample", [])
    finite = [k for k in range(min(len(ds), len(ps))) if math.isfinite(ds[k]) and math.isfinite(ps[k])]
    worst = sorted(finite, key=lambda k: -abs(ds[k] - ps[k]))[:WORST_SAMPLES]
    samples = [{"sample": names[k] if names and k < len(names) else k, "device_db": ds[k], "predicted_db": ps[k]}
               for k in worst]
    text = f"device {_fig(device)}, predicted {_fig(predicted)}: "
    if agree:
        text += "agree"
    else:
        bad = [o for o, v in outputs.items() if not v["agree"]]
        gaps = ", ".join(f"{o} {v['device']['value'] - v['predicted']['value']:+.1f} dB" for o, v in outputs.items()
                         if o in bad and v["predicted"] is not None)
        text += f"disagree beyond the intervals on {', '.join(bad)} ({gaps}); samples furthest apart: " + \
            "; ".join(f"{s['sample']} {s['device_db']:.1f} vs {s['predicted_db']:.1f} dB" for s in samples)
        if differing:
            text += f"; the engine runs {len(differing)} layers in another precision than the file plans: " + \
                ", ".join(differing[:5])
    return Agreement(agree, text, outputs, samples)


def compare_device(float_model, quant_model, data, outputs, reference_outputs=None, layer_info=None,
                   **kw) -> DeviceComparison:
    """The device's saved outputs (``outputs``; the reference's in ``reference_outputs``, else the
    reference is run here) on ``data`` (the inputs the device run loaded, e.g. a bundle's inputs.json),
    against qdq's prediction for the same samples: ``compare`` on the file with the same ``kw``.
    ``layer_info``: the INT8 engine's trtexec --exportLayerInfo, to name layers whose engine precision
    differs from the file's plan."""
    fmodel = float_model if isinstance(float_model, onnx.ModelProto) else load_model(float_model)
    qmodel = quant_model if isinstance(quant_model, onnx.ModelProto) else load_model(quant_model)
    differing = None
    if layer_info is not None:
        view = engine_view(qmodel, read_layer_info(layer_info))
        differing = [f"{f['node']} ({f['message'].split(':')[0]})" for f in view.findings
                     if f["kind"] in ("int8 in the file, not in the engine", "views disagree")]
    saved = SavedRun(outputs, [o.name for o in fmodel.graph.output])
    device = compare(fmodel, qmodel, data, budget=False, outputs=saved, reference_outputs=reference_outputs, **kw)
    predicted = compare(fmodel, qmodel, data, budget=False, **kw)
    names = None if isinstance(data, Feeds) else _sample_names(data, fmodel, kw)
    agreed = agreement(device.sqnr, predicted.sqnr, names, differing)
    if saved.runner.startswith("onnxrt") and has_fp16(qmodel):
        agreed = replace(agreed, text=agreed.text + ONNXRT_FP16)
    return DeviceComparison(device, predicted, agreed)


def _sample_names(data, fmodel, kw) -> list:
    """The samples' names: a bundle's inputs.json by the names its prediction.json keeps (the user's
    files), else as the data names them."""
    names = Dataset(data, model_inputs(fmodel), kw.get("preprocess") or Preprocess(), limit=kw.get("limit")).sources()
    kept = Path(data).parent / "prediction.json"
    try:
        original = json.loads(kept.read_text()).get("samples") if kept.is_file() else None
    except (OSError, ValueError, AttributeError):
        original = None
    return original if isinstance(original, list) and len(original) == len(names) else names
