"""Statistics and range methods against their published definitions."""
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdq.calib.ranges import QMAX, _entropy_amax, compute_range, fake_quant
from qdq.calib.stats import FINE_BINS, TensorStats


def _stats(chunks):
    s = TensorStats("t")
    for c in chunks:
        s.update(c)
    return s


def _reference_kl(hist):
    """pytorch-quantization's _compute_amax_entropy, written out loop by loop: {i: KL(P_i || Q_i)}."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    kls = {}
    for i in range(128, len(bins) + 1):
        space = np.linspace(0, i, num=129)
        dig = np.digitize(range(i), space) - 1
        dig[bins[:i] == 0] = -1
        levels = np.zeros(128)
        for k, d in enumerate(dig):
            if d != -1:
                levels[d] += bins[k]
        for key, n in Counter(dig).items():
            if key != -1:
                levels[key] /= n
        q = np.array([levels[d] if d != -1 else 0.0 for d in dig])
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        p, q = p / p.sum(), q / q.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            kls[i] = np.sum(np.where(p > 0, p * np.log(p / q), 0.0))
    return kls


def _reference_entropy(hist):
    kls = _reference_kl(hist)
    best = min(kls.values())
    return max(i for i, v in kls.items() if v == best)   # the last minimum, as pytorch-quantization


def _pq_histogram(x):
    """pytorch-quantization's histogram of one batch: 2048 bins of |x| over [0, max|x|]."""
    a = np.abs(x.astype(np.float64))
    return np.histogram(a, bins=2048, range=(0, a.max()))


def _pq_amax(x, method, percentile=99.99):
    """pytorch-quantization's compute_amax on raw values (all data in one batch)."""
    hist, edges = _pq_histogram(x)
    if method == "entropy":
        return edges[_reference_entropy(hist)]
    if method == "percentile":
        cdf = np.cumsum(hist / hist.sum())
        return edges[np.searchsorted(cdf, percentile / 100)]
    centres = (edges[1:] + edges[:-1]) / 2
    mses = [np.mean((fake_quant(centres, centres[i] / QMAX) - centres) ** 2 * hist) for i in range(128, len(centres))]
    return centres[128 + int(np.argmin(mses))]


def _samples(kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "relu":
        x = np.maximum(rng.standard_normal(200_000), 0)
        x[:5] = 9.0   # a few outliers far out, as activations have
    elif kind == "laplace":
        x = rng.laplace(size=200_000)
    else:
        x = rng.standard_normal(200_000) * np.where(rng.random(200_000) < 0.01, 8.0, 1.0)   # heavy tail
    return x.astype(np.float32)


@pytest.mark.parametrize("kind", ["relu", "laplace", "mixture"])
@pytest.mark.parametrize("method", ["entropy", "percentile", "mse"])
def test_methods_match_pytorch_quantization_on_raw_values(kind, method):
    """Our amax comes from the batch-invariant fine histogram; the oracle runs pytorch-quantization's
    algorithm on the raw values in one batch.  They agree within one of the 2048 bins (entropy: on
    the divergence, see below)."""
    x = _samples(kind, 7)
    ours = compute_range(_stats(np.array_split(x, 13)), method).amax
    theirs = _pq_amax(x, method)
    width = np.abs(x).max() / 2048
    if method != "entropy":
        assert abs(ours - theirs) <= 1.01 * width, (kind, method, ours, theirs, width)
        return
    # KL is flat near its minimum: the oracle's own divergence at our amax is within 1 % of its minimum
    kls = _reference_kl(_pq_histogram(x)[0])
    assert kls[int(round(ours / width))] <= 1.01 * min(kls.values())
    assert ours == pytest.approx(theirs, rel=0.01)


def test_entropy_scales_with_the_data():
    """The same data ×1.03 must give amax ×1.03 (TensorRT's 2048 bins over [0, max] do; bins of a
    power-of-two width spanning [0, 2048·2^k) gave 9.75 vs 4.09)."""
    x = _samples("relu", 11)
    for factor in (1.03, 1.5, 0.7):
        a = compute_range(_stats([x]), "entropy").amax
        b = compute_range(_stats([x * np.float32(factor)]), "entropy").amax
        assert b / a == pytest.approx(factor, rel=0.01), factor


@pytest.mark.parametrize("seed,scale,outlier", [(0, 1.0, 10.0), (1, 3.0, 30.0), (2, 0.2, 0.0)])
def test_entropy_matches_the_loop_definition(seed, scale, outlier):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal(100_000) * scale, 0).astype(np.float32)
    x[:3] = outlier
    counts, _ = _stats([x]).histogram()
    assert _entropy_amax(counts) == _reference_entropy(counts)


@pytest.mark.parametrize("first", ["finite", "nan"])
def test_nan_is_seen_whatever_the_order(first):
    good = np.linspace(-1, 1, 100, dtype=np.float32)
    bad = good.copy()
    bad[5] = np.nan
    s = _stats([good, bad] if first == "finite" else [bad, good])
    assert s.nonfinite == 1 and (s.min, s.max) == (-1.0, 1.0) and s.count == 199


def test_histogram_is_independent_of_batching_and_order():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(60_000) * np.linspace(0.1, 40, 60_000)).astype(np.float32)
    a = _stats([x])
    b = _stats(np.array_split(x, 37))
    c = _stats(np.array_split(x[rng.permutation(x.size)], 5)[::-1])
    for other in (b, c):
        assert other.exp == a.exp and np.array_equal(other.hist, a.hist)
        assert (other.min, other.max) == (a.min, a.max)


def test_compact_counts_become_wide_before_they_could_overflow(monkeypatch):
    """uint32 counts (256 KiB a tensor) while fewer values than COMPACT_LIMIT were seen, int64 after:
    the counts equal the int64 histogram's at every step."""
    from qdq.calib import stats

    monkeypatch.setattr(stats, "COMPACT_LIMIT", 25_000)
    rng = np.random.default_rng(5)
    parts = [(rng.standard_normal(10_000) * (k + 1)).astype(np.float32) for k in range(4)]
    s = TensorStats("x")
    assert s.hist.dtype == np.uint32 and s.hist.nbytes == FINE_BINS * 4
    for k, p in enumerate(parts):
        s.update(p)
        wide = np.concatenate(parts[:k + 1])
        w = s.bin_width
        direct = np.bincount(np.minimum(np.floor(np.abs(wide) / np.float32(w)).astype(np.int64), FINE_BINS - 1),
                             minlength=FINE_BINS)
        assert np.array_equal(direct, s.hist)
        assert s.hist.dtype == (np.uint32 if wide.size < 25_000 else np.int64)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=300), st.integers(1, 7))
def test_widening_equals_direct_histogram(values, parts):
    x = np.asarray(values, np.float32)
    s = _stats(np.array_split(x, parts))
    w = s.bin_width
    assert abs(x).max() < FINE_BINS * w
    direct = np.bincount(np.minimum(np.floor(np.abs(x) / np.float32(w)).astype(np.int64), FINE_BINS - 1), minlength=FINE_BINS)
    assert np.array_equal(direct, s.hist)
    assert s.count == x.size


def test_percentile_max_and_mse_against_brute_force():
    rng = np.random.default_rng(4)
    x = rng.laplace(size=200_000).astype(np.float32)
    s = _stats([x])
    assert compute_range(s, "max").amax == pytest.approx(np.abs(x).max())
    r = compute_range(s, "percentile", 99.0)
    # the left edge of the 2048-bin over [0, max] in which 99 % of |x| is reached
    width = np.abs(x).max() / 2048
    assert np.mean(np.abs(x) < r.amax + width) >= 0.99 - 1e-4
    assert np.mean(np.abs(x) < r.amax) < 0.99
    assert r.clipped == pytest.approx(np.mean(np.abs(x) >= r.amax), abs=2e-4)
    mse = compute_range(s, "mse").amax
    errs = {c: np.mean((fake_quant(x, c / QMAX) - x) ** 2) for c in (mse * 0.8, mse, mse * 1.25)}
    assert errs[mse] <= min(errs.values()) * 1.01


def test_fake_quant_rounds_half_to_even_and_saturates():
    amax = 127.0  # scale 1
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 200.0, -200.0])
    assert fake_quant(x, amax / QMAX).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 127.0, -128.0]


def test_entropy_of_values_far_from_zero_keeps_them():
    # no value below 100: candidates that would clip everything have an all-zero Q and must lose
    x = np.random.default_rng(5).uniform(100, 101, 10_000).astype(np.float32)
    amax = compute_range(_stats([x]), "entropy").amax
    assert 100.0 < amax <= 101.0   # 100.0 exactly would be a candidate with nothing below it


def test_all_zero_tensor_gives_zero_amax():
    s = _stats([np.zeros(1000, np.float32)])
    for m in ("max", "entropy", "percentile", "mse"):
        assert compute_range(s, m).amax == 0.0
    assert math.isfinite(s.bin_width)


def test_extrema_ignore_nan_as_the_exact_form_does():
    """calibrate's min/max of float tensors: plain reductions checked by a sum, and where the sum is NaN
    (0/0 on some elements, every element on one sample) the NaN-ignoring values, equal to NumPy's
    nanmin/nanmax; a tensor without NaN keeps the plain reductions' exact values.  The fast form
    alone would return NaN or a min over part of the values there."""
    import onnx
    from onnx import TensorProto, helper

    from qdq.calib.calibrate import calibrate
    from qdq.calib.data import Feeds, model_inputs

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])
    nodes = [helper.make_node("Div", ["x", "x"], ["ratio"]), helper.make_node("Mul", ["ratio", "x"], ["y"]),
             helper.make_node("Abs", ["x"], ["clean"]), helper.make_node("Add", ["clean", "y"], ["out"])]
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 8])
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [out], value_info=[y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal((4, 8)).astype(np.float32) * s for s in (1.0, 3.0, 0.5)]
    feeds[1][0, :5] = 0.0       # 0/0: NaN on some elements
    feeds[2][:] = 0.0           # NaN everywhere in ratio and y on this sample
    cal = calibrate(m, Feeds(model_inputs(m), [{"x": f} for f in feeds]), [], ["ratio", "y", "clean"], quiet=True)
    for name, fn in (("ratio", lambda f: f / f), ("y", lambda f: (f / f) * f), ("clean", np.abs)):
        with np.errstate(invalid="ignore"):
            vals = np.concatenate([fn(f).ravel() for f in feeds])
        assert cal.extrema[name] == (float(np.nanmin(vals)), float(np.nanmax(vals))), name
