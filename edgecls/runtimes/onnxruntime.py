"""ONNX Runtime session: devices map to execution providers that are actually present."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecls.errors import ArtifactError, DeviceUnavailableError
from edgecls.runtimes.base import Session
from edgecls.spec import SPEC_KEY, ModelSpec

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


def _ort():
    import onnxruntime
    return onnxruntime


class OnnxRuntimeSession(Session):
    backend = "onnxruntime"
    accepted_options = ("providers",)

    @classmethod
    def read_spec(cls, path: Path) -> ModelSpec:
        ort = _ort()
        # only the metadata is wanted: skip graph optimisation, the costly part of a load
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = _inference_session(ort, path, options, ["CPUExecutionProvider"])
        meta = sess.get_modelmeta().custom_metadata_map
        if SPEC_KEY not in meta:
            raise ArtifactError(f"{path}: an ONNX model without an edgecls spec; export it with "
                                "`edgecls export`")
        return ModelSpec.from_json(meta[SPEC_KEY], str(path))

    def _open(self, providers: list[str] | None = None) -> None:
        ort = _ort()
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        if providers is None:
            providers = pick_providers(self.device, ort.get_available_providers(), self.fallback)
        self._session = _inference_session(ort, self.path, so, providers)
        used = self._session.get_providers()
        self.providers = used
        self.device_used = next((d for d in ("gpu", "npu") if used[0] in PROVIDERS[d]), "cpu")
        self._input = self._session.get_inputs()[0].name
        self.precision_used = self.spec.precision

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: batch})[0]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self.providers}


def _inference_session(ort, path: Path, options, providers):
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... classes
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{path}: ONNX Runtime cannot load it ({first[:300]})") from None
