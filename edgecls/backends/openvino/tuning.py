"""The OpenVINO side of the INT8 recipe search (edgecls.search).

Candidates: the target's NNCF overflow fixes (x86-avx2: first_layer_only, and enable -
NNCF's 7-bit weights), each from every start (the FP32 model, and the adaptively rounded
one: edgecls.backends.adaround), then NNCF's own accuracy-controlled quantization when none
meets the tolerance (why not per-layer remedies: see quantize.py).

The rounded start's layers kept in float get the FP32 model's weights back before NNCF runs
(q.with_float_weights): only the layers NNCF quantizes carry AdaRound's choice, as in the
ONNX Runtime path.

For a target that never saturates (q.QDQ_TARGETS) the search also converts ONNX Runtime's
QDQ models of both starts, with each of their activation ranges (backends/ranges.py;
OpenVINO runs Q/DQ pairs as its own FakeQuantize): on
EfficientNet-Lite0 they are four times closer to FP32 than NNCF's from the same start (the
numbers at q.QDQ_TARGETS). The search measures both kinds and keeps the better.

OpenVINO has no switch that makes an AVX2 CPU compute VNNI numbers, so a target is measured
only on its own kind of CPU; oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA=AVX2) makes a VNNI machine
one of the AVX2 kind for this purpose (hardware.runtime_isa).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgecls import hardware, targets
from edgecls.backends.openvino import FORMAT
from edgecls.backends.openvino import quantize as q
from edgecls.backends.recipes import CandidateKeeper, Recipe, Remedy
from edgecls.spec import ModelSpec

@dataclass(frozen=True)
class Start:
    """An FP32 ov.Model the recipes quantize; `rounding`: what the spec records when its
    weights were adaptively rounded (None: the source's own weights)."""
    model: Any
    rounding: dict[str, Any] | None = None


class OpenVINOTuner(CandidateKeeper):
    container = FORMAT.container
    suffix = ".xml"
    session_options: dict[str, Any] = {}

    def __init__(self, starts: list[Start], source, spec: ModelSpec, calibration,
                 target: targets.Target, options,
                 finish: Callable[[Any, ModelSpec, Path], None], qdq: list | None = None):
        """`starts[0]`: the FP32 model (whose layer names the ignored scope uses). `qdq`:
        ONNX Runtime quantizers (OrtQuantizer) whose QDQ models are candidates too."""
        self.starts, self.source, self.spec, self.calibration = starts, source, spec, calibration
        self.model = starts[0].model
        self.qdq = list(qdq or [])
        self.target, self.options, self.finish = target, options, finish
        self.recipe = q.RECIPES[target.name]
        self.isa = hardware.runtime_isa("openvino")
        self.measures_target = targets.is_native(target, self.isa)

    def bases(self) -> list[Recipe]:
        scope = list(self.options.ignored_scope or ()) or q.first_and_last_layers(self.model)
        if scope == ["none"]:
            scope = []
        nncf = [Recipe(f"{self.target.name} NNCF overflow fix {fix}"
                       + (" + adaptive rounding" if start.rounding else ""),
                       {"ignored": scope, "overflow_fix": fix, "start": index})
                for index, start in enumerate(self.starts) for fix in self.recipe.overflow_fixes]
        return nncf + [Recipe(f"{self.target.name} ONNX Runtime QDQ {label}",
                              {**settings, "quantizer": "onnxruntime"})
                       for index, ort in enumerate(self.qdq)
                       for label, settings in ort.bases(index)]

    def remedies(self, recipe: Recipe) -> list[Remedy]:
        return []

    def fallbacks(self, recipe: Recipe, tolerance) -> list[Recipe]:
        """NNCF's quantize_with_accuracy_control, to the search's tolerance."""
        if not self.recipe.accuracy_control:
            return []
        points = (tolerance.max_top1_drop if tolerance.max_top1_drop is not None
                  else 100.0 * (1.0 - tolerance.min_decisive_agreement))
        # from the FP32 start: the layers NNCF's search returns to float keep their own weights
        first = self.bases()[0]
        return [Recipe(f"{first.base} + NNCF accuracy control",
                       {**first.settings, "accuracy_control": True, "max_drop": points})]

    def build(self, recipe: Recipe, out: Path, search: dict[str, Any] | None = None) -> None:
        quantize = (self._qdq if recipe.settings.get("quantizer") == "onnxruntime"
                    else self._nncf)
        quantized, facts = quantize(recipe.settings, out)
        spec = self.spec.derive(tools=dict(self.spec.tools), notes=dict(self.spec.notes))
        spec.quantization = {
            **targets.record(self.target, self.isa, self.measures_target), "recipe": recipe.label,
            **facts, **({"search": search} if search is not None else {})}
        self.finish(quantized, spec, out)

    def _nncf(self, settings: dict[str, Any], out: Path) -> tuple[Any, dict[str, Any]]:
        """NNCF's INT8 ov.Model for the recipe, and what the spec records of it."""
        start = self.starts[settings.get("start", 0)]
        model = start.model.clone()
        if start.rounding:
            q.with_float_weights(model, self.model, settings.get("ignored", []))
        validation = (self.source.held_out(self.calibration)
                      if settings.get("accuracy_control") else None)
        preset = self.options.preset or "performance"
        quantized = q.nncf_quantize(model, self.spec, self.calibration, settings,
                                    preset=preset, calib_method=self.options.calib_method,
                                    validation=validation)
        return quantized, {**q.describe(quantized, self.calibration, settings, preset,
                                        self.options.calib_method),
                           **({"rounding": start.rounding} if start.rounding else {})}

    def _qdq(self, settings: dict[str, Any], out: Path) -> tuple[Any, dict[str, Any]]:
        """ONNX Runtime's QDQ model for the recipe, converted: Q/DQ pairs become OpenVINO's
        FakeQuantize, which its CPU plugin runs in int8."""
        import openvino as ov

        quantizer = self.qdq[settings["start"]]
        qdq = out.with_name(out.stem + ".qdq.onnx")
        try:
            quantizer.quantize(settings, qdq)
            return ov.convert_model(str(qdq)), {**quantizer.facts(settings),
                                               "converted_by": "openvino"}
        finally:
            qdq.unlink(missing_ok=True)


__all__ = ["OpenVINOTuner", "Start"]
