"""`qdq demo`: the main job on an embedded default — PP-OCRv4's text detector (from the
rapidocr-onnxruntime wheel), calibrated on real text images that ship in scikit-image (and
Debian's opencv-doc when installed), checked against the float model on held-out images."""
from __future__ import annotations

import sys
from pathlib import Path

from .data import Dataset, Preprocess, model_inputs
from .errors import QdqError
from .ranges import DEFAULT_METHOD

# PP-OCR det preprocessing as rapidocr does it: BGR, x = (pixel/255 − 0.5) / 0.5, sides multiple of 32.
DET_PREPROCESS = Preprocess(size=(640, 640), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), scale=1 / 255, color="BGR")


def build_text_sets(folder: Path) -> tuple[Path, Path]:
    """Write calibration and validation folders of text images (tiles of each image); the last
    text image of each source goes to validation only."""
    from . import samples

    images = samples.text_images()
    if len(images) < 2:
        raise QdqError("no text images found: install scikit-image (pip install scikit-image)")
    calib, val = folder / "calib", folder / "val"
    for d in (calib, val):
        d.mkdir(parents=True, exist_ok=True)
    held_out = {images[1], images[-1]}
    for path in images:
        dest = val if path in held_out else calib
        for k, tile in enumerate(samples.tiles(path)):
            tile.save(dest / f"{path.stem}_{k}.png")
    return calib, val


def run_demo(out_dir=None, method: str = DEFAULT_METHOD, as_json: bool = False, quiet: bool = False) -> int:
    import json

    from . import zoo
    from .calibrate import run_session, session_for
    from .metrics import ErrorAccumulator
    from .modelio import load_model, save_model
    from .pipeline import quantize
    from .report import print_summary

    out = Path(out_dir) if out_dir else zoo.cache_dir() / "demo"
    out.mkdir(parents=True, exist_ok=True)
    model_path = zoo.fetch("ppocr_det", quiet=quiet or as_json)
    calib, val = build_text_sets(out / "data")
    result = quantize(model_path, calib, method=method, preprocess=DET_PREPROCESS, quiet=quiet or as_json)
    target = out / "ch_PP-OCRv4_det.int8.onnx"
    save_model(result.model, target, overwrite=True)
    result.summary.output = str(target)

    # held-out check: pooled SQNR of the probability map, INT8 vs FP32, in ONNX Runtime
    ref_sess = session_for(load_model(model_path))
    q_sess = session_for(result.model)
    acc = ErrorAccumulator()
    inputs = model_inputs(result.model)
    for src, feed in Dataset(val, inputs, DET_PREPROCESS):
        ref = next(iter(run_session(ref_sess, feed, src).values()))
        q = next(iter(run_session(q_sess, feed, src).values()))
        acc.add(ref, q)
    check = {"validation_images": str(val), "output_sqnr_db": round(acc.sqnr_db, 2), "cosine": round(acc.cosine, 5)}
    if as_json:
        print(json.dumps({"summary": result.summary.to_dict(), "check": check}, indent=1, default=float))
        return 0
    if not quiet:
        print_summary(result.summary)
        print(f"float model: {model_path}\ncalibration images: {calib}\n"
              f"held-out check ({val}): output SQNR {check['output_sqnr_db']} dB, cosine {check['cosine']}",
              file=sys.stdout)
    return 0
