"""Error metrics between a reference output and a quantized one, pooled over samples."""
from __future__ import annotations

import math

import numpy as np
import onnx

from ..calib.session import run_session, session_for
from ..graph.precision import runnable


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


class Evaluator:
    """Pooled output SQNR (all outputs, all samples) of candidate models against the float model,
    on fixed samples (a list of feeds; ``label`` names them in errors)."""

    def __init__(self, float_model: onnx.ModelProto, feeds: list, label: str = "sample"):
        self.feeds, self.label = feeds, label
        sess = session_for(runnable(float_model))
        self.refs = [run_session(sess, f, f"{label} {k}") for k, f in enumerate(feeds)]
        self.runs = 0

    def sqnr(self, model: onnx.ModelProto) -> float:
        sess = session_for(runnable(model))
        acc = ErrorAccumulator()
        for k, (feed, ref) in enumerate(zip(self.feeds, self.refs)):
            out = run_session(sess, feed, f"{self.label} {k}")
            for name, value in ref.items():
                acc.add(value, out[name])
        self.runs += 1
        return acc.sqnr_db


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
