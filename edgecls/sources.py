"""ExportSource: what every exporter starts from - the torch model, its spec, and the FP32
ONNX file made from it at most once (OpenVINO, TensorRT and parity's SQNR diagnostics all
start from it). For a quantization-aware trained student, the model is the QATStudent and
its QDQ ONNX plays that part."""
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
    _qat_onnx: Path | None = field(default=None, repr=False)

    @property
    def student(self):
        """The QATStudent being exported (its scales are trained: nothing to calibrate), or
        None for a plain FP32 model."""
        from edgecls.qat_training.student import QATStudent
        return self.model if isinstance(self.model, QATStudent) else None

    def qat_onnx(self) -> Path:
        """The student's QDQ ONNX (ONNX Runtime, OpenVINO and TensorRT start from it), made once."""
        from edgecls.backends.onnx.export import export_qat
        if self._qat_onnx is None:
            path = self.workdir / f"{self.spec.name}.qat.onnx"
            export_qat(self.student, self.spec.derive(format="onnx", precision="int8",
                                                      tools=dict(self.spec.tools)), path)
            self._qat_onnx = path
        return self._qat_onnx

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
