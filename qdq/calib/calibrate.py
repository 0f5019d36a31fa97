"""Calibration pass: run the float model in ONNX Runtime over the data, once, and fold the
tensors that will carry Q/DQ into streaming statistics.  Activations are never kept."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import onnx

from ..errors import QdqError
from ..progress import progress
from .data import batches, prefetch
from .session import lent_view, run_session, session_for, with_extrema
from .stats import TensorStats


@dataclass
class Calibration:
    """Statistics of one pass or more.  ``stats`` hold histograms; ``extrema`` only (min, max) per tensor."""

    stats: dict = field(default_factory=dict)
    extrema: dict = field(default_factory=dict)
    samples: int = 0
    shapes: dict = field(default_factory=dict)   # tensor -> its dims in the first batch the pass ran
    shape_samples: int = 1                       # samples in that batch


def calibrate(model: onnx.ModelProto, dataset, tensors, range_only=(), batch_size: int = 1,
              providers=None, quiet: bool = False, threads: int | None = None,
              into: Calibration | None = None, shapes=()) -> Calibration:
    """One streaming pass over ``dataset``; histograms for ``tensors``, min/max for ``range_only``
    (float tensors, NaN ignored, reduced inside ONNX Runtime: see :func:`with_extrema`), and the dims
    of each tensor in ``shapes`` in the first batch (``Calibration.shapes``, of ``shape_samples``
    samples; read in-graph by a Shape node, so the tensor itself never leaves ONNX Runtime).

    Graph inputs among ``tensors`` are read from the feed directly.  With ``into`` the pass folds
    into that calibration (the same statistics as merging a new one, without a second set of
    histograms) and returns it.
    """
    tensors = list(dict.fromkeys(tensors))
    range_only = [t for t in dict.fromkeys(range_only) if t not in tensors]
    inputs = {i.name for i in dataset.inputs}
    want_shapes, shapes = bool(shapes), [t for t in dict.fromkeys(shapes) if t not in inputs]
    view, lent = lent_view(model)   # the copy with_extrema makes holds no weights
    reduced, extrema_of = with_extrema(view, range_only, [t for t in tensors if t not in inputs], shapes)
    shape_of = extrema_of.pop("shapes", {})
    sess = session_for(reduced, providers, threads=threads, lent=lent)
    exact = _NanSafe(view, lent, extrema_of, providers, threads)
    cal = into if into is not None else Calibration()
    for t in tensors:
        cal.stats.setdefault(t, TensorStats(t))

    def fold(outs: dict, sources) -> None:
        for t in tensors:
            st = cal.stats[t]
            st.update(outs[t])
            if st.nonfinite:
                raise QdqError(f"tensor {t!r} is NaN or Inf on sample {sources[0]}; the float model overflows "
                               "on this input: check the preprocessing or exclude the layer")
        for t, (lo_name, hi_name, _) in extrema_of.items():
            # NaN (0/0 in a masked branch) is not a range; ±Inf is, and keeps the tensor FP32
            lo, hi = float(outs[lo_name]), float(outs[hi_name])
            if lo <= hi:   # else the tensor was empty or all NaN on this sample
                old = cal.extrema.get(t, (math.inf, -math.inf))
                cal.extrema[t] = (min(old[0], lo), max(old[1], hi))

    # Folding batch k into the histograms (numpy, GIL released) overlaps inference of batch k+1.
    with progress("calibrating", dataset.count(), quiet) as advance, ThreadPoolExecutor(1) as pool:
        pending = None
        for sources, feed in prefetch(batches(dataset, batch_size)):
            source = sources[0] if len(sources) == 1 else f"{sources[0]}…"
            outs = exact.mend(run_session(sess, feed, source), feed, source)
            outs.update(feed)
            if want_shapes and not cal.shapes:
                cal.shapes = {t: [int(d) for d in outs[o]] for t, o in shape_of.items()}
                cal.shapes.update({k: list(v.shape) for k, v in feed.items()})
                cal.shape_samples = len(sources)
            if pending is not None:
                pending.result()
            pending = pool.submit(fold, outs, sources)
            cal.samples += len(sources)
            advance(len(sources))
        if pending is not None:
            pending.result()
    return cal


class _NanSafe:
    """The extrema of the samples where :func:`qdq.calib.session.with_extrema`'s check found NaN,
    computed again NaN-ignoring by a second session over the tensors so flagged (built on the first
    such sample, again when another tensor is flagged): a model without NaN runs one session."""

    def __init__(self, view, lent, extrema_of: dict, providers, threads):
        self.view, self.lent, self.extrema_of = view, lent, extrema_of
        self.providers, self.threads = providers, threads
        self.tensors, self.sess, self.names = set(), None, {}

    def mend(self, outs: dict, feed: dict, source) -> dict:
        """``outs`` with the flagged tensors' min and max replaced by their NaN-ignoring values."""
        flagged = {t for t, (_, _, check) in self.extrema_of.items() if math.isnan(float(outs[check]))}
        if not flagged:
            return outs
        if not flagged <= self.tensors:
            self.tensors |= flagged
            safe, self.names = with_extrema(self.view, sorted(self.tensors), nan_safe=True)
            self.sess = session_for(safe, self.providers, threads=self.threads, lent=self.lent)
        again = run_session(self.sess, feed, source)
        for t in flagged:
            outs[self.extrema_of[t][0]], outs[self.extrema_of[t][1]] = again[self.names[t][0]], again[self.names[t][1]]
        return outs
