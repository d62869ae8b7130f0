"""ExecuTorch: PyTorch's on-device runtime. torch.export -> to_edge_transform_and_lower with
the XNNPACK partitioner -> a .pte program; INT8 through PT2E with ExecuTorch's XNNPACK
quantizer; the spec as a constant method of the program; sessions through
executorch.runtime (XNNPACK on the CPU)."""
from __future__ import annotations

from dataclasses import dataclass

from edgecls import targets
from edgecls.backends.base import Format, TargetedOptions, option
from edgecls.errors import UnsupportedOptionError

#: activation observers the INT8 calibration can use (weights: per-channel min/max always)
OBSERVERS = ("minmax", "histogram")


@dataclass(frozen=True)
class ExecuTorchOptions(TargetedOptions):
    calib_method: str | None = option(
        "ExecuTorch INT8: activation ranges from minmax (global min/max over the calibration "
        "images, the default) or histogram (XNNPACK quantizer's default observer, slower)",
        int8_only=True)
    keep_float: tuple[str, ...] = option(
        "ExecuTorch INT8: graph nodes (e.g. conv2d, linear) left in float", int8_only=True)

    def check(self, precision: str) -> None:
        if self.calib_method is not None and self.calib_method not in OBSERVERS:
            raise UnsupportedOptionError(f"--calib-method for executorch takes "
                                         f"{' or '.join(OBSERVERS)}, not {self.calib_method!r}")
        if precision == "int8":
            if targets.resolve(self.target).device != "cpu":
                raise UnsupportedOptionError(
                    f"--target {self.target} is not an ExecuTorch target; XNNPACK INT8 is the "
                    "same program on every CPU: x86-vnni, x86-avx2, arm64, portable")


FORMAT = Format(
    "executorch", (".pte",),
    runtime="edgecls.backends.executorch.runtime:ExecuTorchSession",
    # the pip wheel's Python runtime takes and returns torch tensors
    requires=("executorch", "torch"), extra="executorch",
    container="edgecls.backends.executorch.container",   # pure Python: no requirement
    exporter="edgecls.backends.executorch.export:export",
    export_requires=("torch", "executorch", "torchao"), options=ExecuTorchOptions,
    precisions=("fp32", "int8"),
    description="ExecuTorch (.pte, XNNPACK CPU delegate)")
