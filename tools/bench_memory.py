"""Peak memory of calibration vs number of samples (each run in its own process).

  python tools/bench_memory.py                 # PP-OCRv4 det at 320×320, N = 16 and 256 frames of vtest.avi

Prints, per N: wall time and peak RSS (ru_maxrss of the child) of `qdq.quantize` with the entropy
method.  Statistics are streaming histograms, so peak RSS should not grow with N.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import sys, json, resource, time
sys.path.insert(0, {root!r})
from qdq.pipeline import quantize
from tools.datasets import prepared
from qdq.data import Preprocess
ds = prepared("ppocr_det")
t = time.perf_counter()
r = quantize(ds.model, {frames!r}, limit={n}, quiet=True,
             preprocess=Preprocess(size=(320, 320), mean=(0.5,) * 3, std=(0.5,) * 3, color="BGR"))
print(json.dumps({{"n": r.summary.samples, "seconds": round(time.perf_counter() - t, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}}))
"""


def frames_folder() -> Path:
    from PIL import Image

    from qdq import samples, zoo

    folder = zoo.cache_dir() / "sets" / "vtest_frames"
    if len(list(folder.glob("*.png"))) < 256:
        folder.mkdir(parents=True, exist_ok=True)
        for i, f in zip(range(0, 768, 3), samples.video_frames(range(0, 768, 3))):
            Image.fromarray(f).save(folder / f"frame{i:03d}.png")
    return folder


def main():
    folder = frames_folder()
    rows = []
    for n in (16, 256):
        out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), frames=str(folder), n=n)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    print(f"peak RSS ratio N=256 / N=16: {rows[1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f}")
    return rows


if __name__ == "__main__":
    main()
