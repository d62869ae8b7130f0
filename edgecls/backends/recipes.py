"""The contract between a backend's INT8 quantizer and the recipe search that drives it
(edgecls.search, a service above the backends): a backend's INT8 exporter returns a Tuner,
and the search builds, measures and chooses with it.

    tuner.bases()            -> [Recipe]   the target's recipe(s)
    tuner.remedies(recipe)   -> [Remedy]   ranked layers, and what changing one of them means
    tuner.fallbacks(recipe, tolerance)     (optional) whole recipes to try when the remedies
                             -> [Recipe]   fail, e.g. NNCF's accuracy-controlled quantization
    tuner.build(recipe, out) -> None       write the artifact for a recipe
    tuner.keep(candidate, out, record)     the chosen candidate, with the search in its spec
                                           (CandidateKeeper: the same for every backend)
    tuner.session_options    -> dict       how to open artifacts so that they compute the
                                           target's numbers (e.g. ORT's exact INT8 kernels)
    tuner.suffix             -> str        of the artifacts it writes
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Recipe:
    base: str                                   # the target recipe it started from
    settings: dict[str, Any]                    # backend-specific, recorded in the spec
    changed: tuple[tuple[str, str], ...] = ()   # (remedy, layer) in the order applied

    @property
    def label(self) -> str:
        counts: dict[str, int] = {}
        for remedy, _ in self.changed:
            counts[remedy] = counts.get(remedy, 0) + 1
        return " + ".join([self.base] + [f"{name} x{n}" for name, n in counts.items()])

    def with_layer(self, remedy: "Remedy", layer: str) -> "Recipe":
        return Recipe(self.base, remedy.apply(self.settings, layer),
                      self.changed + ((remedy.name, layer),))

    @property
    def graph(self) -> str:
        """What decides the graph the recipe builds: its settings without those that only
        change values in it (VALUES_ONLY). Recipes with the same graph run at the same
        speed."""
        import json
        return json.dumps({k: v for k, v in self.settings.items() if k not in VALUES_ONLY},
                          sort_keys=True, default=str)


#: settings that change only values in the graph, never its ops: "start", which model the
#: weights come from (rounded to nearest or adaptively, backends/adaround.py), and "ranges",
#: how the activation scales were set (backends/ranges.py). Timed apart, ONNX Runtime's
#: min / max and percentile-range models of EfficientNet-Lite0 measured 2.99 and 4.75 ms in
#: one search (AMD EPYC, 2 cores) and 4.96 / 4.92 ms side by side: the same 47 QLinearConv
#: and 9 QLinearAdd after ORT's fusions
VALUES_ONLY = frozenset({"start", "ranges"})


@dataclass(frozen=True)
class Remedy:
    name: str                                   # "u8u8 weights", "float"
    # the layers, most harmful first: called only when the search gets to this remedy
    # (a ranking may cost a probe per layer)
    rank: Callable[[], Sequence[str]]
    apply: Callable[[dict[str, Any], str], dict[str, Any]]


class Tuner(Protocol):
    suffix: str                                 # of the artifacts it builds
    session_options: dict[str, Any]
    measures_target: bool                       # can this CPU compute the target's numbers?

    def bases(self) -> list[Recipe]: ...
    def remedies(self, recipe: Recipe) -> list[Remedy]: ...
    def build(self, recipe: Recipe, out: Path, search: dict[str, Any] | None = None) -> None:
        """Write the artifact; `search` (what export_int8 found) goes into its spec."""

    def keep(self, candidate: Path, out: Path, search: dict[str, Any]) -> None:
        """Write the measured candidate to `out` with `search` added to its spec."""


class CandidateKeeper:
    """Tuner.keep(), one implementation for every backend: the measured candidate itself is
    copied to `out` with `search` added to its spec, never rebuilt (a rebuild could differ
    from what was measured). A backend names its container module (its FORMAT.container,
    an edgecls.backends.base.Container), imported only when a candidate is kept."""
    container: ClassVar[str]

    def keep(self, candidate: Path, out: Path, search: dict[str, Any]) -> None:
        container = importlib.import_module(self.container)
        spec = container.read_spec(candidate)
        spec.quantization = {**spec.quantization, "search": search}
        container.copy_with_spec(candidate, out, spec)


@dataclass
class HeldOut:
    """The images a search is judged on, and the FP32 reference's answers on them."""
    name: str
    pixels: np.ndarray                          # N x H x W x 3 uint8 crops
    reference: np.ndarray                       # reference logits
    labels: np.ndarray | None = None
    images: Any = None                          # the ImageSet, for the final parity check

    def __len__(self) -> int:
        return len(self.pixels)

    def ids(self) -> list[str]:
        """Short content ids of the images (as the calibration ids are made): parity finds
        verification images that also selected the recipe by them, whatever their names."""
        return [] if self.images is None else sorted(i.digest()[:12] for i in self.images.items)


__all__ = ["Recipe", "Remedy", "Tuner", "CandidateKeeper", "HeldOut"]
