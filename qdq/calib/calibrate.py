"""Calibration pass: run the float model in ONNX Runtime over the data, once, and fold the
tensors that will carry Q/DQ into streaming statistics.  Activations are never kept."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import QdqError
from ..progress import progress
from .data import batches, prefetch
from .session import run_session, session_for
from .stats import TensorStats


@dataclass
class Calibration:
    """Statistics of one pass.  ``stats`` hold histograms; ``extrema`` only (min, max) per tensor."""

    stats: dict = field(default_factory=dict)
    extrema: dict = field(default_factory=dict)
    samples: int = 0

    def merge(self, other: "Calibration") -> None:
        """Fold another pass over other samples into this one (order-independent)."""
        for t, st in other.stats.items():
            self.stats.setdefault(t, TensorStats(t)).merge(st)
        for t, (lo, hi) in other.extrema.items():
            old = self.extrema.get(t, (math.inf, -math.inf))
            self.extrema[t] = (min(old[0], lo), max(old[1], hi))
        self.samples += other.samples


def calibrate(model: onnx.ModelProto, dataset, tensors, range_only=(), batch_size: int = 1,
              providers=None, quiet: bool = False, threads: int | None = None) -> Calibration:
    """One streaming pass over ``dataset``; histograms for ``tensors``, min/max for ``range_only``.

    Graph inputs among ``tensors`` are read from the feed directly.
    """
    tensors = list(dict.fromkeys(tensors))
    range_only = [t for t in dict.fromkeys(range_only) if t not in tensors]
    inputs = {i.name for i in dataset.inputs}
    wanted = [t for t in tensors + range_only if t not in inputs]
    sess = session_for(model, providers, wanted, threads)
    cal = Calibration(stats={t: TensorStats(t) for t in tensors})

    def fold(outs: dict, sources) -> None:
        for t in tensors:
            st = cal.stats[t]
            st.update(outs[t])
            if st.nonfinite:
                raise QdqError(f"tensor {t!r} is NaN or Inf on sample {sources[0]}; the float model overflows "
                               "on this input: check the preprocessing or exclude the layer")
        for t in range_only:
            x = outs[t]
            if x.dtype.kind != "f" or x.size == 0:
                continue
            lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
            old = cal.extrema.get(t, (math.inf, -math.inf))
            # NaN (0/0 in a masked branch) is not a range; ±Inf is, and keeps the tensor FP32
            cal.extrema[t] = (min(old[0], lo), max(old[1], hi)) if not (math.isnan(lo) or math.isnan(hi)) else old

    # Folding batch k into the histograms (numpy, GIL released) overlaps inference of batch k+1.
    with progress("calibrating", dataset.count(), quiet) as advance, ThreadPoolExecutor(1) as pool:
        pending = None
        for sources, feed in prefetch(batches(dataset, batch_size)):
            outs = run_session(sess, feed, sources[0] if len(sources) == 1 else f"{sources[0]}…")
            outs.update(feed)
            if pending is not None:
                pending.result()
            pending = pool.submit(fold, outs, sources)
            cal.samples += len(sources)
            advance(len(sources))
        if pending is not None:
            pending.result()
    return cal
