"""Streaming per-tensor statistics: min, max and a histogram of |x|.

The stored histogram has ``FINE_BINS`` = 65536 bins of width ``w = 2**k`` covering
``[0, FINE_BINS·w)``; bin ``i`` counts the values with ``i·w <= |x| < (i+1)·w``.  ``k`` is the
smallest integer with ``max|x| < FINE_BINS·2**k`` over everything seen so far.  When a larger value
arrives, the width doubles (adjacent pairs of bins merge) until it fits.  Because every bin edge of
width ``2w`` is also an edge of width ``w``, merging gives exactly the histogram that width ``2w``
would have produced directly, so the histogram depends only on the multiset of values seen: not on
batch size, nor on sample order.  Dividing by a power of two is exact in binary floating point, so
``floor(|x| / w)`` assigns every value to the same bin whichever batch it arrived in.  Memory per
tensor is constant: 65536 uint32 counts (256 KiB) while fewer than 2**32 values have been seen, so
that no bin can overflow, then int64 counts (512 KiB); the counts are the same either way.

TensorRT's calibrator and pytorch-quantization use ``NUM_BINS`` = 2048 bins over ``[0, max|x|]``
(their range follows the first batch; here it is the max over all data, i.e. what they compute when
every value comes in one batch).  :meth:`TensorStats.histogram` rebuilds that histogram from the
fine one: the fine bins, 16 to 32 per coarse bin, are split across coarse edges in proportion to
their overlap, the last one ending at max|x|.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NUM_BINS = 2048            # TensorRT / pytorch-quantization calibration histogram
FINE_BINS = 1 << 16        # stored, power-of-two-width histogram

# Smallest bin width: 2**-126 keeps the scaling factor 2**-k finite in float32 and gives tensors
# that are all zero a defined histogram.
_MIN_EXP = -126


COMPACT_LIMIT = 1 << 32    # below this many values a uint32 count cannot overflow


def _counts_for(values: int) -> type:
    """The count dtype for a histogram of ``values`` values in all."""
    return np.uint32 if values < COMPACT_LIMIT else np.int64


def _coarsen(hist: np.ndarray, d: int) -> np.ndarray:
    """The same counts at 2**d times the bin width: bins f·j … f·j + f − 1 (f = 2**d) merge into bin j."""
    if d <= 0:
        return hist
    if d >= FINE_BINS.bit_length() - 1:
        out = np.zeros(FINE_BINS, dtype=hist.dtype)
        out[0] = hist.sum(dtype=hist.dtype)
        return out
    f = 1 << d
    merged = hist.reshape(FINE_BINS // f, f).sum(axis=1, dtype=hist.dtype)
    return np.concatenate([merged, np.zeros(FINE_BINS - FINE_BINS // f, dtype=hist.dtype)])


def _exponent_for(amax: float) -> int:
    """Smallest k (>= _MIN_EXP) with amax < FINE_BINS · 2**k."""
    if amax <= 0.0:
        return _MIN_EXP
    m, e = math.frexp(amax / FINE_BINS)  # amax/FINE_BINS = m·2**e, 0.5 <= m < 1 → value < 2**e
    k = e
    # amax/FINE_BINS < 2**e always; try one lower exponent in case m == 0.5 exactly (value = 2**(e-1)).
    if amax < FINE_BINS * math.ldexp(1.0, k - 1):
        k -= 1
    return max(k, _MIN_EXP)


@dataclass
class TensorStats:
    """Running statistics of one tensor over all calibration samples.

    ``hist[i]`` counts values with ``i·bin_width <= |x| < (i+1)·bin_width`` (units of the tensor).
    ``nonfinite`` counts NaN and ±Inf values (they are not in ``min``, ``max`` or ``hist``).
    """

    name: str
    count: int = 0
    min: float = math.inf
    max: float = -math.inf
    exp: int = _MIN_EXP
    nonfinite: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(FINE_BINS, dtype=np.uint32))

    @property
    def bin_width(self) -> float:
        return math.ldexp(1.0, self.exp)

    @property
    def amax(self) -> float:
        """max |x| seen (0 before any data)."""
        if self.count == 0:
            return 0.0
        return max(abs(self.min), abs(self.max))

    def update(self, x: np.ndarray) -> None:
        """Fold a batch of values (any shape, float) into the statistics."""
        if x.size == 0:
            return
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32)
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN propagates through min/max, Inf shows there
            finite = np.isfinite(x)
            self.nonfinite += int(x.size - np.count_nonzero(finite))
            x = x[finite]
            if x.size == 0:
                return
            lo, hi = float(x.min()), float(x.max())
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += x.size
        self._widen(self.amax)
        self.hist = self.hist.astype(_counts_for(self.count), copy=False)
        a = np.abs(x.reshape(-1))
        a *= a.dtype.type(math.ldexp(1.0, -self.exp))  # exact: a power of two
        # products that round up onto FINE_BINS still belong to the last bin
        np.minimum(a, a.dtype.type(FINE_BINS - 1), out=a)
        idx = a.astype(np.uint16)  # truncation = floor for |x| >= 0; < 65536 fits 16 bits
        np.add(self.hist, np.bincount(idx, minlength=FINE_BINS), out=self.hist, casting="unsafe")  # fits: see above

    def _widen(self, amax: float) -> None:
        k = _exponent_for(amax)
        if k > self.exp:
            # an empty histogram just takes the new width; a filled one merges 2**(k - exp) bins at once
            self.hist = _coarsen(self.hist, k - self.exp) if self.hist.any() else self.hist
            self.exp = k

    def histogram(self, bins: int = NUM_BINS) -> tuple[np.ndarray, float]:
        """``bins`` counts over ``[0, max|x|]`` (float64, summing to ``count``) and their width.

        Fine bin i covers [i·w, (i+1)·w), the last non-empty one ending at max|x|; its count is
        spread uniformly over that interval, so a coarse bin receives each fine bin's count in
        proportion to their overlap."""
        amax = self.amax
        if self.count == 0 or amax == 0.0:
            out = np.zeros(bins)
            out[0] = self.count
            return out, 0.0
        nz = np.flatnonzero(self.hist)
        last = int(nz[-1]) + 1
        edges = np.minimum(np.arange(last + 1) * self.bin_width, amax)
        edges[-1] = amax
        cum = np.concatenate([[0.0], np.cumsum(self.hist[:last], dtype=np.float64)])
        coarse = np.linspace(0.0, amax, bins + 1)
        at = np.interp(coarse, edges, cum)
        at[-1] = cum[-1]
        return np.diff(at), amax / bins
