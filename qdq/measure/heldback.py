"""The held-back check of ``qdq quantize``: a seeded random fifth of the calibration samples (up to 32,
spread over sub-folders; :class:`qdq.calib.data.HoldOut`) is set aside from range fitting, and the file
is measured on those samples the way the device runs it.

* the device view: the non-INT8 remainder in FP16 as TensorRT 8.x/10.x builds with ``--int8 --fp16``
  (or as ``--target trt11`` writes it), the nodes the FP16 plan pins kept FP32
  (:func:`qdq.graph.precision.remainder_fp16`); ``remainder="fp32"`` measures the file as written;
* figures with their 90 % interval over the samples (bootstrap, :mod:`qdq.measure.metrics`), the task
  agreement of :mod:`qdq.measure.tasks`, and the same file on the samples scaled by
  :data:`ROBUST_SCALE` (data brighter, louder, larger than calibration saw): a range chosen too tight
  shows up there first.
"""
from __future__ import annotations

import numpy as np
import onnx

from .evaluate import Evaluator, Measurement
from .tasks import Task, TaskOptions, choose_task_on

ROBUST_SCALE = 1.25
# below this many held-back samples the summary says how many more would tighten the interval
ENOUGH_SAMPLES = 16


class HeldBack:
    """The held-back samples' FP32 references, the task judged on them, and the device view."""

    def __init__(self, float_model: onnx.ModelProto, feeds: list, task: TaskOptions | None = None, device=None,
                 chosen: Task | None = None):
        """``chosen``: the task another set of the same data was judged by (the samples that chose and
        the samples that report are judged alike)."""
        self.float_model, self.feeds, self.device = float_model, feeds, device
        self.ev = Evaluator(float_model, feeds, "held-back sample", None, device)
        self.ev.task = self.task = chosen or choose_task_on(list(zip(self.ev.refs, feeds)), task or TaskOptions())
        self._robust = None

    def robust(self) -> Evaluator:
        """An evaluator on the held-back samples with every float data input (rank ≥ 1; not a scalar such
        as a threshold) scaled by ROBUST_SCALE."""
        if self._robust is None:
            scaled = [{k: (np.asarray(v * np.asarray(ROBUST_SCALE, v.dtype)) if v.dtype.kind == "f" and v.ndim else v)
                       for k, v in f.items()} for f in self.feeds]
            self._robust = Evaluator(self.float_model, scaled, "held-back sample ×1.25", self.task, self.device)
        return self._robust

    def report(self, final: Measurement, weights_only: Measurement, robust: Measurement) -> dict:
        """The check's figures as the summary holds them (JSON-ready; dB and shares): each the worst
        output's, ``final_outputs`` naming it beside every output's figure and the pooled one."""
        s, w, r = final.sqnr(), weights_only.sqnr(), robust.sqnr()
        out = {"held_back_samples": final.samples, "final_db": s.value, "final_interval_db": [s.low, s.high],
               "final_outputs": {"output": final.worst, "outputs": len(final.names), "pooled": final.pooled().to_dict(),
                                 "per_output": {k: f.to_dict() for k, f in final.per_output().items()}},
               "final_weights_only_db": w.value, "final_weights_only_interval_db": [w.low, w.high],
               "robust_scale": ROBUST_SCALE, "robust_db": r.value, "robust_interval_db": [r.low, r.high],
               "more_samples": more_samples(final.samples)}
        if self.task.name != "none":
            out["task"] = {"name": self.task.name, "reason": self.task.reason,
                           "figures": {k: f.to_dict() for k, f in final.task_figures().items()},
                           "robust": {k: f.to_dict() for k, f in robust.task_figures().items()}, "note": final.task_note()}
        else:
            out["task"] = {"name": "none", "reason": self.task.reason, "figures": {}}
        return out


def more_samples(n: int) -> int:
    """How many more samples would halve the interval (its width goes as 1/√n: 4n in all), when n is
    below :data:`ENOUGH_SAMPLES`; else 0."""
    return 3 * n if 0 < n < ENOUGH_SAMPLES else 0
