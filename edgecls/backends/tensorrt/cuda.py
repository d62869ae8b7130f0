"""The CUDA that TensorRT needs, through cuda-python's runtime bindings (cudart): the GPU's
facts for the build, and a session's device, stream, buffers and copies.

The CUDA runtime's current device belongs to the calling THREAD. A CudaDevice makes itself
current in every call that touches the GPU (activate), so a session opened on one thread
runs on its own GPU from any other, not on device 0.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgecls.errors import DeviceUnavailableError, MissingDependencyError, first_line


class CudaError(RuntimeError):
    """A CUDA call that failed after the device was found (an internal error: keeps its
    traceback)."""


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except (ImportError, OSError) as e:
        raise MissingDependencyError(f"cuda-python (GPU memory for TensorRT: {first_line(e)})",
                                     "tensorrt") from None
    return cudart


class CudaDevice:
    """One GPU, a stream on it, and the device buffers a session allocated. Each binding
    returns (error, *results); every error is checked."""

    def __init__(self, index: int = 0):
        self.rt = import_cudart()
        count = self._call(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount", device=True)
        if count <= index:
            raise DeviceUnavailableError(f"no CUDA GPU {index} (found {count})")
        self.index = index
        self.activate()
        self.stream = self._call(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: list[int] = []

    def _call(self, result: Any, what: str, device: bool = False) -> Any:
        err, rest = result[0], result[1:]
        if err != self.rt.cudaError_t.cudaSuccess:
            _, text = self.rt.cudaGetErrorString(err)
            text = text.decode() if isinstance(text, bytes) else str(text)
            message = f"{what} failed: {text} ({err})"
            if device:  # no GPU / no driver at all: the user's situation, not a bug
                raise DeviceUnavailableError(f"no usable CUDA GPU: {message}")
            raise CudaError(message)
        return rest[0] if len(rest) == 1 else (rest or None)

    def activate(self) -> None:
        """Make this GPU the calling thread's current device."""
        self._call(self.rt.cudaSetDevice(self.index), "cudaSetDevice", device=True)

    def properties(self) -> dict[str, str]:
        props = self._call(self.rt.cudaGetDeviceProperties(self.index),
                           "cudaGetDeviceProperties")
        name = props.name
        name = name.decode("utf-8", "replace") if isinstance(name, (bytes, bytearray)) else str(name)
        return {"gpu": name.split("\x00")[0].strip(),
                "compute_capability": f"{props.major}.{props.minor}"}

    def alloc(self, nbytes: int) -> int:
        ptr = int(self._call(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))
        self._buffers.append(ptr)
        return ptr

    def upload(self, ptr: int, array: np.ndarray) -> None:
        self._call(self.rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                           self.stream), "cudaMemcpyAsync (host to device)")

    def download(self, array: np.ndarray, ptr: int) -> None:
        self._call(self.rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                           self.stream), "cudaMemcpyAsync (device to host)")

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._call(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        self.activate()
        for ptr in self._buffers:
            self._call(self.rt.cudaFree(ptr), "cudaFree")
        self._buffers = []
        if self.stream is not None:
            self._call(self.rt.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None


def gpu_facts(index: int = 0) -> dict[str, str]:
    """{"gpu": name, "compute_capability": "major.minor"} of the GPU engines are built on."""
    device = CudaDevice(index)
    try:
        return device.properties()
    finally:
        device.close()
