"""Calibration pass: run the float model in ONNX Runtime over the data, once, and fold the
tensors that will carry Q/DQ into streaming statistics.  Activations are never kept."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .data import batches, prefetch
from .errors import QdqError
from .modelio import PROTOBUF_LIMIT, save_model
from .progress import progress
from .stats import TensorStats


@dataclass
class Calibration:
    """Statistics of one pass.  ``stats`` hold histograms; ``extrema`` only (min, max) per tensor."""

    stats: dict = field(default_factory=dict)
    extrema: dict = field(default_factory=dict)
    samples: int = 0

    def merge(self, other: "Calibration") -> None:
        """Fold another pass over other samples into this one (order-independent)."""
        for t, st in other.stats.items():
            self.stats.setdefault(t, TensorStats(t)).merge(st)
        for t, (lo, hi) in other.extrema.items():
            old = self.extrema.get(t, (math.inf, -math.inf))
            self.extrema[t] = (min(old[0], lo), max(old[1], hi))
        self.samples += other.samples


def session_for(model: onnx.ModelProto, providers=None, extra_outputs=(), threads: int | None = None,
                emulate: bool = True):
    """An ONNX Runtime session of ``model`` that also returns ``extra_outputs`` (tensor names).

    A model computing in FP16 runs as its FP16 emulation (:func:`qdq.precision.emulate_fp16`): ONNX
    Runtime's CPU provider would compute much of it in FP32 and hide what FP16 storage costs.
    ``emulate=False`` for graphs that make their FP16 rounding explicit themselves."""
    import onnxruntime as ort

    from .precision import emulate_fp16, has_fp16

    m = emulate_fp16(model) if emulate and has_fp16(model) else model
    if extra_outputs:
        m, src = onnx.ModelProto(), m
        m.CopyFrom(src)
        present = {o.name for o in m.graph.output}
        for name in extra_outputs:
            if name not in present:
                m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # idle ORT workers must not spin: the histogram thread needs the core between runs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        # Run Q/DQ as plain float ops: TensorRT's INT8 numerics (int32 accumulation).  ORT_ENABLE_ALL
        # fuses them into ONNX Runtime's integer kernels, which saturate int16 intermediates on CPUs
        # without VNNI (EfficientNet-Lite0: 1.7 dB instead of 15 dB); ORT_ENABLE_BASIC's constant
        # folding of FP16 per-channel DequantizeLinear produced wrong weights (top-1 flipped).
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    available = ort.get_available_providers()
    providers = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    try:
        if m.ByteSize() > PROTOBUF_LIMIT:  # cannot be serialised: hand ORT a file with external data
            import tempfile


            with tempfile.TemporaryDirectory() as d:
                path = save_model(m, Path(d) / "model.onnx")
                return ort.InferenceSession(str(path), so, providers=providers)
        return ort.InferenceSession(m.SerializeToString(), so, providers=providers)
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:300]
        raise QdqError(f"ONNX Runtime cannot load the model: {msg}") from None


def run_session(sess, feed: dict, source) -> dict:
    """Run and return ``{output name: array}``; ONNX Runtime failures become one-line errors."""
    try:
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feed)))
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:300]
        raise QdqError(f"{source}: ONNX Runtime failed on this sample: {msg}") from None


def calibrate(model: onnx.ModelProto, dataset, tensors, range_only=(), batch_size: int = 1,
              providers=None, quiet: bool = False, threads: int | None = None) -> Calibration:
    """One streaming pass over ``dataset``; histograms for ``tensors``, min/max for ``range_only``.

    Graph inputs among ``tensors`` are read from the feed directly.
    """
    tensors = list(dict.fromkeys(tensors))
    range_only = [t for t in dict.fromkeys(range_only) if t not in tensors]
    inputs = {i.name for i in dataset.inputs}
    wanted = [t for t in tensors + range_only if t not in inputs]
    sess = session_for(model, providers, wanted, threads)
    cal = Calibration(stats={t: TensorStats(t) for t in tensors})

    def fold(outs: dict, sources) -> None:
        for t in tensors:
            st = cal.stats[t]
            st.update(outs[t])
            if st.nonfinite:
                raise QdqError(f"tensor {t!r} is NaN or Inf on sample {sources[0]}; the float model overflows "
                               "on this input: check the preprocessing or exclude the layer")
        for t in range_only:
            x = outs[t]
            if x.dtype.kind != "f" or x.size == 0:
                continue
            lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
            old = cal.extrema.get(t, (math.inf, -math.inf))
            # NaN (0/0 in a masked branch) is not a range; ±Inf is, and keeps the tensor FP32
            cal.extrema[t] = (min(old[0], lo), max(old[1], hi)) if not (math.isnan(lo) or math.isnan(hi)) else old

    # Folding batch k into the histograms (numpy, GIL released) overlaps inference of batch k+1.
    with progress("calibrating", dataset.count(), quiet) as advance, ThreadPoolExecutor(1) as pool:
        pending = None
        for sources, feed in prefetch(batches(dataset, batch_size)):
            outs = run_session(sess, feed, sources[0] if len(sources) == 1 else f"{sources[0]}…")
            outs.update(feed)
            if pending is not None:
                pending.result()
            pending = pool.submit(fold, outs, sources)
            cal.samples += len(sources)
            advance(len(sources))
        if pending is not None:
            pending.result()
    return cal
