"""TensorRT session: an edgecls .engine (header + serialized engine) on an NVIDIA GPU or DLA.

    with TensorRTSession("model.engine", device="gpu") as s:
        logits = s.run(batch)                 # float32 NCHW in, float32 logits out

Written against the TensorRT 10 Python API (name-based I/O tensors: num_io_tensors,
get_tensor_name/mode/dtype, set_input_shape, set_tensor_address, execute_async_v3).
Device memory and the stream come from cuda-python's runtime bindings (cuda.py); the file
is read once, header, spec and engine (container.py).

Devices: "gpu" runs a GPU engine, "npu" a DLA engine (exported with dla_core; DLA cores are
on Jetson / DRIVE), "auto" whatever the engine was built for. An engine built for the other
one is a DeviceUnavailableError: a DLA engine cannot be turned into a GPU engine at load time.

Engines are not portable: they are tied to the TensorRT version and the GPU architecture
(compute capability) they were built with. Both are recorded in the spec at export time and
compared here BEFORE deserializing, so a mismatch is one clear ArtifactError that says to
re-export on this machine, not a TensorRT stack trace.

One execution context, one stream and one set of device buffers per session; Session.run's
lock serialises callers (thread_safe = False), and each run first makes the session's GPU
the calling thread's current device. A context per thread would multiply the activation
memory, and with one GPU the throughput gain is small for a classifier whose batches already
fill it; callers that want concurrency open one session per thread.

Batches larger than the engine's optimization profile allows are run in slices; an engine
with a fixed batch (DLA engines) gets the last slice zero-padded.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.backends.base import Session
from edgecls.backends.tensorrt import FORMAT
from edgecls.backends.tensorrt.container import read_engine
from edgecls.backends.tensorrt.cuda import CudaDevice
from edgecls.backends.tensorrt.library import ERRORS, import_tensorrt, tensorrt_logger
from edgecls.errors import ArtifactError, DeviceUnavailableError, UnsupportedOptionError
from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")


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
    format = FORMAT
    backend = "tensorrt"
    # One execution context, stream and buffer set: Session.run serialises callers.
    thread_safe = False
    accepted_options = ("dla_core", "gpu_index")

    def _open(self, dla_core: int | None = None, gpu_index: int | None = None) -> None:
        self._cuda = None
        self._context = self._engine = self._runtime = None
        self.spec, plan = read_engine(self.path)
        trt = import_tensorrt()
        self._trt = trt
        built_dla = self.spec.notes.get("dla_core")
        self._dla_core = self._pick_dla(built_dla, dla_core)
        # the version check needs no GPU: do it first
        check_portability(self.path, self.spec, trt.__version__, None)
        self._cuda = CudaDevice(int(gpu_index or 0))
        self.gpu = self._cuda.properties()
        check_portability(self.path, self.spec, trt.__version__, self.gpu)
        with ERRORS.capture() as errors:
            self._load(trt, plan, built_dla, errors)
        self._describe_io()
        self._allocate()
        self.device_used = "npu" if self._dla_core is not None else "gpu"
        self.precision_used = self.spec.precision

    def _load(self, trt, plan: bytes, built_dla: Any, errors) -> None:
        """Runtime, engine and execution context, on this session's GPU or DLA core."""
        self._runtime = trt.Runtime(tensorrt_logger(trt))
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
        if self._engine is None:
            raise ArtifactError(f"{self.path}: TensorRT cannot deserialize the engine "
                                f"({errors()})")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ArtifactError(f"{self.path}: TensorRT cannot create an execution context "
                                f"({errors('out of GPU memory?')})")

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
        with ERRORS.capture() as errors:
            for name, ptr in ((self._in, self._in_ptr), (self._out, self._out_ptr)):
                if not self._context.set_tensor_address(name, ptr):
                    raise ArtifactError(f"{self.path}: TensorRT refused the address of {name} "
                                        f"({errors()})")

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        if self._engine.get_tensor_shape(self._in)[0] != -1:
            return   # static input: nothing to set
        if not self._context.set_input_shape(self._in, shape):
            raise ValueError(f"TensorRT rejected input shape {shape} (profile batch "
                             f"{self._min_batch}..{self._max_batch})")

    # -- running ---------------------------------------------------------------------------
    def _run(self, batch: np.ndarray) -> np.ndarray:
        self._cuda.activate()   # CUDA's current device is per thread: this may be a new one
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
        with ERRORS.capture() as errors:
            if not self._context.execute_async_v3(self._cuda.stream_handle):
                raise RuntimeError(f"TensorRT inference failed ({errors()})")
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
             "built_on": self.spec.notes.get("engine_built_on")}
        if self._dla_core is not None:
            d["dla_core"] = self._dla_core
        return d


__all__ = ["TensorRTSession", "check_portability"]
