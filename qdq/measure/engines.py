"""Both engines of ``qdq trt compare`` run on the data (a GPU and TensorRT needed): INT8 against FP16 by
the same metrics as ``qdq compare``, latencies, layers per precision."""
from __future__ import annotations

from ..calib.data import batches
from ..progress import progress
from ..trt.backend import Engines, load_backend
from ..trt.runner import EngineRunner
from .metrics import ErrorAccumulator


def compare_engines(engines: Engines, dataset, runs: int = 50, quiet: bool = False) -> dict:
    """Run both engines on ``dataset`` (needs a GPU): output metrics of INT8 vs FP16 (as
    ``qdq compare``), median latencies, the speed-up, and the layers per precision."""
    b = load_backend()
    fp16, int8 = EngineRunner(engines.fp16.read_bytes(), b), EngineRunner(engines.int8.read_bytes(), b)
    acc = {o: ErrorAccumulator() for o in fp16.outputs}
    top1 = {o: [0, 0] for o in fp16.outputs}
    first = None
    with progress("running engines", dataset.count(), quiet) as advance:
        for sources, feed in batches(dataset, 1):
            first = first or feed
            ref, q = fp16(feed), int8(feed)
            for o in acc:
                acc[o].add(ref[o], q[o])
                if ref[o].ndim == 2 and ref[o].shape[1] >= 10:
                    top1[o][0] += int((ref[o].argmax(1) == q[o].argmax(1)).sum())
                    top1[o][1] += ref[o].shape[0]
            advance(len(sources))
    lat16, lat8 = fp16.latency_ms(first, runs), int8.latency_ms(first, runs)
    return {"backend": f"{b.name} {b.version}",
            "outputs": {o: {**a.to_dict(), "top1": (top1[o][0] / top1[o][1]) if top1[o][1] else None}
                        for o, a in acc.items()},
            "latency_ms": {"fp16": lat16, "int8": lat8}, "speedup": lat16 / lat8 if lat8 else None,
            "layers": {"fp16": fp16.layer_precisions(), "int8": int8.layer_precisions()},
            "trtexec": engines.trtexec}
