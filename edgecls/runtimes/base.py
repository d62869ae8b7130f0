"""The runtime contract, after Polygraphy's BaseRunner.

    with Session.open(path, device="cpu", threads=2) as s:
        logits = s.run(batch)          # validated here, executed by the backend's _run

Devices are "cpu" | "gpu" | "npu" | "auto", mapped per backend. A device that is absent
is a DeviceUnavailableError, never a silent fallback; `fallback=True` allows one and the
session reports what it actually used in `device_used`.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.errors import ArtifactError, DeviceUnavailableError, UnsupportedOptionError
from edgecls.formats import DEVICES, format_for_path
from edgecls.spec import ModelSpec

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8,
                 "int8": np.int8}


class Session:
    #: backend name shown in reports ("onnxruntime", "openvino", ...)
    backend = "?"
    #: False when the backend object must not be entered by two threads at once
    thread_safe = True

    def __init__(self, path: str | Path, device: str | None = None, threads: int | None = None,
                 fallback: bool = False, **options: Any):
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: no such file")
        self.format = format_for_path(self.path)
        device = device or self.format.default_device()  # cpu, or auto where there is no cpu
        if device not in DEVICES:
            raise DeviceUnavailableError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
        if device not in self.format.devices:
            raise DeviceUnavailableError(f"{self.format.name} artifacts run on "
                                         f"{', '.join(self.format.devices)}, not {device}")
        self.device = device
        self.threads = threads
        self.fallback = fallback
        self.device_used = device          # what the backend actually runs on
        self.precision_used: str | None = None
        self._lock = threading.Lock()
        self.spec = self.read_spec(self.path)
        unknown = set(options) - set(self.accepted_options)
        if unknown:
            raise UnsupportedOptionError(f"{self.backend} does not take option(s) "
                                         f"{', '.join(sorted(unknown))}")
        self._open(**options)

    # -- what a backend implements -----------------------------------------------------------
    accepted_options: tuple[str, ...] = ()

    @classmethod
    def read_spec(cls, path: Path) -> ModelSpec:
        raise NotImplementedError

    def _open(self, **options: Any) -> None:
        raise NotImplementedError

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    # -- the public side -------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, **kwargs: Any) -> "Session":
        return cls(path, **kwargs)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N x classes, float32) for a batch already in the artifact's input form."""
        self._validate(batch)
        if self.thread_safe:
            out = self._run(batch)
        else:
            with self._lock:
                out = self._run(batch)
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)

    def _validate(self, batch: np.ndarray) -> None:
        expected = self.spec.input_shape(batch=len(batch))
        if not isinstance(batch, np.ndarray) or batch.ndim != 4:
            raise ValueError(f"expected a 4-D batch {expected}, got "
                             f"{getattr(batch, 'shape', type(batch).__name__)}")
        if tuple(batch.shape) != expected:
            raise ValueError(f"expected a batch of shape {expected} ({self.spec.layout}), "
                             f"got {tuple(batch.shape)}")
        want = np.uint8 if self.spec.normalization_in_graph else np.float32
        if batch.dtype != want:
            raise ValueError(f"expected {np.dtype(want).name} input, got {batch.dtype}")

    def close(self) -> None:
        self._close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": self.device_used,
                "precision": self.precision_used or self.spec.precision,
                "threads": self.threads}


def open_session(path: str | Path, **kwargs: Any) -> Session:
    """Open the right Session for an artifact, chosen by the format table."""
    cls = format_for_path(path).load_runtime()
    return cls(path, **kwargs)


def read_spec(path: str | Path) -> ModelSpec:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    return format_for_path(path).load_spec_reader()(path)
