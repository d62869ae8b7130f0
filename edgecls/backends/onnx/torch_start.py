"""The torch models a backend that quantizes torch itself (full-integer TFLite, ExecuTorch)
starts its INT8 recipes from: the source's model with NNCF's bias correction, and - when the
search may choose it - the same model adaptively rounded first (edgecls.backends.adaround),
then bias-corrected for what that rounding leaves.

Bias correction is found on the ONNX export of the model it corrects (bias_correction.py), so
the rounded model gets its own export (export.rounded_onnx, which ONNX Runtime's second
start quantizes too); NNCF's weight quantization (symmetric, per channel,
max|w| / 127, BatchNorm folded) reproduces AdaRound's grid, so the correction it measures is
the one for the rounded weights. The reference is the source's unmodified model throughout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgecls.backends.onnx.bias_correction import corrected_module
from edgecls.backends.onnx.export import rounded_onnx

#: how a recipe's label names each method (in the order they were applied)
METHOD_WORDS = {"rounding": "adaptive rounding", "bias_correction": "bias correction",
                "input": "pixel input"}     # backends/pixel_input.pixel_starts


@dataclass(frozen=True)
class Start:
    """A torch model INT8 recipes quantize, and the methods that made it from the source's."""
    model: Any
    methods: dict[str, Any] = field(default_factory=dict)   # METHOD_WORDS' keys

    @property
    def label(self) -> str:
        """" + adaptive rounding + bias correction + pixel input", "" for the source's own
        model."""
        return "".join(f" + {METHOD_WORDS[name]}" for name in self.methods)


def starts(source, calibration, *, rounding: bool) -> list[Start]:
    """The bias-corrected model, then (with `rounding`) the adaptively rounded and corrected
    one. `source`: the ExportSource (its model, spec, FP32 ONNX export and work folder)."""
    corrected, correction = corrected_module(source.model, source.onnx(), source.spec,
                                             calibration)
    found = [Start(corrected, {"bias_correction": correction} if correction else {})]
    found_rounded = rounded_onnx(source, calibration) if rounding else None
    if found_rounded is not None:
        rounded, onnx, facts = found_rounded
        rounded_corrected, correction = corrected_module(rounded, onnx, source.spec, calibration)
        found.append(Start(rounded_corrected, {"rounding": facts,
                                               **({"bias_correction": correction}
                                                  if correction else {})}))
    return found


__all__ = ["Start", "starts", "METHOD_WORDS"]
