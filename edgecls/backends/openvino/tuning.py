"""The OpenVINO side of the INT8 recipe search (edgecls.search).

Candidates: the target's NNCF overflow fixes (x86-avx2: first_layer_only, and enable -
NNCF's 7-bit weights), then NNCF's own accuracy-controlled quantization when none meets the
tolerance (why not per-layer remedies: see quantize.py).

OpenVINO has no switch that makes an AVX2 CPU compute VNNI numbers, so a target is measured
only on its own kind of CPU; oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA=AVX2) makes a VNNI machine
one of the AVX2 kind for this purpose (hardware.runtime_isa).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgecls import hardware, targets
from edgecls.backends.openvino import FORMAT
from edgecls.backends.openvino import quantize as q
from edgecls.backends.recipes import CandidateKeeper, Recipe, Remedy
from edgecls.spec import ModelSpec

class OpenVINOTuner(CandidateKeeper):
    container = FORMAT.container
    suffix = ".xml"
    session_options: dict[str, Any] = {}

    def __init__(self, model, source, spec: ModelSpec, calibration, target: targets.Target,
                 options, finish: Callable[[Any, ModelSpec, Path], None]):
        self.model, self.source, self.spec, self.calibration = model, source, spec, calibration
        self.target, self.options, self.finish = target, options, finish
        self.recipe = q.RECIPES[target.name]
        self.isa = hardware.runtime_isa("openvino")
        self.measures_target = targets.is_native(target, self.isa)

    def bases(self) -> list[Recipe]:
        scope = list(self.options.ignored_scope or ()) or q.first_and_last_layers(self.model)
        if scope == ["none"]:
            scope = []
        return [Recipe(f"{self.target.name} overflow fix {fix}",
                       {"ignored": scope, "overflow_fix": fix})
                for fix in self.recipe.overflow_fixes]

    def remedies(self, recipe: Recipe) -> list[Remedy]:
        return []

    def fallbacks(self, recipe: Recipe, tolerance) -> list[Recipe]:
        """NNCF's quantize_with_accuracy_control, to the search's tolerance."""
        if not self.recipe.accuracy_control:
            return []
        points = (tolerance.max_top1_drop if tolerance.max_top1_drop is not None
                  else 100.0 * (1.0 - tolerance.min_decisive_agreement))
        start = self.bases()[0]
        return [Recipe(f"{start.base} + NNCF accuracy control",
                       {**start.settings, "accuracy_control": True, "max_drop": points})]

    def build(self, recipe: Recipe, out: Path, search: dict[str, Any] | None = None) -> None:
        validation = (self.source.held_out(self.calibration)
                      if recipe.settings.get("accuracy_control") else None)
        quantized = q.nncf_quantize(self.model.clone(), self.spec, self.calibration,
                                    recipe.settings, preset=self.options.preset or "performance",
                                    calib_method=self.options.calib_method,
                                    validation=validation)
        spec = self.spec.derive(tools=dict(self.spec.tools), notes=dict(self.spec.notes))
        spec.quantization = {
            **targets.record(self.target, self.isa, self.measures_target), "recipe": recipe.label,
            **q.describe(quantized, self.calibration, recipe.settings,
                         self.options.preset or "performance", self.options.calib_method),
            **({"search": search} if search is not None else {})}
        self.finish(quantized, spec, out)


__all__ = ["OpenVINOTuner"]
