"""ExportSource: what every exporter starts from - the torch model, its spec, the FP32 ONNX
file made from it at most once (OpenVINO, TensorRT and parity's SQNR diagnostics all start
from it), the reference its artifacts are checked against, and for INT8 the images of two
roles: the selection images every choice is ranked on (with the reference's answers on
them, made once for the whole search) and the verification images the finished artifact is
judged on, which no choice ever saw.

Model sources (zoo names, timm:/torchvision: names, .pt2 programs, factories, ONNX files)
are resolved into one by edgecls.sources; an FP32 ONNX file gives an OnnxFileSource
(sources/onnx_file.py), whose model is None and whose reference is that file. For a
quantization-aware trained student, the model is the QATStudent and its QDQ ONNX plays the
FP32 ONNX's part.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgecls.backends.onnx import DEFAULT_OPSET
from edgecls.backends.onnx.export import export_fp32, export_qat
from edgecls.backends.recipes import HeldOut
from edgecls.backends.torch.runtime import TorchSession
from edgecls.spec import ModelSpec
from edgecls.verdict import tolerances_for


@dataclass
class ExportSource:
    model: Any
    spec: ModelSpec
    workdir: Path
    onnx_opset: int | None = None
    selection: Any = None                  # --select: what recipes are ranked on (else calibration's rest)
    verification: Any = None               # --data: what the INT8 check judges on (or None)
    max_drop: float | None = None          # --max-drop: the INT8 tolerance, in points
    _onnx: Path | None = field(default=None, repr=False)
    _held_out: Any = field(default=None, repr=False)
    _qat_onnx: Path | None = field(default=None, repr=False)
    #: what runs the reference (parity reports it)
    reference_backend: ClassVar[str] = "pytorch"

    @property
    def student(self):
        """The QATStudent being exported (its scales are trained: nothing to calibrate), or
        None for a plain FP32 model."""
        # OpenCV: a student carries its images (imaging.datasets); this module stays without
        from edgecls.qat_training.student import QATStudent
        return self.model if isinstance(self.model, QATStudent) else None

    def qat_onnx(self) -> Path:
        """The student's QDQ ONNX (ONNX Runtime, OpenVINO and TensorRT start from it), made once."""
        if self._qat_onnx is None:
            path = self.workdir / f"{self.spec.name}.qat.onnx"
            export_qat(self.student, self.spec.derive(format="onnx", precision="int8",
                                                      tools=dict(self.spec.tools)), path)
            self._qat_onnx = path
        return self._qat_onnx

    def has_onnx(self) -> bool:
        return self._onnx is not None

    def onnx(self, opset: int | None = None) -> Path:
        opset = opset or self.onnx_opset or DEFAULT_OPSET
        if self._onnx is None or self.onnx_opset != opset:
            path = self.workdir / f"{self.spec.name}.fp32.onnx"
            export_fp32(self.model, self.spec.derive(format="onnx", exported_from="torch",
                                                     tools=dict(self.spec.tools)), path, opset)
            self._onnx, self.onnx_opset = path, opset
        return self._onnx

    # -- the reference: what every artifact made from this source is compared with ---------
    @property
    def reference(self) -> Any:
        """The torch module (a QAT student's teacher); what parity(reference=...) and the
        INT8 check take."""
        return self.student.teacher if self.student is not None else self.model

    def reference_session(self, device: str | None = None, threads: int | None = None):
        """A Session running the reference (fed as its .spec says)."""
        return TorchSession.of_module(self.reference, self.spec, device, threads)

    def reference_logits(self, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
        """The reference's logits for N x H x W x 3 uint8 crops (resize_crop's output)."""
        # OpenCV: imaging.preprocess imports cv2
        from edgecls.imaging.preprocess import to_model_input
        if not len(pixels):
            return np.empty((0, self.spec.num_classes), np.float32)
        with self.reference_session() as session:
            return np.concatenate([session.run(to_model_input(pixels[i:i + batch], session.spec))
                                   for i in range(0, len(pixels), batch)])

    # -- INT8: the images recipes are ranked on ------------------------------------------------
    def held_out(self, calibration=None) -> Any:
        """search.HeldOut of the selection images: --select, or what the calibration source
        has left (never a calibration image), with the reference's logits; None when there is
        nothing to rank on, or when random weights (--weights none) would make agreement
        meaningless. Without calibration (FP32/FP16 candidates of `--to best`): --select
        alone."""
        if self._held_out is None and self.spec.trained:
            from edgecls.imaging.datasets import load_part   # OpenCV (imaging.datasets)
            images = (calibration.held_out(self.selection, self.spec) if calibration is not None
                      else None if self.selection is None
                      else load_part(self.selection, self.spec, "select").subset(500))
            if images is not None and len(images):
                pixels = images.crops(self.spec)
                self._held_out = HeldOut(images.name, pixels, self.reference_logits(pixels),
                                         images.labels(), images)
        return self._held_out

    def tolerance(self, held_out) -> Any:
        """The INT8 tolerances (verdict.Tolerances); `held_out` says whether there are labels."""
        return tolerances_for("int8", self.max_drop)
