"""ExportSource: what every exporter starts from - the torch model, its spec, the FP32 ONNX
file made from it at most once (OpenVINO, TensorRT and parity's SQNR diagnostics all start
from it), and for INT8 the held-out images recipes are judged on, with the FP32 model's
answers on them (made once, shared by the recipe search and the final parity check)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.spec import ModelSpec


@dataclass
class ExportSource:
    model: Any
    spec: ModelSpec
    workdir: Path
    onnx_opset: int | None = None
    validation: Any = None                 # --data: the INT8 check's images (else calibration's rest)
    max_drop: float | None = None          # --max-drop: the INT8 tolerance, in points
    _onnx: Path | None = field(default=None, repr=False)
    _held_out: Any = field(default=None, repr=False)

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

    def held_out(self, calibration=None) -> Any:
        """search.HeldOut: --data, or what the calibration source has left (never a
        calibration image), with the FP32 model's logits; None when there is nothing to
        judge on, or when random weights (--weights none) would make agreement meaningless.
        Without calibration (FP32/FP16 candidates of `--to best`): --data alone."""
        if self._held_out is None and self.spec.trained:
            from edgecls.backends.torch.runtime import TorchSession
            from edgecls.calibration.datasets import load_part
            from edgecls.calibration.preprocess import to_model_input
            from edgecls.search import HeldOut
            images = (calibration.held_out(self.validation, self.spec) if calibration is not None
                      else None if self.validation is None
                      else load_part(self.validation, self.spec, "val").subset(500))
            if images is not None and len(images):
                pixels = images.crops(self.spec)
                with TorchSession.of_module(self.model, self.spec) as reference:
                    logits = np.concatenate([
                        reference.run(to_model_input(pixels[i:i + 16], reference.spec))
                        for i in range(0, len(pixels), 16)])
                self._held_out = HeldOut(images.name, pixels, logits, images.labels(), images)
        return self._held_out

    def tolerance(self, held_out) -> Any:
        """The INT8 tolerance on those images (verification.Tolerance)."""
        from edgecls.verification import tolerance_for
        return tolerance_for("int8", held_out.labels is not None, self.max_drop)
