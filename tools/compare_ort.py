"""Side by side, in one run: qdq vs ONNX Runtime's quantize_static (QDQ, symmetric INT8, per-channel)
on the same model, calibration images and held-out images.  Prints output SQNR (pooled,
10·log10 Σ‖ref‖²/Σ‖q−ref‖²), cosine, top-1 agreement when the output looks like class scores,
and the wall time of each quantization.

  python tools/compare_ort.py --model effnet   # EfficientNet-Lite0, 64 calibration / 32+ held-out real images
  python tools/compare_ort.py --model ppocr_det
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qdq.measure.comparison import compare  # noqa: E402
from qdq.calib.data import Dataset, model_inputs  # noqa: E402
from qdq.pipeline import quantize  # noqa: E402
from tools.datasets import prepared  # noqa: E402


def evaluate(float_model, qmodel, val, preprocess, budget: bool = False) -> dict:
    """First output of ``qmodel`` vs ``float_model`` on ``val``, measured by ``qdq.compare`` (with
    ``budget``: also its weights-only figure)."""
    res = compare(float_model, qmodel, val, preprocess=preprocess, budget=budget, quiet=True)
    first = res.outputs[0]
    out = {"sqnr_db": round(first.metrics["sqnr_db"], 2), "cosine": round(first.metrics["cosine"], 5)}
    if budget:
        out["weights_only_db"] = round(res.budget["weights_only"][first.name], 2)
    if first.top1 is not None:
        out["top1_agreement"] = round(first.top1, 4)
        out["samples"] = res.samples
    return out


def ort_quantize(model_path, calib, preprocess, method: str, limit: int | None = None):
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static

    model = onnx.load(str(model_path))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(Dataset(calib, model_inputs(model), preprocess, limit=limit))

        def get_next(self):
            nxt = next(self.it, None)
            return None if nxt is None else nxt[1]

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "ort.onnx"
        quantize_static(str(model_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=getattr(CalibrationMethod, method),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        return onnx.load(str(out))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="effnet", choices=("effnet", "ppocr_det", "ddddocr_det"))
    ap.add_argument("--ours", nargs="+", default=["entropy", "percentile", "mse", "max"])
    ap.add_argument("--ort", nargs="+", default=["MinMax", "Entropy", "Percentile"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    ds = prepared(args.model)
    float_model = onnx.load(str(ds.model))
    rows = []
    for m in args.ours:
        t = time.perf_counter()
        r = quantize(ds.model, ds.calib, method=m, preprocess=ds.preprocess, quiet=True)
        rows.append({"tool": "qdq", "method": m, "seconds": round(time.perf_counter() - t, 1),
                     **evaluate(float_model, r.model, ds.val, ds.preprocess)})
        print(rows[-1], flush=True)
    for m in args.ort:
        t = time.perf_counter()
        try:
            qm = ort_quantize(ds.model, ds.calib, ds.preprocess, m)
        except Exception as e:  # report, keep going with the other methods
            rows.append({"tool": "onnxruntime", "method": m, "error": str(e).splitlines()[0][:200]})
            print(rows[-1], flush=True)
            continue
        rows.append({"tool": "onnxruntime", "method": m, "seconds": round(time.perf_counter() - t, 1),
                     **evaluate(float_model, qm, ds.val, ds.preprocess)})
        print(rows[-1], flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
