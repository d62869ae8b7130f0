"""The ExecuTorch side of the INT8 recipe search (edgecls.search).

Recipes as rows:
  base      the XNNPACK quantizer with the asked-for activation observer (global min/max
            unless --calib-method histogram), --keep-float nodes in float
  float     remedy: conv / linear nodes kept in float one at a time (the XNNPACK quantizer
            has no per-module "None" config in 1.4, so a node filter leaves them out), in
            this order: the first convolution and the classifier (the layers every PTQ tool
            here found most sensitive), then the rest from the input on. No one-layer probes:
            each candidate is a full prepare / calibrate / convert / lower (seconds to tens
            of seconds), so probing every layer would cost more than the search itself.
  fallback  the other activation observer, when the remedies do not meet the tolerance

XNNPACK's signed INT8 kernels widen to 16 bits before they multiply-add (and its VNNI
kernels compensate the +128 offset exactly), so a program computes the same numbers on
AVX2, VNNI and ARM CPUs: every target is measured here (measures_target), and the session
never needs a guard (saturating_int8_kernels is False).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgecls import hardware, targets
from edgecls.backends.executorch import FORMAT, OBSERVERS
from edgecls.backends.executorch import program
from edgecls.backends.executorch import quantize as ex
from edgecls.backends.recipes import CandidateKeeper, Recipe, Remedy
from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")


class ExecuTorchTuner(CandidateKeeper):
    container = FORMAT.container
    suffix = ".pte"
    session_options: dict[str, Any] = {}
    measures_target = True

    def __init__(self, model, spec: ModelSpec, calibration, target: targets.Target, *,
                 observer: str = "minmax", keep_float: tuple[str, ...] = (),
                 bias_correction: dict[str, Any] | None = None):
        """`model`: the torch model to quantize (bias-corrected when `bias_correction` says
        so; the reference stays the source's own)."""
        self.model, self.spec, self.calibration, self.target = model, spec, calibration, target
        self.bias_correction = bias_correction
        self.observer, self.keep_float = observer, keep_float
        self._nodes: list[str] | None = None

    def nodes(self) -> list[str]:
        if self._nodes is None:
            self._nodes = ex.weighted_nodes(self.model, self.spec)
        return self._nodes

    def bases(self) -> list[Recipe]:
        label = f"{self.target.name} xnnpack {self.observer}"
        if self.bias_correction:
            label += " + bias correction"
        if self.keep_float:
            label += f", {len(self.keep_float)} node(s) in float"
        return [Recipe(label, {"observer": self.observer, "keep_float": list(self.keep_float)})]

    def remedies(self, recipe: Recipe) -> list[Remedy]:
        def ranked() -> list[str]:
            nodes = self.nodes()
            order = nodes[:1] + nodes[-1:] + nodes[1:-1]
            kept = set(recipe.settings["keep_float"])
            return [n for n in order if n not in kept]

        return [Remedy("float", ranked, lambda settings, node: {
            **settings, "keep_float": settings["keep_float"] + [node]})]

    def fallbacks(self, recipe: Recipe, tolerance) -> list[Recipe]:
        other = next(o for o in OBSERVERS if o != self.observer)
        return [Recipe(f"{self.target.name} xnnpack {other}",
                       {"observer": other, "keep_float": list(self.keep_float)})]

    def build(self, recipe: Recipe, out: Path, search: dict[str, Any] | None = None) -> None:
        edge, facts, recipe_facts = ex.int8_program(
            self.model, self.spec, self.calibration, recipe.settings["observer"],
            recipe.settings["keep_float"])
        spec = self.spec.derive(tools=dict(self.spec.tools), notes=dict(self.spec.notes))
        spec.notes["executorch"] = facts
        spec.quantization = {**targets.record(self.target, hardware.cpu().int8_isa, True),
                             "recipe": recipe.label, **recipe_facts,
                             **({"bias_correction": self.bias_correction}
                                if self.bias_correction else {}),
                             **({"search": search} if search is not None else {})}
        program.warn_if_partial(spec.name, facts)
        Path(out).write_bytes(program.finish(edge, spec))


__all__ = ["ExecuTorchTuner"]
