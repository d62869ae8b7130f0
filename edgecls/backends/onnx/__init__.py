"""ONNX: torch.onnx's dynamo exporter, ONNX Runtime sessions, ORT's QDQ quantization, the
spec in metadata_props, and SQNR diagnostics of INT8 models."""
from __future__ import annotations

from dataclasses import dataclass

from edgecls.backends.base import Format, TargetedOptions, option

DEFAULT_OPSET = 18
TORCH_EXPORT = ("torch", "onnx", "onnxscript")   # what exporting through ONNX needs


@dataclass(frozen=True)
class OnnxOptions(TargetedOptions):
    opset: int | None = option(f"ONNX opset (default {DEFAULT_OPSET})")
    calib_method: str | None = option("minmax | entropy | percentile", int8_only=True)
    exclude: tuple[str, ...] | None = option(
        "node names to keep in float (the first conv and the classifier are kept by default; "
        "`--exclude none` quantizes all)", int8_only=True)

    def check(self, precision: str) -> None:
        if precision == "int8":
            # loaded by an INT8 check, not with the format table
            from edgecls.backends.onnx.quantize import check_recipe
            check_recipe(self.calib_method, self.target)


FORMAT = Format(
    "onnx", (".onnx",),
    runtime="edgecls.backends.onnx.runtime:OnnxRuntimeSession", requires=("onnxruntime",),
    extra="onnx",
    container="edgecls.backends.onnx.container", container_requires=("onnxruntime",),
    exporter="edgecls.backends.onnx.export:export",
    export_requires=TORCH_EXPORT + ("onnxruntime",), options=OnnxOptions,
    starts_from=("torch", "onnx"),
    int8_diagnostics="edgecls.backends.onnx.diagnostics:worst_onnx_layers",
    description="ONNX Runtime (CPU, CUDA/TensorRT/DirectML EPs, NPU EPs)")
