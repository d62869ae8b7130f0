"""ExportSource: what every exporter starts from - the torch model, its spec, and the FP32
ONNX file made from it at most once (OpenVINO, TensorRT and parity's SQNR diagnostics all
start from it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecls.spec import ModelSpec


@dataclass
class ExportSource:
    model: Any
    spec: ModelSpec
    workdir: Path
    onnx_opset: int | None = None
    _onnx: Path | None = field(default=None, repr=False)

    def has_onnx(self) -> bool:
        return self._onnx is not None

    def onnx(self, opset: int | None = None) -> Path:
        from edgecls.backends.onnx import DEFAULT_OPSET
        from edgecls.backends.onnx.export import export_fp32
        opset = opset or DEFAULT_OPSET
        if self._onnx is None or self.onnx_opset != opset:
            path = self.workdir / f"{self.spec.name}.fp32.onnx"
            export_fp32(self.model, self.spec.derive(format="onnx", exported_from="torch",
                                                     tools=dict(self.spec.tools)), path, opset)
            self._onnx, self.onnx_opset = path, opset
        return self._onnx
