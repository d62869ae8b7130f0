"""TFLite / LiteRT session: ai-edge-litert's Interpreter (tflite_runtime as a fallback).

CPU runs through XNNPACK with `threads`; gpu / npu run through a delegate given by path
(`delegate="libedgetpu.so.1"`, CLI --delegate): no delegate, or one that does not load, is a
DeviceUnavailableError unless `fallback=True` (then CPU, reported in `device_used`).

Quantized inputs/outputs (an --int8-io artifact) are quantized and dequantized here with the
scales stored in the model, so `run()` always takes the float tensor `to_model_input` makes
and returns float logits.

An Interpreter must not be entered by two threads at once: a session keeps a pool of
interpreters (option `interpreters`, default 1) and a thread borrows one for a call, so no
two threads ever share one. With the default the pool serialises callers like a lock; on
2 cores a pool of 2 gave no more throughput than 1 (XNNPACK already uses the threads) and
each interpreter holds its own packed weights, so more is opt-in for many-core hosts.

The file is read once: its spec (container.py) and every interpreter come from those bytes.
"""
from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np

from edgecls.backends.base import Session
from edgecls.backends.tflite import FORMAT
from edgecls.backends.tflite.container import spec_of
from edgecls.errors import (REEXPORT, ArtifactError, DeviceUnavailableError, MissingDependencyError,
                            UnsupportedOptionError, first_line)
from edgecls.io import read_artifact

DEFAULT_INTERPRETERS = 1


# -- interpreter loading -----------------------------------------------------------------------
def _interpreter_module():
    try:
        from ai_edge_litert import interpreter
        return interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter  # unmaintained since 2023; needs numpy<2
        return interpreter
    except ImportError:
        raise MissingDependencyError("the TFLite runtime (ai-edge-litert)", "tflite") from None


def runtime_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    for dist in ("ai-edge-litert", "tflite-runtime"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "?"


class TFLiteSession(Session):
    format = FORMAT
    backend = "tflite"
    # Each interpreter is used by one thread at a time (a pool), so Session.run needs no lock.
    thread_safe = True
    accepted_options = ("delegate", "delegate_options", "interpreters")

    # -- opening ----------------------------------------------------------------------------
    def _open(self, delegate: str | None = None, delegate_options: dict[str, Any] | None = None,
              interpreters: int | None = None) -> None:
        self._content = read_artifact(self.path)
        self.spec = spec_of(self._content, self.path)
        self._tfl = _interpreter_module()
        self._delegate_path = delegate
        self._delegate_options = dict(delegate_options or {})
        self._delegates: list[Any] = []
        if self.device in ("gpu", "npu") or (self.device == "auto" and delegate):
            if not delegate:
                self._unavailable(f"TFLite runs on {self.device} only through a delegate: pass "
                                  "--delegate PATH (e.g. libedgetpu.so.1, a GPU or NNAPI/QNN "
                                  "delegate library)")
            else:
                try:
                    self._delegates = [self._tfl.load_delegate(delegate, self._delegate_options)]
                    self.device_used = "npu" if self.device == "npu" else (
                        "gpu" if self.device == "gpu" else "accelerator")
                except Exception as e:  # ValueError/OSError/RuntimeError by version
                    self._unavailable(f"the TFLite delegate {delegate} did not load "
                                      f"({first_line(e)})")
        if not self._delegates:
            self.device_used = "cpu"
        if delegate and self.device == "cpu":
            raise UnsupportedOptionError("--delegate is for --device gpu/npu/auto; on cpu "
                                         "TFLite uses XNNPACK")
        size = int(interpreters or DEFAULT_INTERPRETERS)
        if size < 1:
            raise UnsupportedOptionError("interpreters must be at least 1")
        if self._delegates:
            size = 1  # one delegate instance may not serve several interpreters
        self._max = size
        self._pool: queue.LifoQueue = queue.LifoQueue()
        self._made = 0
        self._made_lock = threading.Lock()
        first = self._new_interpreter()         # fail now, not on the first run()
        self._pool.put(first)
        self._describe_io(first)
        self.precision_used = self.spec.precision

    def _unavailable(self, message: str) -> None:
        if not self.fallback:
            raise DeviceUnavailableError(message + "; or use --device cpu (or allow --fallback)")
        self.fallback_reason = message

    def _new_interpreter(self):
        kwargs: dict[str, Any] = {"model_content": self._content}
        if self._delegates:
            kwargs["experimental_delegates"] = self._delegates
        if self.threads:
            kwargs["num_threads"] = int(self.threads)
        try:
            it = self._tfl.Interpreter(**kwargs)
            it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ArtifactError(f"{self.path}: the TFLite runtime cannot load it "
                                f"({first_line(e)}); {REEXPORT}") from None
        with self._made_lock:
            self._made += 1
        return it

    def _describe_io(self, it) -> None:
        inp, out = it.get_input_details(), it.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise ArtifactError(f"{self.path}: expected one input and one output, found "
                                f"{len(inp)} and {len(out)}")
        self._in, self._out = inp[0], out[0]
        sig = self._in.get("shape_signature")
        sig = self._in["shape"] if sig is None or not len(sig) else sig
        self._dynamic_batch = int(sig[0]) == -1
        self._static_batch = int(self._in["shape"][0])

    # -- running ----------------------------------------------------------------------------
    def _borrow(self):
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            pass
        with self._made_lock:
            grow = self._made < self._max
        if grow:
            return self._new_interpreter()
        return self._pool.get()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        it = self._borrow()
        try:
            if self._dynamic_batch:
                return self._invoke(it, batch)
            step = self._static_batch          # a fixed-batch model: run it in slices
            if len(batch) % step:
                raise ValueError(f"this TFLite model takes batches of {step}")
            return np.concatenate([self._invoke(it, batch[i:i + step])
                                   for i in range(0, len(batch), step)])
        finally:
            self._pool.put(it)

    def _invoke(self, it, x: np.ndarray) -> np.ndarray:
        index = self._in["index"]
        if self._dynamic_batch and tuple(it.get_input_details()[0]["shape"]) != x.shape:
            it.resize_tensor_input(index, x.shape)
            it.allocate_tensors()
        it.set_tensor(index, quantize(x, self._in))
        it.invoke()
        return dequantize(it.get_tensor(self._out["index"]), self._out)

    def _close(self) -> None:
        while True:
            try:
                self._pool.get_nowait()
            except queue.Empty:
                break
        self._delegates = []

    def describe(self) -> dict[str, Any]:
        d = {**super().describe(), "runtime": runtime_version(),
             "input": f"{np.dtype(self._in['dtype']).name} {[int(d) for d in self._in['shape']]}",
             "output": np.dtype(self._out["dtype"]).name,
             "batch": "dynamic" if self._dynamic_batch else f"fixed {self._static_batch} (looped)",
             "interpreters": self._max}
        d["delegate"] = self._delegate_path if self._delegates else "xnnpack (cpu)"
        if getattr(self, "fallback_reason", None):
            d["fallback"] = self.fallback_reason
        return d


def quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float -> the tensor's dtype with its (scale, zero_point); float tensors pass through."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return np.ascontiguousarray(x, dtype=np.float32)
    if dtype == np.float16:
        return x.astype(np.float16)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    q = np.round(x / np.float32(scale)) + zero
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return y.astype(np.float32, copy=True)
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - np.float32(zero)) * np.float32(scale)


__all__ = ["TFLiteSession", "quantize", "dequantize"]
