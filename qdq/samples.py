"""Real photos and frames that ship in packages, for calibration and validation sets.

Sources (each used when installed): scikit-image's ``skimage/data``, scikit-learn's sample images,
matplotlib's ``grace_hopper.jpg``, and Debian's ``opencv-doc`` examples (photos, text images and the
795-frame ``vtest.avi``).  Nothing is downloaded here.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

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
    "skimage": ["text.png", "page.png"],
    "opencv": ["text_defocus.jpg", "text_motion.jpg", "licenseplate_motion.jpg", "imageTextN.png",
               "imageTextR.png", "notes.png", "sudoku.png", "opencv-logo.png", "WindowsLogo.jpg", "LinuxLogo.jpg"],
}


def _folder(source: str) -> Path | None:
    if source == "opencv":
        return OPENCV_DATA if OPENCV_DATA.is_dir() else None
    module = {"skimage": "skimage", "sklearn": "sklearn", "matplotlib": "matplotlib"}[source]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    return {"skimage": root / "data", "sklearn": root / "datasets" / "images",
            "matplotlib": root / "mpl-data" / "sample_data"}[source]


def _collect(table: dict) -> list[Path]:
    out = []
    for source, names in table.items():
        folder = _folder(source)
        if folder is not None:
            out += [folder / n for n in names if (folder / n).is_file()]
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


def tiles(path: Path, grid: int = 2):
    """The whole image and its ``grid``×``grid`` overlapping tiles, as PIL images (more samples
    from few text images, each still full of text)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
    out = [im]
    w, h = im.size
    tw, th = int(w / grid * 1.25), int(h / grid * 1.25)
    for r in range(grid):
        for c in range(grid):
            x0 = min(int(c * w / grid), w - tw)
            y0 = min(int(r * h / grid), h - th)
            out.append(im.crop((max(0, x0), max(0, y0), max(0, x0) + tw, max(0, y0) + th)))
    return out
