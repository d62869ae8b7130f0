"""ONNX Runtime session: devices map to execution providers that are actually present."""
from __future__ import annotations

from typing import Any

import numpy as np

from edgecls.backends.base import Session
from edgecls.backends.onnx import FORMAT
from edgecls.backends.onnx.container import inference_session, spec_of
from edgecls.errors import DeviceUnavailableError

# Preferred providers per device, best first. CPU is always last resort for "auto".
PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "gpu": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider",
            "MIGraphXExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider",
            "WebGpuExecutionProvider"),
    "npu": ("QNNExecutionProvider", "VitisAIExecutionProvider", "OpenVINOExecutionProvider",
            "CANNExecutionProvider", "NnapiExecutionProvider"),
}
PROVIDERS["auto"] = PROVIDERS["gpu"] + PROVIDERS["npu"] + PROVIDERS["cpu"]
# TensorRT EP builds an engine per shape: only when the user asks for it explicitly.
_EXPLICIT_ONLY = {"TensorrtExecutionProvider"}


def pick_providers(device: str, available: list[str], fallback: bool) -> list[str]:
    wanted = [p for p in PROVIDERS[device] if p in available
              and not (p in _EXPLICIT_ONLY and device == "auto")]
    if not wanted:
        if not fallback:
            raise DeviceUnavailableError(
                f"no ONNX Runtime execution provider for device {device!r} is installed "
                f"(present: {', '.join(available)}); use --device cpu, install a build with "
                f"one (e.g. onnxruntime-gpu), or allow --fallback")
        wanted = ["CPUExecutionProvider"]
    return wanted + (["CPUExecutionProvider"] if "CPUExecutionProvider" not in wanted else [])


class OnnxRuntimeSession(Session):
    format = FORMAT
    backend = "onnxruntime"
    accepted_options = ("providers",)

    def _open(self, providers: list[str] | None = None) -> None:
        import onnxruntime as ort
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        if providers is None:
            providers = pick_providers(self.device, ort.get_available_providers(), self.fallback)
        self._session = inference_session(self.path, so, providers)
        self.spec = spec_of(self._session, self.path)
        used = self._session.get_providers()
        self.providers = used
        self.device_used = next((d for d in ("gpu", "npu") if used[0] in PROVIDERS[d]), "cpu")
        self._input = self._session.get_inputs()[0].name
        self.precision_used = self.spec.precision

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: batch})[0]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self.providers}
