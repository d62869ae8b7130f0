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
    """Options: `providers` (ORT's names, overriding the device mapping); `precise_int8`
    (ORT's exact U8U8 kernels on x86 CPUs without VNNI, session.x64quantprecision=1: INT8
    artifacts then compute what VNNI and ARM CPUs compute, at about FP32 speed); `spin`
    (False stops idle threads from spinning: needed when several sessions share the cores,
    e.g. when they are timed side by side)."""
    format = FORMAT
    backend = "onnxruntime"
    accepted_options = ("providers", "precise_int8", "spin")
    saturating_int8_kernels = True          # MLAS's u8 x s8 GEMM uses VPMADDUBSW on AVX2
    int8_remedy = (" or open it with precise_int8=True (--precise-int8: ONNX Runtime's exact "
                   "U8U8 kernels, about FP32 speed)")

    def _open(self, providers: list[str] | None = None, precise_int8: bool = False,
              spin: bool | None = None) -> None:
        import onnxruntime as ort
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        if precise_int8:
            so.add_session_config_entry("session.x64quantprecision", "1")
        self.exact_int8 = bool(precise_int8)
        if spin is False:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
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
        return {**super().describe(), "providers": self.providers,
                **({"int8_kernels": "exact (U8U8)"} if self.exact_int8 else {})}
