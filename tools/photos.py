"""Real photos, text images and video frames that ship in packages, for the test and benchmark sets.

Sources (each used when installed): scikit-image's ``skimage/data``, scikit-learn's sample images,
matplotlib's ``grace_hopper.jpg``, and Debian's ``opencv-doc`` examples (photos, text images and the
795-frame ``vtest.avi``).  Nothing is downloaded here.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qdq.demo.samples import SKIMAGE_TEXT, package_data  # noqa: E402

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
# natural colour photos (scenes, animals, objects, people)
_PHOTOS = {
    "skimage": ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                "hubble_deep_field.jpg", "retina.jpg", "ihc.png"],
    "sklearn": ["china.jpg", "flower.jpg"],
    "matplotlib": ["grace_hopper.jpg"],
    "opencv": ["HappyFish.jpg", "aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "board.jpg",
               "building.jpg", "butterfly.jpg", "chicky_512.png", "ela_original.jpg", "fruits.jpg", "graf1.png",
               "home.jpg", "left.jpg", "leuvenA.jpg", "messi5.jpg", "orange.jpg", "pca_test1.jpg",
               "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg", "starry_night.jpg", "stuff.jpg"],
}
# images whose content is mostly text (for text detectors / recognisers)
_TEXT = {
    "skimage": list(SKIMAGE_TEXT),
    "opencv": ["text_defocus.jpg", "text_motion.jpg", "licenseplate_motion.jpg", "imageTextN.png",
               "imageTextR.png", "notes.png", "sudoku.png", "opencv-logo.png", "WindowsLogo.jpg", "LinuxLogo.jpg"],
}


def folder(source: str) -> Path | None:
    """Where ``source`` (skimage, sklearn, matplotlib, opencv) keeps its images, if installed."""
    if source == "opencv":
        return OPENCV_DATA if OPENCV_DATA.is_dir() else None
    parts = {"skimage": ("data",), "sklearn": ("datasets", "images"), "matplotlib": ("mpl-data", "sample_data")}
    return package_data(source, *parts[source])


def _collect(table: dict) -> list[Path]:
    out = []
    for source, names in table.items():
        where = folder(source)
        if where is not None:
            out += [where / n for n in names if (where / n).is_file()]
    return out


def photos() -> list[Path]:
    """Colour photos found on this machine, in a fixed order."""
    return _collect(_PHOTOS)


def text_images() -> list[Path]:
    """Images with text found on this machine, in a fixed order."""
    return _collect(_TEXT)


def video_frames(indices, path: Path = OPENCV_DATA / "vtest.avi"):
    """RGB frames (H, W, 3 uint8) of ``path`` at the given frame indices (needs opencv-python)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    wanted, frames, i = sorted(set(indices)), {}, 0
    try:
        while wanted and i <= wanted[-1]:
            ok, frame = cap.read()
            if not ok:
                break
            if i in wanted:
                frames[i] = frame[:, :, ::-1].copy()
            i += 1
    finally:
        cap.release()
    return [frames[k] for k in sorted(frames)]


def rendered_lines(split: str, variants: int, seed: int = 0, size=(48, 320)):
    """Text-line images for a recogniser (H×W ``size``): one line of 1–4 words in Pillow's bundled font
    over a strip of one of scikit-image's photos, dark or light, some on a plain label, as PP-OCR's
    detector crops them.  ``split`` "calib" or "val" uses the demo's calibration or held-out photos;
    yields ``(name, PIL image)``, the same every time for the same ``seed``."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from qdq.demo.samples import TEXT_BACKGROUNDS, WORDS, skimage_data

    folder = skimage_data()
    rng = np.random.default_rng(seed + (0 if split == "calib" else 10_000))
    h, w = size
    for photo in TEXT_BACKGROUNDS[split]:
        if folder is None or not (folder / photo).is_file():
            continue
        with Image.open(folder / photo) as im:
            base = im.convert("RGB")
        for k in range(variants):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 5))))
            font = ImageFont.load_default(size=int(rng.integers(26, 40)))
            probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
            x1, y1, x2, y2 = probe.textbbox((0, 0), text, font=font)
            tw, th = x2 - x1 + 16, y2 - y1 + 12
            sw, sh = max(tw, int(th * w / h)), th        # the strip keeps the recogniser's aspect ratio
            bx, by = int(rng.integers(0, max(1, base.width - sw))), int(rng.integers(0, max(1, base.height - sh)))
            strip = base.crop((bx, by, bx + sw, by + sh)).convert("RGBA")
            draw = ImageDraw.Draw(strip)
            dark = rng.random() < 0.5
            if rng.random() < 0.4:   # a label behind the text
                draw.rectangle((0, 0, sw, sh), fill=(235, 235, 225, 255) if dark else (25, 30, 40, 255))
            colour = tuple(int(c) for c in (rng.integers(0, 60, 3) if dark else rng.integers(200, 256, 3)))
            draw.text((8 - x1, 6 - y1), text, font=font, fill=colour + (255,))
            yield f"{Path(photo).stem}_{k}", strip.convert("RGB")


def captchas(split: str, count: int, seed: int = 0, size=(60, 160)):
    """Captcha-style images for a character recogniser (H×W ``size``): 4–6 characters of 0–9 and A–Z in
    Pillow's bundled font, each its own colour, size and offset, over a light background with noise
    lines and dots, some over a strip of one of scikit-image's photos; yields ``(name, PIL image)``,
    the same every time for the same ``seed`` ("calib" and "val" draw apart)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from qdq.demo.samples import TEXT_BACKGROUNDS, skimage_data

    chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    rng = np.random.default_rng(seed + (0 if split == "calib" else 10_000))
    h, w = size
    folder = skimage_data()
    photos = [folder / p for p in TEXT_BACKGROUNDS[split] if folder is not None and (folder / p).is_file()]
    for k in range(count):
        im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(200, 256, 3)))
        if photos and rng.random() < 0.3:
            with Image.open(photos[k % len(photos)]) as p:
                base = p.convert("RGB").resize((w * 3, h * 3))
            x, y = int(rng.integers(0, w * 2)), int(rng.integers(0, h * 2))
            im = Image.blend(im, base.crop((x, y, x + w, y + h)), 0.35)
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 6))):   # noise lines
            pts = [tuple(int(v) for v in rng.integers(0, (w, h))) for _ in range(2)]
            draw.line(pts, fill=tuple(int(c) for c in rng.integers(0, 200, 3)), width=int(rng.integers(1, 3)))
        text = "".join(rng.choice(list(chars), size=int(rng.integers(4, 7))))
        x = int(rng.integers(4, 14))
        for ch in text:
            font = ImageFont.load_default(size=int(rng.integers(26, 38)))
            draw.text((x, int(rng.integers(2, 14))), ch, font=font, fill=tuple(int(c) for c in rng.integers(0, 120, 3)))
            x += int(font.getlength(ch)) + int(rng.integers(0, 5))
        for _ in range(60):   # dots
            draw.point(tuple(int(v) for v in rng.integers(0, (w, h))), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        yield f"{text}_{k:03d}", im
