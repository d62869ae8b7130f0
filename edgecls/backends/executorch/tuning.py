"""The ExecuTorch side of the INT8 recipe search (edgecls.search).

Recipes as rows:
  base      the XNNPACK quantizer with the asked-for activation observer (global min/max
            unless --calib-method histogram), --keep-float nodes in float: one per start
            (backends/onnx/torch_start.py: the bias-corrected model and, when searching, the
            adaptively rounded and corrected one) and, with the min / max observer, per way
            of setting activation ranges from the images' own extremes (backends/ranges.py)
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
never needs a guard (saturating_int8_kernels is False). Read in google/XNNPACK (75db3c0):
src/configs/gemm-config.c gives an AVX2 CPU xnn_qs8_qc8w_{gemm,igemm}_minmax_fp32_ukernel_
{1,3}x8c8__avx2, made from src/qs8-gemm/MRx8c8-avx2.c.in / src/qs8-igemm/MRx8c8-avx2.c.in:
both operands sign-extended with vpmovsxbw (_mm256_cvtepi8_epi16), then vpmaddwd
(_mm256_madd_epi16: int16 x int16 pairs summed exactly into int32) - no vpmaddubsw, so
nothing saturates (|a1*w1 + a2*w2| <= 2 * 128 * 128 fits in int32). Depthwise convolutions
on AVX2 (src/configs/dwconv-config.c: qs8_qc8w_dwconv ..._avx2_mul32) widen to int32 and
use vpmulld. The one vpmaddubsw of that path (src/qs8-packw/gen/
qs8-packw-x8c8-gemm-goi-avx2-madd.c) multiplies the weights by ones when packing them
(a weight-sum of two bytes, never near 32767). AVX512-VNNI / AVX-VNNI kernels flip the
activations' sign bit (xor 0x80) for vpdpbusd, a 32-bit accumulation, and the packing
(xnn_pack_qs8_to_qu8_*) folds the +128 into the bias.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from edgecls import hardware, targets
from edgecls.backends import ranges as activation_ranges
from edgecls.backends.executorch import FORMAT, OBSERVERS
from edgecls.backends.executorch import program
from edgecls.backends.executorch import quantize as ex
from edgecls.backends.onnx.torch_start import Start
from edgecls.backends.recipes import CandidateKeeper, Recipe, Remedy
from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")


class ExecuTorchTuner(CandidateKeeper):
    container = FORMAT.container
    suffix = ".pte"
    session_options: dict[str, Any] = {}
    measures_target = True

    def __init__(self, starts: Sequence[Start], spec: ModelSpec, calibration,
                 target: targets.Target, *, observer: str = "minmax",
                 keep_float: tuple[str, ...] = ()):
        """`starts`: the torch models recipes start from (edgecls.backends.onnx.torch_start:
        bias-corrected, and adaptively rounded when searching), one base recipe each; the
        reference stays the source's own model."""
        self.starts, self.spec, self.calibration = list(starts), spec, calibration
        self.target, self.observer, self.keep_float = target, observer, keep_float
        self._nodes: list[str] | None = None

    def nodes(self) -> list[str]:
        """The conv / linear nodes (every start has the same graph)."""
        if self._nodes is None:
            self._nodes = ex.weighted_nodes(self.starts[0].model, self.spec)
        return self._nodes

    def _recipe(self, start: int, observer: str, ranges: str = "minmax") -> Recipe:
        label = (f"{self.target.name} xnnpack {observer}{self.starts[start].label}"
                 f"{activation_ranges.label(ranges)}")
        if self.keep_float:
            label += f", {len(self.keep_float)} node(s) in float"
        return Recipe(label, {"start": start, "observer": observer, "ranges": ranges,
                              "keep_float": list(self.keep_float)})

    def bases(self) -> list[Recipe]:
        """Each start with each activation range its observer allows (quantiles need the
        per-image extremes only the min / max observer gives)."""
        choices = activation_ranges.ACTIVATION_RANGES if self.observer == "minmax" else ("minmax",)
        return [self._recipe(i, self.observer, ranges)
                for i in range(len(self.starts)) for ranges in choices]

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
        return [self._recipe(recipe.settings["start"], other)]

    def build(self, recipe: Recipe, out: Path, search: dict[str, Any] | None = None) -> None:
        start = self.starts[recipe.settings["start"]]
        edge, facts, recipe_facts = ex.int8_program(
            start.model, self.spec, self.calibration, recipe.settings["observer"],
            recipe.settings["keep_float"], recipe.settings.get("ranges", "minmax"))
        spec = self.spec.derive(tools=dict(self.spec.tools), notes=dict(self.spec.notes))
        spec.notes["executorch"] = facts
        spec.quantization = {**targets.record(self.target, hardware.cpu().int8_isa, True),
                             "recipe": recipe.label, **recipe_facts, **start.methods,
                             **({"search": search} if search is not None else {})}
        program.warn_if_partial(spec.name, facts)
        Path(out).write_bytes(program.finish(edge, spec))


__all__ = ["ExecuTorchTuner"]
