"""TensorRT: engines built from the FP32 / FP16 / QDQ-INT8 ONNX, an edgecls header carrying the
spec, and sessions on NVIDIA GPUs and DLA cores. Written against TensorRT 10 and
cuda-python 12 (the `tensorrt` extra pins both to CUDA 12)."""
from __future__ import annotations

from dataclasses import dataclass

from edgecls.backends.base import ExportOptions, Format, option
from edgecls.backends.onnx import TORCH_EXPORT
from edgecls.errors import UnsupportedOptionError


@dataclass(frozen=True)
class TensorRTOptions(ExportOptions):
    workspace_gb: float | None = option("builder workspace, in GB")
    dla_core: int | None = option("build for this DLA core (device npu; --fp16 only)")

    def check(self, precision: str) -> None:
        if self.workspace_gb is not None and self.workspace_gb <= 0:
            raise UnsupportedOptionError(f"workspace_gb must be positive, not {self.workspace_gb}")
        if self.dla_core is None:
            return
        if self.dla_core < 0:
            raise UnsupportedOptionError(f"dla_core must be 0 or more, not {self.dla_core}")
        if precision == "fp32":
            raise UnsupportedOptionError("DLA runs FP16 and INT8 only: add --fp16 to --dla-core")
        if precision == "int8":
            # DLA supports implicit quantization only (a calibrator, deprecated by TensorRT).
            # Built for DLA, a Q/DQ network's quantized layers would quietly run on the GPU.
            raise UnsupportedOptionError(
                "DLA has no explicit (Q/DQ) INT8, which is what --int8 builds: TensorRT would run "
                "its quantized layers on the GPU, not on DLA; use --fp16 with --dla-core, or "
                "--int8 without it for the GPU")


FORMAT = Format(
    "tensorrt", (".engine", ".plan"),
    runtime="edgecls.backends.tensorrt.runtime:TensorRTSession", requires=("tensorrt",),
    extra="tensorrt",
    container="edgecls.backends.tensorrt.container",   # pure Python: `info` needs no GPU
    exporter="edgecls.backends.tensorrt.export:export",
    export_requires=TORCH_EXPORT + ("tensorrt",), options=TensorRTOptions,
    starts_from=("torch", "onnx"),
    devices=("gpu", "npu", "auto"),   # npu = DLA cores
    description="TensorRT engine (NVIDIA GPU, DLA)")
