"""ExecuTorch session: a .pte program run by executorch.runtime (ExecuTorch 1.4's Python
runtime: Runtime.get() -> load_program -> load_method("forward") -> execute).

Input: NCHW float32, normalised as the spec says, fixed batch 1 in the program (the session
runs a batch as a loop over samples). The runtime's pybindings take and return torch
tensors, so the device side needs torch (CPU wheel) and executorch (see the note in the
issue report for a torch-free runtime).

Threads: XNNPACK runs on ExecuTorch's one process-wide threadpool (by default one thread
per core). `threads` resets that pool (portable_lib._unsafe_reset_threadpool): like
torch.set_num_threads it applies to every ExecuTorch session of the process, and is done
under a module-wide lock, with no method of this module executing, because resetting the
pool while a method runs on it is what makes the call "unsafe".

Thread safety: a loaded Method executes in planned memory that belongs to it (inputs,
activations, outputs), so two threads must not execute one Method at once: the session is
thread_safe = False and Session.run serialises its callers.

Devices: the program is lowered for XNNPACK, a CPU delegate; gpu / npu (Vulkan, QNN,
Core ML, ... need a program lowered for that delegate) are a DeviceUnavailableError, or the
CPU with `fallback=True`, reported in device_used.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from edgecls.backends.base import Session
from edgecls.backends.executorch import FORMAT
from edgecls.backends.executorch.container import spec_of
from edgecls.errors import (REEXPORT, ArtifactError, DeviceUnavailableError, MissingDependencyError,
                            first_line)
from edgecls.io import read_artifact

#: serialises threadpool resets against every execute of this module's sessions
_POOL = threading.RLock()


def runtime_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"executorch {version('executorch')}"
    except PackageNotFoundError:
        return "?"


def _runtime():
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # "experimental API" at import
            from executorch.runtime import Runtime, Verification
            from executorch.extension.pybindings import portable_lib
    except ImportError as e:
        raise MissingDependencyError(f"the ExecuTorch runtime ({first_line(e)})",
                                     "executorch") from None
    return Runtime.get(), Verification, portable_lib


def set_threads(threads: int) -> int:
    """Resize ExecuTorch's process-wide threadpool (no-op when it has that size already)."""
    _, _, lib = _runtime()
    with _POOL:
        if lib._threadpool_get_thread_count() != threads:
            lib._unsafe_reset_threadpool(int(threads))
        return lib._threadpool_get_thread_count()


class ExecuTorchSession(Session):
    format = FORMAT
    backend = "executorch"
    thread_safe = False      # a Method's planned memory is its own: one caller at a time

    def _open(self) -> None:
        data = read_artifact(self.path)          # read once: the spec, then the program
        self.spec = spec_of(data, self.path)
        if self.device in ("gpu", "npu"):
            message = (f"{self.path.name} is lowered for XNNPACK, a CPU delegate; ExecuTorch "
                       f"runs on {self.device} only through a program lowered for its delegate "
                       "(Vulkan, QNN, Core ML, ...), which edgecls does not export yet")
            if not self.fallback:
                raise DeviceUnavailableError(message + "; use --device cpu (or allow --fallback)")
            self.fallback_reason = message
        self.device_used = "cpu"
        runtime, verification, lib = _runtime()
        import torch
        self._torch = torch
        if self.threads:
            self.threads = set_threads(int(self.threads))
        try:
            self._program = runtime.load_program(data,
                                                 verification=verification.InternalConsistency)
            if "forward" not in self._program.method_names:
                raise ArtifactError(f"{self.path}: the ExecuTorch program has no forward method")
            self._method = self._program.load_method("forward")
            meta = self._method.metadata
        except ArtifactError:
            raise
        except Exception as e:  # the pybindings raise RuntimeError / ValueError by failure
            raise ArtifactError(f"{self.path}: the ExecuTorch runtime cannot load it "
                                f"({first_line(e)}); {REEXPORT}") from None
        if meta.num_inputs() != 1 or meta.num_outputs() != 1:
            raise ArtifactError(f"{self.path}: expected one input and one output, found "
                                f"{meta.num_inputs()} and {meta.num_outputs()}")
        sizes = tuple(int(d) for d in meta.input_tensor_meta(0).sizes())
        if sizes[1:] != self.spec.input_shape(1)[1:]:
            raise ArtifactError(f"{self.path}: the program takes {list(sizes)}, its spec says "
                                f"{list(self.spec.input_shape(1))}; {REEXPORT}")
        self._step = sizes[0]
        self.precision_used = self.spec.precision

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) % self._step:
            raise ValueError(f"this ExecuTorch program takes batches of {self._step}")
        x = self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with _POOL:
            rows = [self._method.execute([x[i:i + self._step]])[0].numpy()
                    for i in range(0, len(x), self._step)]
        return np.concatenate(rows)

    def _close(self) -> None:
        self._method = None
        self._program = None

    def describe(self) -> dict[str, Any]:
        d = {**super().describe(), "runtime": runtime_version(),
             "delegate": "XnnpackBackend (cpu)", "batch": f"fixed {self._step} (looped)"}
        if getattr(self, "fallback_reason", None):
            d["fallback"] = self.fallback_reason
        return d


__all__ = ["ExecuTorchSession", "set_threads"]
