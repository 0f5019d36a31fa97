"""Device and page-locked host memory, a stream and events, over cuda-python or pycuda (whichever is
installed; every cuda-python call's status is checked)."""
from __future__ import annotations

import ctypes

import numpy as np

from ..errors import QdqError


def cudart():
    """cuda-python's runtime module (``cuda.bindings.runtime`` since 12.6, ``cuda.cudart`` before),
    or None."""
    try:
        from cuda.bindings import runtime
        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart
        return cudart
    except ImportError:
        return None


class Cuda:
    """Device and pinned host memory, a stream and events over cuda-python or pycuda.  Every
    cuda-python call returns its status first; each one is checked."""

    def __init__(self):
        cudart_mod = cudart()
        if cudart_mod is not None:
            self.kind, self.rt = "cuda-python", cudart_mod
            if self._call("cudaGetDeviceCount") == 0:
                raise QdqError("no CUDA GPU visible (cudaGetDeviceCount); engines can be built with "
                               "TensorRT-RTX here but run only on a GPU")
            self.stream = self._call("cudaStreamCreate")
            return
        try:
            import pycuda.autoinit  # noqa: F401
            import pycuda.driver as drv
        except ImportError:
            raise QdqError("no CUDA Python bindings: pip install cuda-python (or pycuda)") from None
        except Exception as e:
            raise QdqError(f"no usable CUDA GPU ({str(e).splitlines()[0][:120]})") from None
        self.kind, self.drv = "pycuda", drv
        self.stream = drv.Stream()

    def _call(self, name: str, *args):
        """cuda-python ``name(*args)``: raises on a non-zero status, returns the value(s)."""
        out = getattr(self.rt, name)(*args)
        err, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        if int(err) != 0:
            label = self.rt.cudaGetErrorName(err)[1]
            raise QdqError(f"CUDA call {name} failed: {label.decode() if isinstance(label, bytes) else label}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def alloc(self, nbytes: int):
        if self.kind == "pycuda":
            return self.drv.mem_alloc(max(nbytes, 1))
        return self._call("cudaMalloc", max(nbytes, 1))

    def pinned(self, shape, dtype) -> np.ndarray:
        """A page-locked host array (asynchronous copies need it; pageable memory is staged)."""
        dtype = np.dtype(dtype)
        if self.kind == "pycuda":
            return self.drv.pagelocked_empty(tuple(shape), dtype)
        nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        ptr = self._call("cudaMallocHost", nbytes)
        buf = (ctypes.c_byte * nbytes).from_address(int(ptr))
        return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def free_pinned(self, array: np.ndarray) -> None:
        if self.kind == "cuda-python":
            self._call("cudaFreeHost", array.ctypes.data)

    def ptr(self, mem) -> int:
        return int(mem)

    def h2d(self, mem, host: np.ndarray):
        if self.kind == "pycuda":
            self.drv.memcpy_htod_async(mem, host, self.stream)
        else:
            self._call("cudaMemcpyAsync", mem, host.ctypes.data, host.nbytes,
                       self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream)

    def d2h(self, host: np.ndarray, mem):
        if self.kind == "pycuda":
            self.drv.memcpy_dtoh_async(host, mem, self.stream)
        else:
            self._call("cudaMemcpyAsync", host.ctypes.data, mem, host.nbytes,
                       self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream)

    def handle(self) -> int:
        return self.stream.handle if self.kind == "pycuda" else int(self.stream)

    def sync(self):
        if self.kind == "pycuda":
            self.stream.synchronize()
        else:
            self._call("cudaStreamSynchronize", self.stream)

    def event(self):
        return self.drv.Event() if self.kind == "pycuda" else self._call("cudaEventCreate")

    def record(self, event):
        if self.kind == "pycuda":
            event.record(self.stream)
        else:
            self._call("cudaEventRecord", event, self.stream)

    def elapsed_ms(self, start, end) -> float:
        if self.kind == "pycuda":
            end.synchronize()
            return end.time_since(start)
        self._call("cudaEventSynchronize", end)
        return float(self._call("cudaEventElapsedTime", start, end))

    def free(self, mem):
        if self.kind == "pycuda":
            mem.free()
        else:
            self._call("cudaFree", mem)
