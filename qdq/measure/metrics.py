"""Error metrics between a reference output and a quantized one, pooled over samples."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np


def power_db(signal: float, noise: float) -> float:
    """10·log10(signal / noise) for sums of squares: +inf without noise, −inf without signal."""
    if noise <= 0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


class ErrorAccumulator:
    """Pools sums over samples; every metric is over all values of all samples seen.

    * SQNR = 10·log10(Σ‖ref‖² / Σ‖q − ref‖²) dB (pooling keeps samples whose reference is near zero
      from dominating, as a mean of per-sample SQNR would);
    * cosine of the concatenated outputs; max and mean |q − ref|;
    * bias = mean(q − ref) / std(ref): a shift, in units of the reference's spread;
    * gain = cov(ref, q) / var(ref): the least-squares slope of q on ref (1 = no scaling error).
    """

    def __init__(self):
        self.n = 0
        self.s_r = self.s_q = self.s_rr = self.s_qq = self.s_rq = 0.0
        self.s_abs = self.noise = 0.0
        self.max_abs = 0.0
        self.finite = True

    def add(self, ref: np.ndarray, q: np.ndarray) -> None:
        r = ref.astype(np.float64).ravel()
        qq = q.astype(np.float64).ravel()
        if r.size == 0:
            return
        if not np.isfinite(qq).all():  # NaN/Inf in the quantized output: infinitely bad, not NaN
            self.finite = False
            qq = np.nan_to_num(qq, nan=0.0, posinf=0.0, neginf=0.0)
        d = qq - r
        self.n += r.size
        self.s_r += float(r.sum())
        self.s_q += float(qq.sum())
        self.s_rr += float(r @ r)
        self.s_qq += float(qq @ qq)
        self.s_rq += float(r @ qq)
        self.noise += float(d @ d)
        self.s_abs += float(np.abs(d).sum())
        self.max_abs = max(self.max_abs, float(np.abs(d).max()))

    @property
    def sqnr_db(self) -> float:
        return power_db(self.s_rr, self.noise) if self.finite else -math.inf

    @property
    def cosine(self) -> float:
        den = math.sqrt(self.s_rr * self.s_qq)
        return self.s_rq / den if den else 1.0

    @property
    def mean_abs(self) -> float:
        return self.s_abs / self.n if self.n else 0.0

    def _var_ref(self) -> float:
        m = self.s_r / self.n
        return max(self.s_rr / self.n - m * m, 0.0)

    @property
    def bias(self) -> float:
        if not self.n:
            return 0.0
        std = math.sqrt(self._var_ref())
        shift = (self.s_q - self.s_r) / self.n
        return shift / std if std else (0.0 if shift == 0 else math.copysign(math.inf, shift))

    @property
    def gain(self) -> float:
        if not self.n:
            return 1.0
        var = self._var_ref()
        cov = self.s_rq / self.n - (self.s_r / self.n) * (self.s_q / self.n)
        return cov / var if var else 1.0

    def to_dict(self) -> dict:
        return {"sqnr_db": self.sqnr_db, "cosine": self.cosine, "max_abs": self.max_abs,
                "mean_abs": self.mean_abs, "bias": self.bias, "gain": self.gain, "values": self.n}


def sqnr_db(ref: np.ndarray, q: np.ndarray) -> float:
    """20·log10(‖ref‖ / ‖q − ref‖) for one pair of arrays."""
    acc = ErrorAccumulator()
    acc.add(ref, q)
    return acc.sqnr_db


# the interval every figure comes with: a 90 % percentile bootstrap over samples
LEVEL, RESAMPLES = 0.90, 2000


@dataclass
class Figure:
    """A figure pooled over samples with its bootstrap interval: ``value`` (``low``–``high``, ``samples``)."""

    value: float
    low: float
    high: float
    samples: int
    unit: str = "dB"        # dB, or "" for a share in [0, 1] (printed as a percentage), or "x" for a plain number

    def __str__(self) -> str:
        if self.unit == "dB":
            f = _db_text
            return f"{f(self.value)} dB ({f(self.low)}–{f(self.high)}, {self.samples} samples)"
        if self.unit == "":
            return f"{self.value:.1%} ({self.low:.1%}–{self.high:.1%}, {self.samples} samples)"
        return f"{self.value:.3g} ({self.low:.3g}–{self.high:.3g}, {self.samples} samples)"

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "samples": self.samples}


def _db_text(v: float) -> str:
    return "inf" if v == math.inf else ("-inf" if v == -math.inf else f"{v:.1f}")


def canonical(rows: np.ndarray) -> np.ndarray:
    """``rows`` (n, k) in a fixed order (lexicographic), so that resampling does not depend on the
    order the samples came in."""
    rows = np.asarray(rows, np.float64).reshape(len(rows), -1)
    return rows[np.lexsort(rows.T[::-1])] if len(rows) else rows


def resample_sums(rows: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Sums of ``rows`` (n, k) over ``resamples`` bootstrap resamples of its n rows: (resamples, k).
    Rows are put in canonical order first and the generator is seeded: the same samples give the same
    interval whatever their order."""
    rows = canonical(rows)
    idx = np.random.default_rng(seed).integers(0, len(rows), (resamples, len(rows)))
    return rows[idx].sum(axis=1)


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` interval of ``values`` (NaN, a figure undefined on a resample, ignored)."""
    values = np.asarray(values, np.float64)
    if np.isnan(values).all():
        return math.nan, math.nan
    lo, hi = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def wilson_interval(p: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson's score interval of a share ``p`` seen on ``n`` samples:
    (p + z²/2n ± z·√(p(1−p)/n + z²/4n²)) / (1 + z²/n), z the normal quantile of ``level``.  Unlike a
    bootstrap it has width when every sample agrees (4 of 4 gives 0.60–1.00 at 90 %)."""
    if n <= 0 or not math.isfinite(p):
        return math.nan, math.nan
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    centre, den = p + z * z / (2 * n), 1 + z * z / n
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n))
    return max((centre - half) / den, 0.0), min((centre + half) / den, 1.0)


def sqnr_figure(rows: np.ndarray) -> Figure:
    """Pooled output SQNR 10·log10(Σ signal / Σ noise) of per-sample ``rows`` (n, 2) = (Σ ref², Σ err²),
    with its interval (computed on the noise-to-signal ratio, so identical outputs give +inf, not NaN)."""
    rows = np.asarray(rows, np.float64).reshape(-1, 2)
    value = power_db(rows[:, 0].sum(), rows[:, 1].sum())
    if len(rows) < 2:
        return Figure(value, value, value, len(rows))
    sums = resample_sums(rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        nsr = np.where(sums[:, 0] > 0, sums[:, 1] / sums[:, 0], np.inf)
    lo_nsr, hi_nsr = percentile_interval(nsr)
    return Figure(value, power_db(1.0, hi_nsr), power_db(1.0, lo_nsr), len(rows))


def paired_gap_low(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> float:
    """The lower end of the interval of SQNR(a) − SQNR(b) (dB), both measured on the same samples
    (rows (n, 2) each, same order), resampling samples jointly."""
    rows = np.concatenate([np.asarray(a, np.float64), np.asarray(b, np.float64)], axis=1)
    if len(rows) < 2:
        return power_db(rows[:, 0].sum(), rows[:, 1].sum()) - power_db(rows[:, 2].sum(), rows[:, 3].sum())
    sums = resample_sums(rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = 10 * np.log10((sums[:, 0] / sums[:, 1]) / (sums[:, 2] / sums[:, 3]))
    return percentile_interval(np.nan_to_num(gap, nan=-np.inf), level)[0]


def json_safe(x):
    """JSON has no Infinity or NaN: they become null.  A dB figure that is +inf (outputs identical)
    or −inf (NaN/Inf in the output, or an all-zero reference) gets a ``<key>_note`` saying which."""
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            out[k] = json_safe(v)
            if isinstance(v, float) and math.isinf(v) and k.endswith("_db"):
                out[f"{k}_note"] = "identical" if v > 0 else "non-finite values or an all-zero reference"
        return out
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
