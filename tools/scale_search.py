"""Would a finer per-tensor amax, searched at the consumers' outputs, beat the equalization's own choice?

For every Linear input of a model (``graph.equalize``'s targets): the joint error Σ‖X·W − q(X)·q(W)‖² at
the layers' outputs, out of sample (amax fitted on the even-numbered calibration samples' rows, the
error on the odd ones, and the other way round), with mse's amax against the best of amax = r·max|X|,
r in GRID; ``--shifted``: on the tensor as the default quantizes it (after its shift and scales).

    python tools/scale_search.py minilm [--shifted]

docs/benchmarks.md ("per-tensor scales searched at the consumers' outputs") has the figures.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qdq.calib.data import Dataset, Preprocess, first_feeds, model_inputs  # noqa: E402
from qdq.graph import equalize as E  # noqa: E402
from qdq.graph.index import GraphIndex  # noqa: E402
from qdq.graph.surgery import import_graph  # noqa: E402
from qdq.targets import prepare  # noqa: E402
from tools import datasets  # noqa: E402

GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2)


def _as_quantized(idx, t, layers, lo, hi, parts, weights):
    """The rows and weights as the default quantizes them: after the shift and scales it chooses."""
    free = E._absorbs(idx, t, layers)
    z, s, _ = E._choose(lo, hi, parts, weights, None, scale_ok=free, shift_ok=t not in E._attention_outputs(idx),
                        shift_free=free and all(E._bias_slot(idx, p) for p in layers))
    parts = [p.astype(np.float64) - (z if z is not None else 0) for p in parts]
    if s is not None:
        parts, weights = [p / s for p in parts], [w * s[:, None] for w in weights]
    return parts, weights


def search(name: str, shifted: bool) -> float:
    """Prints one line per tensor; returns the gain over all of them (dB of joint error)."""
    p = datasets.prepared(name)
    fm = prepare(str(p.model), "trt10", name, [])
    feeds = first_feeds(Dataset(p.calib, model_inputs(fm), p.preprocess or Preprocess()), 16)
    idx = GraphIndex.build(fm)
    targets, nodes = E._smooth_targets(idx), list(import_graph(fm).nodes)
    stats = E.channel_ranges(fm, list(targets), feeds, rows=E.ROWS)
    total_mse = total_grid = 0.0
    for t, layers in targets.items():
        weights, (lo, hi, parts) = E._layer_weights(nodes, layers), stats[t]
        parts, weights = _as_quantized(idx, t, layers, lo, hi, parts, weights) if shifted else \
            ([q.astype(np.float64) for q in parts], weights)
        qws = E._quantized(weights, np.ones(weights[0].shape[0]))
        halves = [np.concatenate(parts[0::2]), np.concatenate(parts[1::2])]
        e_mse = e_grid = 0.0
        for fit, test in (halves, halves[::-1]):
            fit_refs, test_refs, top = [fit @ w for w in weights], [test @ w for w in weights], float(np.abs(fit).max())
            r = min(GRID, key=lambda r: E.error_at(fit, fit_refs, qws, r * top))
            e_mse += E.error_at(test, test_refs, qws, E._mse_amax(fit))
            e_grid += E.error_at(test, test_refs, qws, r * top)
        total_mse, total_grid = total_mse + e_mse, total_grid + e_grid
        print(f"{t:60s} {10 * np.log10(e_mse / e_grid):+6.2f} dB")
    gain = 10 * np.log10(total_mse / total_grid)
    print(f"all {len(targets)} tensors: {gain:+.2f} dB")
    return gain


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a set of tools/datasets.py (minilm, minilm_tokens, ...)")
    ap.add_argument("--shifted", action="store_true", help="after the shift and scales the default applies")
    args = ap.parse_args()
    search(args.model, args.shifted)
