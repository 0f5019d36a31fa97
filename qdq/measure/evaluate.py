"""Measuring candidate models against the float model on fixed samples, as the device runs them.

An :class:`Evaluator` holds the FP32 outputs of a few samples (the held-back samples of ``quantize``,
or any feeds).  :meth:`Evaluator.measure` runs a candidate, optionally through a *device view* (the
model as TensorRT runs it: the non-INT8 remainder in FP16, :func:`qdq.graph.precision.remainder_fp16`),
and returns a :class:`Measurement`: per sample the signal Σ ref² and noise Σ (q − ref)² over all
outputs, and the task's row of counts (:mod:`qdq.measure.tasks`); figures are pooled over samples with
a bootstrap interval (:func:`qdq.measure.metrics.sqnr_figure`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..calib.session import run_session, session_for
from ..graph.precision import runnable
from .metrics import Figure, paired_gap_low, percentile_interval, resample_sums, sqnr_figure
from .tasks import Task


def signal_noise(ref: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    """(Σ ref², Σ (q − ref)²) of one output of one sample; NaN/Inf in ``q`` make the noise infinite."""
    r, s = ref.astype(np.float64).ravel(), q.astype(np.float64).ravel()
    if not np.isfinite(s).all():
        return float(r @ r), float("inf")
    d = s - r
    return float(r @ r), float(d @ d)


@dataclass
class Measurement:
    """One candidate on the evaluator's samples: ``rows`` (n, 2) per-sample (signal, noise); ``task`` and
    ``task_rows`` (n, k) its task's counts per sample (None without a task)."""

    rows: np.ndarray
    task: Task | None = None
    task_rows: np.ndarray | None = None

    @property
    def samples(self) -> int:
        return len(self.rows)

    def sqnr(self) -> Figure:
        return sqnr_figure(self.rows)

    def task_figures(self) -> dict:
        """name → :class:`Figure` of every figure of the task (headline first)."""
        if self.task is None or self.task_rows is None or self.task.name == "none":
            return {}
        rows = self.task_rows
        point = self.task.figures(rows.sum(0, keepdims=True))
        boot = self.task.figures(resample_sums(rows)) if len(rows) > 1 else point
        out = {}
        for name in self.task.figures_of:
            lo, hi = percentile_interval(boot[name])
            unit = "x" if name == "rank" or self.task.name == "metric" else ""
            out[name] = Figure(float(point[name][0]), lo, hi, len(rows), unit)
        return out

    def per_sample(self) -> list:
        """Each sample's own figures: SQNR and the task's."""
        out = []
        for k in range(self.samples):
            d = {"sqnr_db": Measurement(self.rows[k:k + 1]).sqnr().value}
            if self.task_rows is not None and self.task is not None and self.task.name != "none":
                d.update({n: float(v[0]) for n, v in self.task.figures(self.task_rows[k:k + 1]).items()})
            out.append(d)
        return out

    def gap_low(self, reference: "Measurement") -> float:
        """Lower end of the interval of this SQNR minus ``reference``'s (same samples)."""
        return paired_gap_low(self.rows, reference.rows)


class Evaluator:
    """Candidates against the float model on fixed samples (a list of feeds; ``label`` names them in
    errors).  ``task`` (a :class:`qdq.measure.tasks.Task`) adds task agreement; ``device`` (model →
    model ready for ONNX Runtime, e.g. :func:`qdq.graph.precision.remainder_fp16`) is applied to every
    candidate instead of :func:`qdq.graph.precision.runnable`."""

    def __init__(self, float_model: onnx.ModelProto, feeds: list, label: str = "sample", task: Task | None = None,
                 device=None):
        self.feeds, self.label, self.task, self.device = feeds, label, task, device
        sess = session_for(runnable(float_model))
        self.refs = [run_session(sess, f, f"{label} {k}") for k, f in enumerate(feeds)]
        self.runs = 0

    def outputs(self, model: onnx.ModelProto) -> list:
        """The candidate's outputs on every sample (after the device view)."""
        sess = session_for(self.device(model) if self.device is not None else runnable(model))
        self.runs += 1
        return [run_session(sess, feed, f"{self.label} {k}") for k, feed in enumerate(self.feeds)]

    def measure(self, model: onnx.ModelProto) -> Measurement:
        outs = self.outputs(model)
        rows = np.array([np.sum([signal_noise(v, out[name]) for name, v in ref.items()], axis=0)
                         for ref, out in zip(self.refs, outs)]).reshape(-1, 2)
        task_rows = None
        if self.task is not None and self.task.name != "none":
            task_rows = np.array([self.task.row(ref, out, feed) for ref, out, feed in zip(self.refs, outs, self.feeds)])
        return Measurement(rows, self.task, task_rows)

    def sqnr(self, model: onnx.ModelProto) -> float:
        """The pooled output SQNR (dB) of ``model``, point estimate."""
        return self.measure(model).sqnr().value
