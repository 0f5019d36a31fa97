"""`qdq demo`: the main job on an embedded default: PP-OCRv4's text detector (from the
rapidocr-onnxruntime wheel), calibrated on images with text built from what ``pip install qdq``
brings (scikit-image's photos with rendered text, its text and page images), checked against FP32
and FP16 on images made from other photos, and explained."""
from __future__ import annotations

import json
from pathlib import Path

from ..calib.data import Preprocess
from ..calib.ranges import DEFAULT_METHOD
from ..errors import QdqError
from ..measure.comparison import compare
from ..modelio import save_model
from ..pipeline import quantize
from ..report.text import console, print_summary, task_line
from . import samples, zoo

# PP-OCR det preprocessing as rapidocr does it: BGR, x = (pixel/255 − 0.5) / 0.5, sides multiple of 32.
DET_PREPROCESS = Preprocess(size=(640, 640), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), scale=1 / 255, color="BGR")


def build_text_sets(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the calibration and held-out folders of images with text (PNG): text rendered on
    scikit-image's photos (:func:`qdq.demo.samples.rendered_text`), the calibration photos disjoint from
    the held-out ones, plus tiles of scikit-image's own text and page images for calibration.
    76 calibration and 16 held-out images; written once per folder."""
    calib, val = folder / "calib", folder / "val"
    done = folder / ".text-sets"
    if done.is_file() and done.read_text() == f"text-sets-v2-{seed}":
        return calib, val
    for d in (calib, val):
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.png"):
            old.unlink()
    for name, im in samples.rendered_text("calib", 6, seed):
        im.save(calib / f"{name}.png")
    for name, im in samples.rendered_text("val", 4, seed):
        im.save(val / f"{name}.png")
    for path in samples.text_images():
        for k, tile in enumerate(samples.tiles(path)):
            tile.save(calib / f"{path.stem}_{k}.png")
    if len(list(calib.glob("*.png"))) < 64 or len(list(val.glob("*.png"))) < 16:
        raise QdqError("scikit-image's sample photos are missing: pip install scikit-image")
    done.write_text(f"text-sets-v2-{seed}")
    return calib, val


def run_demo(out_dir=None, method: str = DEFAULT_METHOD, as_json: bool = False, quiet: bool = False) -> int:
    out = Path(out_dir) if out_dir else zoo.cache_dir() / "demo"
    out.mkdir(parents=True, exist_ok=True)
    model_path = zoo.fetch("ppocr_det", quiet=quiet or as_json)
    calib, val = build_text_sets(out / "data")
    result = quantize(model_path, calib, method=method, preprocess=DET_PREPROCESS, quiet=quiet or as_json)
    target = out / "ch_PP-OCRv4_det.int8.onnx"
    save_model(result.model, target, overwrite=True)
    result.summary.output = str(target)

    # held-out check: the probability map of images the calibration never saw, INT8 and FP16 vs FP32
    # (the weights-only figure against FP32 too, as `qdq compare` gives it), run as the device runs it
    res = compare(model_path, result.model, val, preprocess=DET_PREPROCESS, quiet=quiet or as_json)
    o = res.outputs[0]
    fp16 = compare(model_path, result.model, val, preprocess=DET_PREPROCESS, reference="fp16", budget=False,
                   quiet=True).outputs[0]
    check = {"validation_images": str(val), "samples": res.samples, "output_sqnr_db": round(o.metrics["sqnr_db"], 2),
             "interval_db": [round(res.sqnr["low"], 2), round(res.sqnr["high"], 2)], "task": res.task,
             "cosine": round(o.metrics["cosine"], 5), "bias": round(o.metrics["bias"], 4),
             "gain": round(o.metrics["gain"], 4), "weights_only_db": round(res.budget["weights_only"][o.name], 2),
             "fp16_db": round(fp16.fp16_vs_fp32["sqnr_db"], 2), "vs_fp16_db": round(fp16.metrics["sqnr_db"], 2),
             "remainder": res.remainder}
    if as_json:
        print(json.dumps({"summary": result.summary.to_dict(), "check": check}, indent=1, default=float))
        return 0
    if not quiet:
        print_summary(result.summary)
        _explain(console(), model_path, target, val, result.summary.accuracy, check)
    return 0


def _explain(con, model_path: Path, target: Path, val: Path, held: dict | None, c: dict) -> None:
    """What the figures mean (and why the held-back and held-out ones differ), and what to run next."""
    gap = c["weights_only_db"] - c["output_sqnr_db"]
    lo, hi = c["interval_db"]
    con.print(f"\nheld-out check: {c['samples']} images with text on photos the calibration never saw "
              f"({val}); {c['remainder']}")
    con.print(f"  INT8 file vs FP32: {c['output_sqnr_db']:.1f} dB ({lo:.1f}–{hi:.1f}, {c['samples']} samples) output SQNR "
              f"(cosine {c['cosine']}, bias {c['bias']:+}, gain {c['gain']})")
    if c["task"] and c["task"]["figures"]:
        con.print(f"  task {c['task']['name']}: {task_line(c['task'], c['samples'])}")
    con.print(f"  its INT8 weights alone: {c['weights_only_db']} dB; the FP16 cast: {c['fp16_db']} dB")
    noise = 10 ** (-c["output_sqnr_db"] / 10)
    con.print(f"  meaning: the error is {noise ** 0.5:.1%} of the signal (RMS), "
              + ("with no shift" if abs(c["bias"]) < 0.01 else "shifted") + " and "
              + ("no scaling" if abs(c["gain"] - 1) < 0.02 else f"scaled by {c['gain']}") + "; "
              + (f"{gap:.1f} dB more than the weights alone cost: the activation ranges and INT8 layers cost it"
                 if gap > 0 else "no more than the weights alone cost")
              + f"; FP16 is {c['fp16_db'] - c['output_sqnr_db']:.0f} dB closer to FP32 than INT8.")
    if held:
        con.print(f"  the two checks: the held-back figure above ({held['final_db']:.1f} dB, {held['held_back_samples']} "
                  f"samples) comes from images made from the calibration photos, this one ({c['output_sqnr_db']:.1f} dB) "
                  "from other photos: the figure to ship on is this one, measured on data like yours.")
    pre = "--mean 0.5,0.5,0.5 --std 0.5,0.5,0.5 --color BGR --size 640x640"
    con.print("\nnext:")
    con.print(f"  qdq compare {model_path} {target} --data {val} {pre} --layerwise --report det.html"
              "    # where the error enters, tensor by tensor")
    con.print(f"  qdq check {target} --layers --shapes x:1x3x640x640    # what TensorRT builds, without a GPU")
    con.print(f"  qdq trt build {model_path} {target} --data {val} {pre}    # FP16 and INT8 engines, trtexec lines")
