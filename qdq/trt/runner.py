"""Running serialized engines on a GPU (named-tensor API) and comparing INT8 with FP16 there."""
from __future__ import annotations

import json
import statistics

import numpy as np

from ..errors import QdqError
from .backend import Backend, gc_paused, load_backend, logger_for
from .cuda import Cuda
from .layers import EngineLogError, from_inspector


class EngineRunner:
    """Runs a serialized engine with the named-tensor API (``execute_async_v3``).  Device buffers and
    page-locked host buffers are allocated once per input shape and reused."""

    def __init__(self, engine_bytes: bytes, backend: Backend | None = None):
        self.b = backend or load_backend()
        trt = self.b.module
        self.cuda = Cuda()
        self.logger = logger_for(trt)
        self.runtime = trt.Runtime(self.logger)
        with gc_paused():
            self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise QdqError("TensorRT could not load the engine: " + "; ".join(self.logger.messages[:2]))
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self._shapes, self._buffers = None, {}

    def _dtype(self, name):
        return np.dtype(self.b.module.nptype(self.engine.get_tensor_dtype(name)))

    def _bind(self, feed: dict) -> None:
        """(Re)allocate buffers when the input shapes change and point the context at them."""
        shapes = {n: tuple(feed[n].shape) for n in self.inputs}
        if shapes == self._shapes:
            return
        self.close()
        for name in self.inputs:
            self.context.set_input_shape(name, shapes[name])
        for name in self.inputs + self.outputs:
            shape = shapes[name] if name in shapes else tuple(self.context.get_tensor_shape(name))
            host = self.cuda.pinned(shape, self._dtype(name))
            mem = self.cuda.alloc(host.nbytes)
            self.context.set_tensor_address(name, self.cuda.ptr(mem))
            self._buffers[name] = (host, mem)
        self._shapes = shapes

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.cuda.handle()):
            raise QdqError("TensorRT execution failed: " + "; ".join(self.logger.messages[:2]))

    def __call__(self, feed: dict) -> dict:
        self._bind(feed)
        for name in self.inputs:
            host, mem = self._buffers[name]
            np.copyto(host, feed[name].astype(host.dtype, copy=False))
            self.cuda.h2d(mem, host)
        self._enqueue()
        for name in self.outputs:
            host, mem = self._buffers[name]
            self.cuda.d2h(host, mem)
        self.cuda.sync()
        return {n: self._buffers[n][0].astype(np.float32) for n in self.outputs}

    def latency_ms(self, feed: dict, runs: int = 50) -> float:
        """Median GPU time of one inference (CUDA events around ``execute_async_v3``, inputs already
        on the device), over ``runs`` runs after warm-up: what trtexec reports as GPU compute time."""
        self(feed)
        start, end = self.cuda.event(), self.cuda.event()
        for _ in range(3):
            self._enqueue()
        times = []
        for _ in range(runs):
            self.cuda.record(start)
            self._enqueue()
            self.cuda.record(end)
            times.append(self.cuda.elapsed_ms(start, end))
        return statistics.median(times)

    def layer_precisions(self) -> dict:
        """Count of engine layers per precision (as :mod:`qdq.trt.layers` defines a layer's
        precision), from the engine inspector; empty when it lists names only."""
        inspector = self.engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(self.b.module.LayerInformationFormat.JSON))
        counts = {}
        try:
            for layer in from_inspector(info):
                counts[layer.precision] = counts.get(layer.precision, 0) + 1
        except EngineLogError:
            return {}
        return counts

    def close(self) -> None:
        for host, mem in self._buffers.values():
            self.cuda.free(mem)
            self.cuda.free_pinned(host)
        self._buffers, self._shapes = {}, None
