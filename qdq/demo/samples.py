"""Images with text for the demo, from what ``pip install qdq[demo]`` brings: scikit-image's photos
with rendered text, and tiles of its own text and page images."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

# scikit-image's images whose content is mostly text
SKIMAGE_TEXT = ("text.png", "page.png")


def package_data(module: str, *parts: str) -> Path | None:
    """The folder ``parts`` inside installed package ``module`` (None when it is not installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


def skimage_data() -> Path | None:
    """scikit-image's ``data`` folder, if scikit-image is installed."""
    return package_data("skimage", "data")


def text_images() -> list[Path]:
    """scikit-image's text and page images found on this machine."""
    folder = skimage_data()
    return [] if folder is None else [folder / n for n in SKIMAGE_TEXT if (folder / n).is_file()]


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


# scikit-image's photos (the grayscale ones become RGB): backgrounds for rendered text.  Calibration
# and held-out images come from different photos.
TEXT_BACKGROUNDS = {
    "calib": ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
              "ihc.png", "camera.png", "brick.png", "grass.png", "moon.png"],
    "val": ["motorcycle_right.png", "retina.jpg", "gravel.png", "coins.png"],
}
WORDS = ("quantize calibrate tensor engine layer output input scale range model vision text detect street "
          "store open closed exit entrance parking station coffee tea menu price total invoice number date "
          "name address phone email order receipt amount paid change cash card thank you welcome north south "
          "east west road avenue bridge river market city park museum library school hospital pharmacy hotel "
          "0123 4567 89 2026 12:45 $19.99 #A17 No.5 50% 3.14").split()


def rendered_text(split: str, variants: int, seed: int = 0, size: int = 640):
    """Images with text for a text detector, from what ``pip install qdq`` brings: crops of
    scikit-image's photos with lines of words drawn in Pillow's bundled TrueType font (sizes 16–64 px,
    dark or light, some on boxes, slightly rotated).  ``split`` is "calib" or "val" (different
    photos); yields ``(name, PIL image)``, the same every time for the same ``seed``."""
    from PIL import Image, ImageDraw, ImageFont

    folder = skimage_data()
    if folder is None:
        return
    rng = np.random.default_rng(seed + (0 if split == "calib" else 10_000))
    for photo in TEXT_BACKGROUNDS[split]:
        path = folder / photo
        if not path.is_file():
            continue
        with Image.open(path) as im:
            base = im.convert("RGB")
        for k in range(variants):
            w, h = base.size
            side = int(min(w, h) * rng.uniform(0.55, 1.0))
            x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            canvas = base.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
            for _ in range(int(rng.integers(3, 8))):
                font = ImageFont.load_default(size=int(rng.integers(16, 65)))
                text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 5))))
                layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
                draw = ImageDraw.Draw(layer)
                pos = (int(rng.integers(0, size // 2)), int(rng.integers(0, size - 70)))
                dark = rng.random() < 0.5
                box = draw.textbbox(pos, text, font=font)
                if rng.random() < 0.4:   # a sign or label behind the text
                    fill = (235, 235, 225, 255) if dark else (25, 30, 40, 255)
                    draw.rectangle((box[0] - 6, box[1] - 6, box[2] + 6, box[3] + 6), fill=fill)
                colour = tuple(int(c) for c in (rng.integers(0, 70, 3) if dark else rng.integers(190, 256, 3)))
                draw.text(pos, text, font=font, fill=colour + (255,))
                layer = layer.rotate(float(rng.uniform(-8, 8)), resample=Image.BILINEAR, center=pos)
                canvas = Image.alpha_composite(canvas.convert("RGBA"), layer).convert("RGB")
            yield f"{path.stem}_{k}", canvas
