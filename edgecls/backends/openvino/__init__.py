"""OpenVINO: IR (.xml + .bin) from the FP32 ONNX artifact, NNCF INT8, the spec in rt_info,
and sessions on Intel CPU / GPU / NPU."""
from __future__ import annotations

from dataclasses import dataclass

from edgecls.backends.base import Format, TargetedOptions, option
from edgecls.backends.onnx import TORCH_EXPORT
from edgecls.errors import UnsupportedOptionError


@dataclass(frozen=True)
class OpenVINOOptions(TargetedOptions):
    preset: str | None = option("NNCF preset: performance | mixed", int8_only=True)
    calib_method: str | None = option("NNCF range estimator: minmax | mean_minmax | percentile "
                                      "| histogram", int8_only=True)
    ignored_scope: tuple[str, ...] | None = option(
        "operation names to keep in float (default: the first conv and the classifier; "
        "`none` quantizes all)", int8_only=True)
    static_batch: int | None = option("fix the batch dimension")
    bake_preprocessing: bool = option("put mean/std and layout into the graph", default=False)

    def check(self, precision: str) -> None:
        if precision == "int8":   # fail before the (slow) conversion, not after it
            # loaded by an INT8 check, not with the format table
            from edgecls.backends.openvino.quantize import check_recipe
            check_recipe(self.preset, self.calib_method, self.target)
        if self.static_batch is not None and self.static_batch < 1:
            raise UnsupportedOptionError(f"--static-batch must be >= 1, not {self.static_batch}")


FORMAT = Format(
    "openvino", (".xml",),
    runtime="edgecls.backends.openvino.runtime:OpenVINOSession", requires=("openvino",),
    extra="openvino",
    container="edgecls.backends.openvino.container", container_requires=("openvino",),
    exporter="edgecls.backends.openvino.export:export",
    export_requires=TORCH_EXPORT + ("openvino", "nncf"), options=OpenVINOOptions,
    companions=(".bin",), starts_from=("torch", "onnx"),
    description="OpenVINO IR (Intel CPU, GPU, NPU)")
