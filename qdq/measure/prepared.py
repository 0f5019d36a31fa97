"""The prepared float model checked against the user's own: every figure qdq reports is measured
against the prepared model (BatchNorm folded, opset converted, FP16 computed in FP32), so it must
compute what the user's model computes, up to the rounding of those folds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ..calib.session import hold, holding, run_session, session_for
from ..errors import QdqError
from ..graph.precision import has_fp16, runnable
from ..modelio import has_external_data, load_model, name_nodes
from .evaluate import signal_noise
from .metrics import power_db

# an output of the prepared model this far (dB) from the user's, and apart by more than rounding, is a
# wrong reference
PREPARED_MIN_DB = 40.0
ROUNDING = 1e-4


def check_prepared(user, prepared: onnx.ModelProto, feeds: list, source: str) -> None:
    """Raise a one-line error when an output of ``prepared`` diverges from ``user``'s (a ModelProto or
    the path of the user's file) on ``feeds`` (:func:`_diverges`: beyond rounding and below
    :data:`PREPARED_MIN_DB`), naming the output and the first tensor of the prepared graph (by graph
    order, among those both models name) that diverges."""
    user, folder = _user_model(user)
    got, want = _run(prepared, feeds), _run(user, feeds, folder=folder)
    bad = [k for k in want[0] if k in got[0] and _diverges(want, got, k)]
    if not bad:
        return
    name, db = bad[0], _db(want, got, bad[0])
    first = _first_diverging(user, prepared, feeds[:1], folder)
    raise QdqError(f"{source}: qdq's prepared float model computes output {name!r} {db:.1f} dB away from your model"
                   + (f" (first diverging tensor {first!r})" if first else "") + "; no figure would be measured against "
                   "your model: please report it with the model")


def _user_model(user) -> tuple:
    """(the user's model to run, the folder of the external data it references or None).  A file's
    external data stays in its files for ONNX Runtime to map (the weights are not loaded a second
    time), unless the model computes in FP16: its emulation rewrites them."""
    if isinstance(user, onnx.ModelProto):
        return _runnable_names(user), None
    model = load_model(user, external=False)
    if not has_external_data(model):
        return _runnable_names(model), None
    if has_fp16(model):
        return _runnable_names(load_model(user)), None
    folder = Path(user).resolve().parent
    if holding():   # the run read these files into its store already: the same arrays lent
        return _runnable_names(hold(model, folder)), None
    return _runnable_names(model), folder


def _runnable_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy with its repeated node names made unique (ONNX Runtime refuses repeats; a
    node's name changes nothing it computes)."""
    names = [n.name for n in model.graph.node if n.name]
    if len(names) == len(set(names)):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    name_nodes(copy)
    return copy


def _run(model: onnx.ModelProto, feeds: list, extra=(), folder=None) -> list:
    sess = session_for(runnable(model), extra_outputs=extra, data_folder=folder)
    return [run_session(sess, f, f"sample {k}") for k, f in enumerate(feeds)]


def _diverges(want: list, got: list, name: str) -> bool:
    """Tensor ``name`` is a different computation, not rounding: apart (:func:`_apart`) and below
    :data:`PREPARED_MIN_DB` pooled over the samples."""
    return _apart(want, got, name) and _db(want, got, name) < PREPARED_MIN_DB


def _apart(want: list, got: list, name: str) -> bool:
    """Whether tensor ``name`` differs beyond float rounding: by more than :data:`ROUNDING` of its
    largest value, or of 1 when that is smaller (a saturated sigmoid's 1e-6 outputs differ by ulps)."""
    for w, g in zip(want, got):
        a, b = np.asarray(w[name], np.float64), np.asarray(g[name], np.float64)
        if a.shape != b.shape or not np.isfinite(b).all():
            return True
        if a.size and np.abs(a - b).max() > ROUNDING * max(1.0, float(np.abs(a).max())):
            return True
    return False


def _db(want: list, got: list, name: str) -> float:
    sums = [signal_noise(w[name], g[name]) for w, g in zip(want, got) if w[name].shape == g[name].shape]
    if len(sums) != len(want):
        return float("-inf")
    return power_db(sum(s for s, _ in sums), sum(n for _, n in sums))


def _first_diverging(user: onnx.ModelProto, prepared: onnx.ModelProto, feeds: list, folder=None) -> str | None:
    """The first float tensor in ``prepared``'s node order that ``user`` also computes and that differs."""
    have = {o for n in user.graph.node for o in n.output}
    names = [o for n in prepared.graph.node for o in n.output if o in have]
    try:
        got, want = _run(prepared, feeds, names), _run(user, feeds, names, folder)
    except QdqError:
        return None
    for t in names:
        if t in got[0] and t in want[0] and got[0][t].dtype.kind == "f" and _diverges(want, got, t):
            return t
    return None
