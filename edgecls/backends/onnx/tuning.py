"""The ONNX Runtime side of the INT8 recipe search (edgecls.search): candidates, remedies and
how to measure them so that the numbers are the target's.

Base recipes: each start (the FP32 model; its adaptively rounded twin when searching) with
each activation range the quantizer offers (ORT's min / max; quantiles of the calibration
images' extremes, backends/ranges.py). Remedies, in the order the target's recipe lists them:
  u8u8 weights  the layers the VPMADDUBSW emulation (saturation.py) ranks first get u8
                weights, which ORT runs on its exact U8U8 GEMM: the saturation goes, the
                layer stays INT8 (measured on EfficientNet-Lite0, AMD EPYC AVX2: 4 layers
                took agreement with FP32 from 72.9% to 95.8% at 1.42x FP32 speed, where
                keeping layers in float never passed 81%)
  float         the layers that lose most when quantized alone (one-layer probes on the
                calibration images, KL against FP32) stay in float

Where this CPU cannot run the target's kernels: a non-saturating target (x86-vnni, arm64)
is measured with ORT's exact INT8 kernels (session.x64quantprecision=1 on x86 without VNNI,
which computes what VNNI and ARM compute); a saturation-guarded target made on a CPU that
does not saturate gets the emulation's verdict without a search, and its spec says so.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgecls import hardware, saturation, targets
from edgecls.backends.onnx import FORMAT
from edgecls.backends.onnx.quantize import OrtQuantizer, weighted_layers
from edgecls.backends.onnx.runtime import OnnxRuntimeSession as open_session
from edgecls.backends.recipes import CandidateKeeper, Recipe, Remedy
from edgecls.metrics import kl_divergence
from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")

#: emulated share of a layer's output lost to clamping above which it is a remedy candidate
SATURATION_FLOOR = 1e-3
#: ... and above which a layer gets u8 weights unmeasured (where saturation cannot be measured)
SATURATION_BLIND = 5e-3
#: calibration images the one-layer float probes run on
PROBE_IMAGES = 16


class OnnxTuner(CandidateKeeper):
    container = FORMAT.container
    suffix = ".onnx"

    def __init__(self, fp32_path: Path, spec: ModelSpec, calibration, target: targets.Target,
                 work: Path, *, calib_method: str | None = None,
                 exclude: Sequence[str] | None = None,
                 rounded: tuple[Path, dict[str, Any]] | None = None):
        """`rounded`: (the FP32 ONNX export of the adaptively rounded model, what its spec
        records), a second start: one base recipe each."""
        self.fp32_path, self.spec, self.calibration, self.target = fp32_path, spec, calibration, target
        self.quantizers = [OrtQuantizer(fp32_path, spec, calibration, work, target=target.name,
                                        calib_method=calib_method, exclude=exclude)]
        if rounded is not None:
            (Path(work) / "rounded").mkdir(exist_ok=True)
            self.quantizers.append(OrtQuantizer(
                fp32_path, spec, calibration, Path(work) / "rounded", target=target.name,
                calib_method=calib_method, exclude=exclude, rounded=rounded))
        self.quantizer = self.quantizers[0]
        self.work = Path(work)
        self.isa = isa = hardware.cpu().int8_isa
        # a target that never saturates (x86-vnni, arm64) computes exact integer products, which
        # any CPU can reproduce: natively, or with ORT's exact kernels where this CPU saturates;
        # a saturation-guarded target is measured only where saturation happens
        self.measures_target = (not target.saturation_safe) or targets.is_native(target, isa)
        self.session_options: dict[str, Any] = (
            {"precise_int8": True} if isa in hardware.SATURATING and not target.saturation_safe
            else {})
        self._ranked: list[saturation.LayerSaturation] | None = None

    # -- the search's side ----------------------------------------------------------------
    def bases(self) -> list[Recipe]:
        """Each start with each of its quantizer's activation ranges (backends/ranges.py)."""
        found = []
        for start, quantizer in enumerate(self.quantizers):
            for label, settings in quantizer.bases(start):
                base = f"{self.target.name} {label}"
                if "u8u8 weights" in quantizer.recipe.remedies and not self.measures_target:
                    settings["u8u8_weights"] = self.saturating(SATURATION_BLIND)
                    base += (f", u8 weights on {len(settings['u8u8_weights'])} "
                             "emulated-saturating layers")
                found.append(Recipe(base, settings))
        return found

    def remedies(self, recipe: Recipe) -> list[Remedy]:
        if not self.measures_target:
            return []
        found = []
        for name in self.quantizer.recipe.remedies:
            if name == "u8u8 weights":
                found.append(Remedy(name, lambda s=recipe.settings: self.saturating(SATURATION_FLOOR, s),
                                    _add("u8u8_weights")))
            elif name == "float":
                found.append(Remedy(name, lambda s=recipe.settings: self.sensitive(s),
                                    _add("kept_in_float")))
        return found

    def build(self, recipe: Recipe, out: Path, search: dict[str, Any] | None = None,
              spec: ModelSpec | None = None) -> None:
        spec = spec if spec is not None else self.spec.derive(format="onnx", precision="int8",
                                                              tools=dict(self.spec.tools))
        spec.quantization = {**targets.record(self.target, self.isa, self.measures_target),
                             "recipe": recipe.label,
                             **({"search": search} if search is not None else {})}
        self.quantizers[recipe.settings.get("start", 0)].quantize(recipe.settings, out, spec)

    # -- rankings ---------------------------------------------------------------------------
    def saturating(self, floor: float, settings: dict[str, list[str]] | None = None) -> list[str]:
        """GEMM layers ranked by emulated VPMADDUBSW clamping, above `floor`."""
        if self._ranked is None:
            self._ranked = saturation.rank_layers(self.fp32_path,
                                                  self.calibration.batches(self.spec, 8))
        skip = set((settings or {}).get("kept_in_float", []))
        return [r.node for r in self._ranked if r.relative_error > floor and r.node not in skip]

    def sensitive(self, settings: dict[str, Any]) -> list[str]:
        """Layers with weights (depthwise convolutions included: EfficientNet-Lite0's first
        two hold 40% of its weight-rounding error) ranked by how much quantizing each ALONE
        moves the logits (KL against FP32 on calibration images, through the kernels the
        target runs)."""
        # OpenCV: imaging.preprocess imports cv2
        from edgecls.imaging.preprocess import to_model_input

        fixed = set(settings.get("kept_in_float", [])) | set(settings.get("u8u8_weights", []))
        candidates = [n for n in weighted_layers(self.fp32_path) if n not in fixed]
        pixels = self.calibration.images.subset(PROBE_IMAGES).crops(self.spec)
        x = to_model_input(pixels, self.spec)
        with open_session(self.fp32_path, device="cpu") as fp32:
            reference = fp32.run(x)
        log.info("probing %d layers one at a time (a second or two each)", len(candidates))
        scores = {}
        probe = self.work / "probe.onnx"
        for name in candidates:
            alone = {"only": [name], "u8u8_weights": list(settings.get("u8u8_weights", [])),
                     "ranges": settings.get("ranges", "minmax")}
            self.quantizers[settings.get("start", 0)].quantize(
                alone, probe, self.spec.derive(precision="int8"))
            with open_session(probe, device="cpu", **self.session_options) as session:
                scores[name] = float(np.mean(kl_divergence(reference, session.run(x))))
        return sorted(candidates, key=lambda n: -scores[n])


def _add(key: str):
    def apply(settings: dict[str, list[str]], layer: str) -> dict[str, list[str]]:
        return {**settings, key: list(settings.get(key, [])) + [layer]}
    return apply


__all__ = ["OnnxTuner"]
