"""QATStudent: what qat() returns and export() takes.

A fake-quantized PT2E copy of a model (torch.fx.GraphModule from prepare_qat_pt2e), trained
for one family of backends, with what the exporters need to turn it into an artifact: its
family (which PT2E quantizer, which lowering), the teacher (parity's FP32 reference), the
spec, the split, and the recipe the artifact's spec records. Calling it runs the
fake-quantized model: `student(x)` takes what the teacher takes.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from edgecls.errors import UnsupportedOptionError
from edgecls.imaging.datasets import CalibrationSet
from edgecls.qat_training.data import Split
from edgecls.qat_training.families import Family
from edgecls.spec import ModelSpec
from edgecls.targets import Target


@dataclass
class QATStudent:
    module: Any                    # the trained fake-quant torch.fx.GraphModule (CPU)
    teacher: Any                   # the FP32 torch module it learned from
    spec: ModelSpec                # the teacher's spec
    family: Family
    target: Target
    quantizer: Any                 # the PT2E quantizer it was prepared with
    split: Split
    recipe: dict[str, Any] = field(default_factory=dict)   # spec.quantization, less per-format

    def __call__(self, x):
        return self.module(x)

    def check_export(self, fmt: str, precision: str) -> None:
        """Refuse an export this student was not trained for."""
        if precision != "int8":
            raise UnsupportedOptionError(f"a QAT student exports INT8 artifacts, not {precision}: "
                                         "export its teacher for FP32/FP16")
        if fmt not in self.family.formats:
            raise UnsupportedOptionError(
                f"this student was trained for {', '.join(self.family.formats)} "
                f"({self.family.name} quantization); train one for {fmt}: qat(..., to={fmt!r}) "
                f"or `edgecls export --to {fmt} --qat`")

    def record(self, spec: ModelSpec, fmt: str) -> None:
        """Fill in an artifact's spec: the QAT recipe, its FP32 parent, the tools. (Its mean
        and std are the student's already: exporting.export derives it from them.)"""
        import torch
        import torchao
        spec.quantization = {**copy.deepcopy(self.recipe), "format": fmt}
        spec.parent = {"format": "torch", "precision": "fp32", "weights": self.spec.weights,
                       "relation": "teacher of quantization-aware training"}
        spec.tools.update(torch=torch.__version__.split("+")[0], torchao=torchao.__version__)

    def converted(self, fold_quantize: bool = True):
        """The integer-ready model (convert_pt2e) of a copy of the student: quantize /
        dequantize ops with the trained scales; folded int8 weights unless told not to."""
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e
        model = convert_pt2e(copy.deepcopy(self.module), fold_quantize=fold_quantize)
        allow_exported_model_train_eval(model)   # so that wrappers may call .eval() on it
        return model

    def calibration(self):
        """The training images as the CalibrationSet export() hands around: its recipe ids
        let parity warn about overlap, and its held-out images are the validation side."""
        return CalibrationSet(self.split.train, self.spec, source=self.split.validation)
