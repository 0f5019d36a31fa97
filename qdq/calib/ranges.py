"""Range methods: turn a tensor's statistics into a symmetric amax (INT8 scale = amax / 127).

All methods read only :class:`qdq.calib.stats.TensorStats`, so they inherit its independence from batch
size and sample order.  ``entropy``, ``percentile`` and ``mse`` work, as TensorRT's calibrator and
NVIDIA's pytorch-quantization (``calib/histogram.py``) do, on 2048 bins of |x| over [0, max|x|]:
counts h_k, edges e_k = k·max/2048, centres c_k = (e_k + e_{k+1})/2.

* ``max``        amax = max |x|.
* ``percentile`` amax = e_j with j the first bin whose cumulative share of values reaches p/100
                 (pytorch-quantization's ``calib_bin_edges[searchsorted(cdf, p/100)]``).
* ``entropy``    for each candidate i = 128 … 2048: the reference distribution P is h[0:i] with the
                 mass of h[i:] folded into bin i-1; the candidate Q merges h[0:i] into 128 levels
                 (bin k → level floor(128·k / i)) and spreads each level's mass evenly over that
                 level's non-empty bins (empty bins stay 0).  KL(P‖Q) = Σ P_k log(P_k / Q_k) after
                 normalising each to sum 1.  amax = e_i for the i with the smallest KL (largest i on
                 ties).  As in pytorch-quantization, bin 0 takes bin 1's count first, so the exact
                 zeros that ReLU-like layers produce in bulk do not dominate the divergence.
* ``mse``        for each candidate amax c = c_i, i = 128 … 2047: expected squared error
                 Σ_k h_k (c_k − fq(c_k, c))², with fq(x, c) = clamp(round_half_even(x·127/c), −128, 127)·c/127;
                 amax = the first argmin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .stats import FINE_BINS, TensorStats

METHODS = ("entropy", "percentile", "mse", "max")
# mse is the default: best or near it on the real models of tools/bench.py (docs/benchmarks.md); entropy,
# the TensorRT calibrator's algorithm, clips saturated ReLU6/SiLU outputs.
DEFAULT_METHOD = "mse"
NUM_LEVELS = 128  # 8-bit symmetric: 128 magnitudes per sign
QMAX = 127


@dataclass(frozen=True)
class Range:
    """A calibrated range: amax in the tensor's units, and the share of values beyond it."""

    amax: float
    method: str
    clipped: float | None  # share of calibration values with |x| > amax (histogram); None without data

    @property
    def scale(self) -> float:
        return self.amax / QMAX


def compute_range(stats: TensorStats, method: str = DEFAULT_METHOD, percentile: float = 99.99) -> Range:
    """amax of one tensor by ``method`` (see module doc).  Returns amax 0 for an all-zero tensor."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    vmax = stats.amax
    if vmax == 0.0:
        amax = 0.0
    elif method == "max":
        amax = vmax
    else:
        counts, width = stats.histogram()
        if method == "percentile":
            amax = _percentile_amax(counts, percentile) * width
        elif method == "entropy":
            amax = _entropy_amax(counts) * width
        else:
            amax = _mse_amax(counts, width)
    amax = min(amax, vmax)
    return Range(amax=float(amax), method=method, clipped=clipped_fraction(stats, amax))


def clipped_fraction(stats: TensorStats, amax: float) -> float:
    """Share of values with |x| >= amax, counted by whole fine bins whose lower edge is >= amax."""
    if stats.count == 0 or amax >= stats.amax:
        return 0.0
    first = min(FINE_BINS, math.ceil(amax / stats.bin_width))
    return float(stats.hist[first:].sum() / stats.count)


def _percentile_amax(counts: np.ndarray, percentile: float) -> int:
    """Index j of the edge e_j (see module doc)."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    cdf = np.cumsum(counts) / counts.sum()
    return int(min(np.searchsorted(cdf, percentile / 100.0), counts.size))


def _entropy_amax(bins: np.ndarray) -> int:
    """Index i (amax = i·w) minimising KL(P‖Q); vectorised over all candidates at once.

    With level sums S_j and non-empty counts m_j over bins[0:i], Q_k = S_j/m_j on non-empty bins
    (before normalising, ΣQ = Σ bins[0:i] = T_i); P has total T (all values).  Then
    KL = (1/T) Σ_k P_k log P_k − log T + log T_i − (1/T) Σ_k P_k log Q_k, and
    Σ_k P_k log Q_k = Σ_j S_j log(S_j/m_j) + tail · log Q_{i-1}, all from prefix sums.
    KL is +inf where P_{i-1} > 0 but Q_{i-1} = 0 (bin i-1 empty, tail not).
    """
    bins = bins.copy()
    bins[0] = bins[1]
    n = bins.size
    total = bins.sum()
    cand = np.arange(NUM_LEVELS, n + 1)  # i
    csum = np.concatenate([[0.0], np.cumsum(bins)])
    cnz = np.concatenate([[0], np.cumsum(bins > 0)])
    xlogx = np.where(bins > 0, bins * np.log(np.where(bins > 0, bins, 1.0)), 0.0)
    cxlogx = np.concatenate([[0.0], np.cumsum(xlogx)])

    # level j of candidate i holds bins k with ceil(j·i/128) <= k < ceil((j+1)·i/128)
    j = np.arange(NUM_LEVELS + 1)
    starts = (j[None, :] * cand[:, None] + NUM_LEVELS - 1) // NUM_LEVELS  # (C, 129)
    S = csum[starts[:, 1:]] - csum[starts[:, :-1]]
    m = cnz[starts[:, 1:]] - cnz[starts[:, :-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        s_log_q = np.where(S > 0, S * np.log(S / np.maximum(m, 1)), 0.0).sum(axis=1)
    last = bins[cand - 1]
    tail = total - csum[cand]
    p_last = last + tail
    # Σ P log P: bins[0:i-1] unchanged, bin i-1 carries the tail
    plogp = cxlogx[cand - 1] + np.where(p_last > 0, p_last * np.log(np.maximum(p_last, 1e-300)), 0.0)
    # Q at bin i-1: its level's mean over non-empty bins (0 if bin i-1 is empty)
    q_last = np.where(last > 0, S[:, -1] / np.maximum(m[:, -1], 1), 0.0)
    with np.errstate(divide="ignore"):
        tail_term = np.where(tail > 0, tail * np.log(np.where(q_last > 0, q_last, 1.0)), 0.0)
    t_i = csum[cand]
    with np.errstate(divide="ignore"):
        kl = plogp / total - math.log(total) + np.log(t_i) - (s_log_q + tail_term) / total
    # Q is undefined (all zero) when no value lies below the candidate: never choose it
    kl = np.where(((tail > 0) & (last == 0)) | (t_i == 0), np.inf, kl)
    best = np.flatnonzero(kl == kl.min())[-1]
    return int(cand[best])


def fake_quant(x: np.ndarray, scale) -> np.ndarray:
    """Symmetric INT8 quantize→dequantize with ``scale`` (= amax / 127):
    clamp(round_half_even(x / scale), −128, 127) · scale."""
    return np.clip(np.rint(x / scale), -QMAX - 1, QMAX) * scale


def _mse_amax(bins: np.ndarray, width: float) -> float:
    """argmin over candidates c = centre i (i >= 128) of Σ_k h_k (x_k − fq(x_k, c))², in bin units
    (u_k = k + 0.5; the width scales every error alike).  Centres above c saturate to c exactly, so
    their part is Σ_{k>i} h_k (u_k − c)², from suffix sums; the rest is rounding error, summed over
    k <= i only."""
    n = bins.size
    u = np.arange(n) + 0.5
    h = bins.astype(np.float64)
    # suffix sums over k > i of h, h·u, h·u²
    s0, s1, s2 = (np.concatenate([np.cumsum((h * u ** p)[::-1])[::-1][1:], [0.0]]) for p in (0, 1, 2))
    best, best_err = n - 1, math.inf
    for lo in range(NUM_LEVELS, n, 256):
        i = np.arange(lo, min(lo + 256, n))
        c = u[i][:, None]
        k = u[: i[-1] + 1][None, :]
        s = c / QMAX
        inside = np.where(k <= c, (k - np.rint(k / s) * s) ** 2, 0.0) @ h[: i[-1] + 1]
        err = inside + s2[i] - 2 * u[i] * s1[i] + u[i] ** 2 * s0[i]
        j = int(np.argmin(err))
        if err[j] < best_err:
            best, best_err = int(i[j]), float(err[j])
    return u[best] * width


MASSIVE_RATIO = 100.0   # max|x| over the 99th percentile of |x|: a few values orders of magnitude above the rest


def massive(stats: TensorStats) -> float:
    """max|x| / (99th percentile of |x|) of one calibrated tensor: about 2 for Gaussian or Laplacian
    values, ≥ :data:`MASSIVE_RATIO` when a few tokens or channels carry values orders of magnitude
    above the rest ("massive activations", high-norm tokens).  0 for an all-zero tensor."""
    if stats.amax == 0.0:
        return 0.0
    counts, width = stats.histogram()
    p99 = _percentile_amax(counts, 99.0) * width
    return stats.amax / p99 if p99 > 0 else math.inf
