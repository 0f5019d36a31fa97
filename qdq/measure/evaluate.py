"""Measuring candidate models against the float model on fixed samples, as the device runs them.

An :class:`Evaluator` holds the FP32 outputs of a few samples (the held-back samples of ``quantize``,
or any feeds).  :meth:`Evaluator.measure` runs a candidate, optionally through a *device view* (the
model as TensorRT runs it: the non-INT8 remainder in FP16, :func:`qdq.graph.precision.remainder_fp16`),
and returns a :class:`Measurement`: per sample and output the signal Σ ref² and noise Σ (q − ref)², and
the task's row of counts (:mod:`qdq.measure.tasks`); figures are pooled over samples with a bootstrap
interval (:func:`qdq.measure.metrics.sqnr_figure`), the headline being the worst output's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from ..calib.session import lent_bytes, release, run_session, session_for
from ..graph.precision import runnable
from .metrics import (Figure, paired_gap_low, percentile_interval, power_db, resample_sums, sqnr_figure,
                      wilson_interval)
from .tasks import Task


def figure_outputs(ref: dict) -> tuple:
    """The outputs SQNR figures are of: the float ones (integer outputs, indices and counts, are judged
    by the task), every output when none is float."""
    floats = tuple(k for k, v in ref.items() if np.asarray(v).dtype.kind == "f")
    return floats or tuple(ref)


def signal_noise(ref: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    """(Σ ref², Σ (q − ref)²) of one output of one sample; NaN/Inf in ``q`` make the noise infinite."""
    r, s = ref.astype(np.float64).ravel(), q.astype(np.float64).ravel()
    if not np.isfinite(s).all():
        return float(r @ r), float("inf")
    d = s - r
    return float(r @ r), float(d @ d)


@dataclass
class Measurement:
    """One candidate on the evaluator's samples: ``rows`` (n, k, 2) per sample and output (signal,
    noise), for the outputs ``names`` ((n, 2) is one output); ``task`` and ``task_rows`` (n, k') its
    task's counts per sample (None without a task).

    The worst output decides: :meth:`sqnr` and :meth:`gap_low` are the figures of the output with the
    lowest SQNR among those with a signal (a small output is never hidden under a large one);
    :meth:`pooled` pools every output, labelled as such wherever it is shown."""

    rows: np.ndarray
    task: Task | None = None
    task_rows: np.ndarray | None = None
    names: tuple = ()

    def __post_init__(self):
        self.rows = np.asarray(self.rows, np.float64)
        if self.rows.ndim == 2:
            self.rows = self.rows.reshape(len(self.rows), 1, 2)
        if len(self.names) != self.rows.shape[1]:
            self.names = tuple(f"output {k}" for k in range(self.rows.shape[1]))

    @property
    def samples(self) -> int:
        return len(self.rows)

    def _decisive(self) -> list:
        """Indices of the outputs with a signal (an all-zero reference has no SQNR)."""
        have = [j for j in range(self.rows.shape[1]) if self.rows[:, j, 0].sum() > 0]
        return have or list(range(self.rows.shape[1]))

    def per_output(self) -> dict:
        """output name → :class:`Figure`, in the model's output order."""
        return {n: sqnr_figure(self.rows[:, j]) for j, n in enumerate(self.names)}

    @property
    def worst(self) -> str:
        """The output whose SQNR is lowest (the one every headline figure is of)."""
        return self.names[min(self._decisive(), key=lambda j: power_db(*self.rows[:, j].sum(0)))]

    def sqnr(self) -> Figure:
        return sqnr_figure(self.rows[:, self.names.index(self.worst)])

    def pooled(self) -> Figure:
        """Every output pooled (Σ signal / Σ noise over outputs and samples)."""
        return sqnr_figure(self.rows.sum(1))

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
            value = float(point[name][0])
            if unit == "" and math.isfinite(value):   # a share: never narrower than Wilson's on these samples
                w_lo, w_hi = wilson_interval(value, len(rows))
                lo, hi = min(lo, w_lo), max(hi, w_hi)
            out[name] = Figure(value, lo, hi, len(rows), unit)
        return out

    def task_note(self) -> str:
        """The task's words on where its disagreement comes from, over every sample ("" when none)."""
        if self.task is None or self.task_rows is None or not len(self.task_rows):
            return ""
        return self.task.explain(self.task_rows.sum(0))

    def per_sample(self) -> list:
        """Each sample's own figures: the SQNR of the worst output and the task's."""
        out, j = [], self.names.index(self.worst)
        for k in range(self.samples):
            d = {"sqnr_db": power_db(*self.rows[k, j])}
            if self.task_rows is not None and self.task is not None and self.task.name != "none":
                d.update({n: float(v[0]) for n, v in self.task.figures(self.task_rows[k:k + 1]).items()})
            out.append(d)
        return out

    def gap_low(self, reference: "Measurement") -> float:
        """Lower end of the interval of this SQNR minus ``reference``'s (same samples, same outputs): the
        smallest over the outputs with a signal, each paired output by output."""
        return min(paired_gap_low(self.rows[:, j], reference.rows[:, j]) for j in self._decisive())


@dataclass(frozen=True)
class DeviceModel:
    """A candidate already as the device runs it, exported for a session only: (model, lent) of
    :func:`qdq.graph.writer.device_view`; an :class:`Evaluator` runs it as it is."""

    model: onnx.ModelProto
    lent: dict


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

    def outputs(self, model) -> list:
        """The candidate's outputs on every sample (after the device view; a :class:`DeviceModel` as it is)."""
        if isinstance(model, DeviceModel):
            release(lent_bytes(model.lent))   # the graph it was built on holds the weights it read until collected
            sess = session_for(model.model, lent=model.lent)
        else:
            sess = session_for(self.device(model) if self.device is not None else runnable(model))
        self.runs += 1
        return [run_session(sess, feed, f"{self.label} {k}") for k, feed in enumerate(self.feeds)]

    def measure(self, model) -> Measurement:
        outs = self.outputs(model)
        names = figure_outputs(self.refs[0])
        rows = np.array([[signal_noise(ref[n], out[n]) for n in names] for ref, out in zip(self.refs, outs)])
        task_rows = None
        if self.task is not None and self.task.name != "none":
            task_rows = np.array([self.task.row(ref, out, feed) for ref, out, feed in zip(self.refs, outs, self.feeds)])
        return Measurement(rows.reshape(len(outs), len(names), 2), self.task, task_rows, names)

    def sqnr(self, model: onnx.ModelProto) -> float:
        """The output SQNR (dB) of ``model``, its worst output's, point estimate."""
        return self.measure(model).sqnr().value
