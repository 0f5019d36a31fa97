"""Error metrics between a reference output and a quantized one, pooled over samples."""
from __future__ import annotations

import math

import numpy as np


class ErrorAccumulator:
    """Pools signal and noise over samples: SQNR = 10·log10(Σ‖ref‖² / Σ‖q − ref‖²) dB.

    Pooling (rather than averaging per-sample SQNR) keeps samples whose reference is near zero
    from dominating; also tracks cosine similarity of the concatenated outputs and max |q − ref|.
    """

    def __init__(self):
        self.signal = 0.0
        self.noise = 0.0
        self.dot = 0.0
        self.q_energy = 0.0
        self.max_abs = 0.0
        self.count = 0

    def add(self, ref: np.ndarray, q: np.ndarray) -> None:
        r = ref.astype(np.float64).ravel()
        d = q.astype(np.float64).ravel() - r
        if not np.isfinite(d).all():  # NaN/Inf in the quantized output: infinitely bad, not NaN
            self.noise = math.inf
        self.signal += float(r @ r)
        self.noise += float(d @ d)
        self.dot += float(r @ (r + d))
        self.q_energy += float((r + d) @ (r + d))
        self.max_abs = max(self.max_abs, float(np.abs(d).max()) if d.size else 0.0)
        self.count += r.size

    @property
    def sqnr_db(self) -> float:
        if self.noise == 0.0:
            return math.inf
        if self.signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal / self.noise)

    @property
    def cosine(self) -> float:
        den = math.sqrt(self.signal * self.q_energy)
        return self.dot / den if den else 1.0


def sqnr_db(ref: np.ndarray, q: np.ndarray) -> float:
    """20·log10(‖ref‖ / ‖q − ref‖) for one pair of arrays."""
    acc = ErrorAccumulator()
    acc.add(ref, q)
    return acc.sqnr_db
