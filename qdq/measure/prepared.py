"""The prepared float model checked against the user's own: every figure qdq reports is measured
against the prepared model (BatchNorm folded, opset converted, FP16 computed in FP32), so it must
compute what the user's model computes, up to the rounding of those folds."""
from __future__ import annotations

import onnx

from ..calib.session import run_session, session_for
from ..errors import QdqError
from ..graph.precision import runnable
from .evaluate import signal_noise
from .metrics import power_db

# an output of the prepared model this far (dB) from the user's is a wrong reference, not rounding
PREPARED_MIN_DB = 40.0


def check_prepared(user: onnx.ModelProto, prepared: onnx.ModelProto, feeds: list, source: str) -> None:
    """Raise a one-line error when an output of ``prepared`` is below :data:`PREPARED_MIN_DB` SQNR
    against ``user`` on ``feeds`` (pooled), naming the output and the first tensor of the prepared
    graph (by graph order, among those both models name) that diverges."""
    got, want = _run(prepared, feeds), _run(user, feeds)
    bad = [(k, db) for k in want[0] if k in got[0] and (db := _db(want, got, k)) < PREPARED_MIN_DB]
    if not bad:
        return
    name, db = bad[0]
    first = _first_diverging(user, prepared, feeds[:1])
    raise QdqError(f"{source}: qdq's prepared float model computes output {name!r} {db:.1f} dB away from your model"
                   + (f" (first diverging tensor {first!r})" if first else "") + "; no figure would be measured against "
                   "your model: please report it with the model")


def _run(model: onnx.ModelProto, feeds: list, extra=()) -> list:
    sess = session_for(runnable(model), extra_outputs=extra)
    return [run_session(sess, f, f"sample {k}") for k, f in enumerate(feeds)]


def _db(want: list, got: list, name: str) -> float:
    sums = [signal_noise(w[name], g[name]) for w, g in zip(want, got) if w[name].shape == g[name].shape]
    if len(sums) != len(want):
        return float("-inf")
    return power_db(sum(s for s, _ in sums), sum(n for _, n in sums))


def _first_diverging(user: onnx.ModelProto, prepared: onnx.ModelProto, feeds: list) -> str | None:
    """The first float tensor in ``prepared``'s node order that ``user`` also computes and that differs."""
    have = {o for n in user.graph.node for o in n.output}
    names = [o for n in prepared.graph.node for o in n.output if o in have]
    try:
        got, want = _run(prepared, feeds, names), _run(user, feeds, names)
    except QdqError:
        return None
    for t in names:
        if t in got[0] and t in want[0] and got[0][t].dtype.kind == "f" and _db(want, got, t) < PREPARED_MIN_DB:
            return t
    return None
