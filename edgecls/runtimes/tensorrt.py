"""TensorRT session: an edgecls .engine (header + serialized engine) on an NVIDIA GPU or DLA.

    with TensorRTSession("model.engine", device="gpu") as s:
        logits = s.run(batch)                 # float32 NCHW in, float32 logits out

Written against the TensorRT 10 Python API (name-based I/O tensors: num_io_tensors,
get_tensor_name/mode/dtype, set_input_shape, set_tensor_address, execute_async_v3).
Device memory and the stream come from cuda-python's runtime bindings (cudart), every
return code checked; torch.cuda is used instead when cuda-python is absent but a CUDA
torch is installed.

Devices: "gpu" runs a GPU engine, "npu" a DLA engine (exported with dla_core; DLA cores are
on Jetson / DRIVE), "auto" whatever the engine was built for. An engine built for the other
one is a DeviceUnavailableError: a DLA engine cannot be turned into a GPU engine at load time.

Engines are not portable: they are tied to the TensorRT version and the GPU architecture
(compute capability) they were built with. Both are recorded in the spec at export time and
compared here BEFORE deserializing, so a mismatch is one clear ArtifactError that says to
re-export on this machine, not a TensorRT stack trace.

One execution context, one stream and one set of device buffers per session; Session.run's
lock serialises callers (thread_safe = False). A context per thread would multiply the
activation memory, and with one GPU the throughput gain is small for a classifier whose
batches already fill it; callers that want concurrency open one session per thread.

Batches larger than the engine's optimization profile allows are run in slices; an engine
with a fixed batch (DLA engines) gets the last slice zero-padded.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.errors import (ArtifactError, DeviceUnavailableError, MissingDependencyError,
                            UnsupportedOptionError)
from edgecls.runtimes.base import Session
from edgecls.spec import ModelSpec
from edgecls.tensorrt_header import read_engine
from edgecls.tensorrt_header import read_spec as _read_spec

log = logging.getLogger("edgecls")


# -- TensorRT itself ---------------------------------------------------------------------------
def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError("TensorRT (the tensorrt Python package)", "tensorrt") from None
    return tensorrt


def make_logger(trt, level: str = "warning"):
    """A trt.ILogger that forwards to the edgecls logger and keeps the error messages, so a
    failed parse / build / deserialize can be reported in one line."""
    severity = trt.ILogger.Severity
    threshold = {"error": severity.ERROR, "warning": severity.WARNING,
                 "info": severity.INFO, "verbose": severity.VERBOSE}[level]
    to_logging = {severity.INTERNAL_ERROR: logging.ERROR, severity.ERROR: logging.ERROR,
                  severity.WARNING: logging.WARNING, severity.INFO: logging.DEBUG,
                  severity.VERBOSE: logging.DEBUG}

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, sev, msg):  # called by TensorRT, possibly from its own threads
            if sev in (severity.INTERNAL_ERROR, severity.ERROR):
                self.errors.append(str(msg).strip())
            if int(sev) <= int(threshold):
                log.log(to_logging.get(sev, logging.DEBUG), "TensorRT: %s", msg)

        def first_error(self, default: str = "no message from TensorRT") -> str:
            return one_line(self.errors[0]) if self.errors else default

    return _Logger()


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text[:limit]


# -- CUDA memory and streams -------------------------------------------------------------------
def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart   # cuda-python >= 12.6
        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart                        # older cuda-python
        return cudart
    except ImportError:
        return None


class CudaError(RuntimeError):
    """A CUDA call that failed after the device was found (an internal error: keeps its
    traceback)."""


class _CudaRT:
    """The handful of CUDA runtime calls a session needs, through cuda-python. Each binding
    returns (error, *results); every error is checked."""

    name = "cuda-python"

    def __init__(self, cudart, device_index: int = 0):
        self.rt = cudart
        count = self._call(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount", device=True)
        if count <= device_index:
            raise DeviceUnavailableError(f"no CUDA GPU {device_index} (found {count})")
        self._call(cudart.cudaSetDevice(device_index), "cudaSetDevice", device=True)
        self.index = device_index
        self.stream = self._call(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: list[int] = []

    def _call(self, result: Any, what: str, device: bool = False) -> Any:
        err, rest = result[0], result[1:]
        if err != self.rt.cudaError_t.cudaSuccess:
            ok, text = self.rt.cudaGetErrorString(err)
            text = text.decode() if isinstance(text, bytes) else str(text)
            message = f"{what} failed: {text} ({err})"
            if device:  # no GPU / no driver at all: the user's situation, not a bug
                raise DeviceUnavailableError(f"no usable CUDA GPU: {message}")
            raise CudaError(message)
        return rest[0] if len(rest) == 1 else (rest or None)

    def properties(self) -> dict[str, str]:
        props = self._call(self.rt.cudaGetDeviceProperties(self.index), "cudaGetDeviceProperties")
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
        for ptr in self._buffers:
            self._call(self.rt.cudaFree(ptr), "cudaFree")
        self._buffers = []
        if self.stream is not None:
            self._call(self.rt.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None


class _TorchCuda:
    """The same calls through torch.cuda, for hosts with a CUDA torch but no cuda-python."""

    name = "torch.cuda"

    def __init__(self, torch, device_index: int = 0):
        self.torch = torch
        if not torch.cuda.is_available() or torch.cuda.device_count() <= device_index:
            raise DeviceUnavailableError(f"no CUDA GPU {device_index} visible to torch")
        self.index = device_index
        self.device = torch.device("cuda", device_index)
        self.stream = torch.cuda.Stream(device=self.device)
        self._buffers: dict[int, Any] = {}

    def properties(self) -> dict[str, str]:
        major, minor = self.torch.cuda.get_device_capability(self.index)
        return {"gpu": self.torch.cuda.get_device_name(self.index),
                "compute_capability": f"{major}.{minor}"}

    def alloc(self, nbytes: int) -> int:
        t = self.torch.empty(max(int(nbytes), 1), dtype=self.torch.uint8, device=self.device)
        self._buffers[t.data_ptr()] = t
        return t.data_ptr()

    def upload(self, ptr: int, array: np.ndarray) -> None:
        src = self.torch.from_numpy(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        with self.torch.cuda.stream(self.stream):
            self._buffers[ptr][:array.nbytes].copy_(src)

    def download(self, array: np.ndarray, ptr: int) -> None:
        with self.torch.cuda.stream(self.stream):
            host = self._buffers[ptr][:array.nbytes].cpu()
        array.reshape(-1).view(np.uint8)[:] = host.numpy()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self._buffers.clear()


def open_cuda(device_index: int = 0):
    """cuda-python's runtime bindings, else torch.cuda; a clear error when neither is there."""
    cudart = _import_cudart()
    if cudart is not None:
        return _CudaRT(cudart, device_index)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        return _TorchCuda(torch, device_index)
    raise MissingDependencyError("cuda-python (GPU memory for TensorRT)", "tensorrt")


def gpu_facts(device_index: int = 0) -> dict[str, str]:
    """{"gpu": name, "compute_capability": "major.minor"} of the GPU engines are built on."""
    cuda = open_cuda(device_index)
    try:
        return cuda.properties()
    finally:
        cuda.close()


def check_portability(path: Path, spec: ModelSpec, tensorrt_version: str,
                      here: dict[str, str] | None) -> None:
    """An engine runs only with the TensorRT version and GPU architecture it was built for."""
    built = spec.tools.get("tensorrt")
    if built and built != tensorrt_version:
        raise ArtifactError(f"{path}: built with TensorRT {built}, this is TensorRT "
                            f"{tensorrt_version}; engines are not portable across TensorRT "
                            "versions: re-export it here (edgecls export ... --to tensorrt) or "
                            f"install tensorrt=={built}")
    on = spec.notes.get("engine_built_on") or {}
    if here and on.get("compute_capability") and \
            on["compute_capability"] != here["compute_capability"]:
        raise ArtifactError(f"{path}: built for {on.get('gpu', 'another GPU')} (compute "
                            f"capability {on['compute_capability']}), this is {here['gpu']} "
                            f"({here['compute_capability']}); engines are not portable across "
                            "GPU architectures: re-export it on this machine")
    if here and on.get("gpu") and on["gpu"] != here["gpu"]:
        log.warning("%s was built on %s and runs on %s (same architecture): TensorRT may pick "
                    "slower kernels; re-export on this GPU for best speed", path, on["gpu"],
                    here["gpu"])


# -- the session -------------------------------------------------------------------------------
class TensorRTSession(Session):
    backend = "tensorrt"
    # One execution context, stream and buffer set: Session.run serialises callers.
    thread_safe = False
    accepted_options = ("dla_core", "gpu_index")

    @classmethod
    def read_spec(cls, path: Path) -> ModelSpec:
        return _read_spec(path)          # pure Python: works without TensorRT

    def _open(self, dla_core: int | None = None, gpu_index: int | None = None) -> None:
        self._cuda = None
        self._context = self._engine = self._runtime = None
        trt = import_tensorrt()
        self._trt = trt
        spec, plan = read_engine(self.path)
        built_dla = spec.notes.get("dla_core")
        self._dla_core = self._pick_dla(built_dla, dla_core)
        # the version check needs no GPU: do it first
        check_portability(self.path, spec, trt.__version__, None)
        self._cuda = open_cuda(int(gpu_index or 0))
        self.gpu = self._cuda.properties()
        check_portability(self.path, spec, trt.__version__, self.gpu)

        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        if self._dla_core is not None:
            cores = int(getattr(self._runtime, "num_DLA_cores", 0))
            if cores == 0:
                raise DeviceUnavailableError(f"{self.path} was built for DLA core {built_dla}, "
                                             "and this device has no DLA (DLA cores are on "
                                             "Jetson / DRIVE); re-export it without dla_core "
                                             "for --device gpu")
            if self._dla_core >= cores:
                raise DeviceUnavailableError(f"DLA core {self._dla_core} does not exist; this "
                                             f"device has {cores} (0..{cores - 1})")
            self._runtime.DLA_core = self._dla_core
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        del plan
        if self._engine is None:
            raise ArtifactError(f"{self.path}: TensorRT cannot deserialize the engine "
                                f"({self._logger.first_error()})")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ArtifactError(f"{self.path}: TensorRT cannot create an execution context "
                                f"({self._logger.first_error('out of GPU memory?')})")
        self._describe_io()
        self._allocate()
        self.device_used = "npu" if self._dla_core is not None else "gpu"
        self.precision_used = self.spec.precision

    def _pick_dla(self, built: Any, requested: Any) -> int | None:
        if built is None:
            if self.device == "npu":
                raise DeviceUnavailableError(f"{self.path} is a GPU engine; for --device npu "
                                             "export it for a DLA core (--dla-core N), or use "
                                             "--device gpu")
            if requested is not None:
                raise UnsupportedOptionError("dla_core applies only to engines exported for a "
                                             "DLA core")
            return None
        if self.device == "gpu":
            raise DeviceUnavailableError(f"{self.path} was built for DLA core {built}; run it "
                                         "with --device npu (or auto), or re-export it without "
                                         "dla_core for the GPU")
        core = int(built if requested is None else requested)
        if core < 0:
            raise UnsupportedOptionError(f"dla_core must be 0 or more, not {core}")
        return core

    def _describe_io(self) -> None:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(f"{self.path}: expected one input and one output tensor, found "
                                f"{len(inputs)} and {len(outputs)}")
        self._in, self._out = inputs[0], outputs[0]
        self._in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._in)))
        self._out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._out)))
        shape = tuple(engine.get_tensor_shape(self._in))
        if len(shape) != 4:
            raise ArtifactError(f"{self.path}: expected a 4-D input, the engine has {shape}")
        want = self.spec.input_shape(1)[1:]
        if tuple(d for d in shape[1:]) != want:
            raise ArtifactError(f"{self.path}: the engine's input is {shape}, its spec says "
                                f"(N, {', '.join(map(str, want))})")
        if shape[0] == -1:   # dynamic batch: the range of optimization profile 0
            low, opt, high = (tuple(s) for s in engine.get_tensor_profile_shape(self._in, 0))
            self._min_batch, self._opt_batch, self._max_batch = low[0], opt[0], high[0]
        else:
            self._min_batch = self._opt_batch = self._max_batch = shape[0]
        self._dynamic = self._min_batch != self._max_batch
        self._sample_shape = shape[1:]

    def _allocate(self) -> None:
        """Device buffers for the largest batch the profile allows, made once."""
        full = (self._max_batch,) + tuple(self._sample_shape)
        self._set_shape(full)
        out_shape = tuple(self._context.get_tensor_shape(self._out))
        if any(d < 0 for d in out_shape):
            raise ArtifactError(f"{self.path}: the output shape {out_shape} is not determined by "
                                "the input shape")
        in_bytes = int(np.prod(full)) * self._in_dtype.itemsize
        out_bytes = int(np.prod(out_shape)) * self._out_dtype.itemsize
        self._in_ptr = self._cuda.alloc(in_bytes)
        self._out_ptr = self._cuda.alloc(out_bytes)
        for name, ptr in ((self._in, self._in_ptr), (self._out, self._out_ptr)):
            if not self._context.set_tensor_address(name, ptr):
                raise ArtifactError(f"{self.path}: TensorRT refused the address of {name} "
                                    f"({self._logger.first_error()})")

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        if self._engine.get_tensor_shape(self._in)[0] != -1:
            return   # static input: nothing to set
        if not self._context.set_input_shape(self._in, shape):
            raise ValueError(f"TensorRT rejected input shape {shape} (profile batch "
                             f"{self._min_batch}..{self._max_batch})")

    # -- running ---------------------------------------------------------------------------
    def _run(self, batch: np.ndarray) -> np.ndarray:
        step = self._max_batch
        return np.concatenate([self._infer(batch[i:i + step]) for i in range(0, len(batch), step)])

    def _infer(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        size = max(n, self._min_batch) if self._dynamic else self._max_batch
        if size != n:   # a fixed-batch engine, or a batch under the profile's minimum: pad
            x = np.concatenate([x, np.zeros((size - n,) + x.shape[1:], x.dtype)])
        x = np.ascontiguousarray(x, dtype=self._in_dtype)
        self._set_shape(x.shape)
        out = np.empty(tuple(self._context.get_tensor_shape(self._out)), self._out_dtype)
        self._cuda.upload(self._in_ptr, x)
        if not self._context.execute_async_v3(self._cuda.stream_handle):
            raise RuntimeError(f"TensorRT inference failed ({self._logger.first_error()})")
        self._cuda.download(out, self._out_ptr)
        self._cuda.synchronize()
        return out[:n].astype(np.float32, copy=False)

    def _close(self) -> None:
        # context before engine before runtime, then the memory they used
        self._context = self._engine = self._runtime = None
        if self._cuda is not None:
            self._cuda.close()
            self._cuda = None

    def __del__(self) -> None:
        # at interpreter shutdown cudart/tensorrt may already be torn down: a failure to free
        # then is harmless, and __del__ must not raise
        try:
            self._close()
        except Exception:  # noqa: BLE001
            pass

    def describe(self) -> dict[str, Any]:
        d = {**super().describe(), "tensorrt": self._trt.__version__,
             "gpu": f"{self.gpu['gpu']} (sm {self.gpu['compute_capability']})",
             "batch": (f"{self._min_batch}..{self._max_batch} (opt {self._opt_batch})"
                       if self._dynamic else f"fixed {self._max_batch}"),
             "memory": self._cuda.name if self._cuda else "closed",
             "built_on": self.spec.notes.get("engine_built_on")}
        if self._dla_core is not None:
            d["dla_core"] = self._dla_core
        return d


__all__ = ["TensorRTSession", "import_tensorrt", "make_logger", "open_cuda", "gpu_facts",
           "check_portability", "CudaError"]
