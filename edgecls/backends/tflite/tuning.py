"""The TFLite side of the INT8 recipe search (edgecls.search).

One recipe for every CPU target: full-integer INT8. XNNPACK widens int8 to 16 bits before it
multiplies, so no x86 CPU saturates it (measured: EfficientNet-Lite0 agrees with FP32 on the
same 91.7% of the held-out photo crops on AVX2 and VNNI machines) - what it loses is
ordinary quantization noise, and full-integer TFLite's remedy for that is QAT (--qat).

With --allow-float-ops the search may keep ops in float: the convolutions and fully
connected ops, ranked by how much keeping each ONE in float lowers KL against FP32 on the
calibration images (a probe costs about 0.3 s: calibration is done once). Such a model is
no longer full-integer: integer-only accelerators (Edge TPU, many NPUs) cannot run it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgecls import hardware, targets
from edgecls.backends.recipes import CandidateKeeper, Recipe, Remedy
from edgecls.backends.tflite import FORMAT
from edgecls.backends.tflite import quantize as q
from edgecls.backends.tflite.container import embed_spec
from edgecls.backends.tflite.quantize import quiet
from edgecls.backends.tflite.runtime import dequantize, quantize
from edgecls.errors import UnsupportedOptionError
from edgecls.metrics import kl_divergence
from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")

#: calibration images each one-op probe runs on
PROBE_IMAGES = 16


class TFLiteTuner(CandidateKeeper):
    container = FORMAT.container
    suffix = ".tflite"
    session_options: dict[str, Any] = {}
    measures_target = True        # XNNPACK's int8 numbers are the same on every CPU kind

    def __init__(self, float_model: bytes, spec: ModelSpec, calibration, target: targets.Target,
                 int8_io: str | None, allow_float_ops: bool,
                 bias_correction: dict[str, Any] | None = None):
        """`float_model`: the float TFLite model to quantize (made from the bias-corrected
        torch model when `bias_correction` says so)."""
        self.float_model, self.spec, self.calibration = float_model, spec, calibration
        self.bias_correction = bias_correction
        self.target, self.int8_io, self.allow_float_ops = target, int8_io, allow_float_ops
        samples = [x for batch in calibration.batches(spec) for x in batch]
        with quiet():
            self.quantizer = q.Int8Quantizer(float_model, samples, int8_io)

    def bases(self) -> list[Recipe]:
        corrected = " + bias correction" if self.bias_correction else ""
        return [Recipe(f"{self.target.name} full-integer{corrected}", {"float_ops": []})]

    def remedies(self, recipe: Recipe) -> list[Remedy]:
        if not self.allow_float_ops:
            log.info("full-integer TFLite keeps every op in INT8: where it misses its "
                     "tolerance, QAT (--qat) is the remedy, or --allow-float-ops")
            return []
        return [Remedy("float", self.sensitive,
                       lambda settings, op: {"float_ops": settings["float_ops"] + [op]})]

    def build(self, recipe: Recipe, out: Path, search: dict[str, Any] | None = None) -> None:
        kept = list(recipe.settings["float_ops"])
        with quiet():
            model, facts = self.quantizer.quantize(kept)
        leftover = q.float_ops(model, allow_boundary=self.int8_io is None)
        if leftover and not kept:  # never hand out a "full-integer" model with float islands
            raise UnsupportedOptionError(
                f"{self.spec.name}: ai-edge-quantizer left float ops in the INT8 model "
                f"({', '.join(leftover[:5])}); this architecture has no full-integer TFLite "
                "export yet")
        spec = self.spec.derive(tools=dict(self.spec.tools), notes=dict(self.spec.notes))
        spec.quantization = {**targets.record(self.target, hardware.cpu().int8_isa, True),
                             "recipe": recipe.label, **self.calibration.recipe(), **facts,
                             "float_ops": leftover if kept else [],
                             **({"bias_correction": self.bias_correction}
                                if self.bias_correction else {}),
                             **({"search": search} if search is not None else {})}
        Path(out).write_bytes(embed_spec(model, spec))

    def sensitive(self) -> list[str]:
        """Weighted ops, the one whose float version lowers KL most first."""
        from ai_edge_litert.interpreter import Interpreter

        # OpenCV: imaging.preprocess imports cv2
        from edgecls.imaging.preprocess import to_model_input

        pixels = self.calibration.images.subset(PROBE_IMAGES).crops(self.spec)
        x = to_model_input(pixels, self.spec.derive(input_dtype="float32"))

        def logits(model: bytes) -> np.ndarray:
            it = Interpreter(model_content=model, num_threads=hardware.cpu().cores)
            it.allocate_tensors()
            inp, out = it.get_input_details()[0], it.get_output_details()[0]
            rows = []
            for sample in x:
                it.set_tensor(inp["index"], quantize(sample[None], inp))
                it.invoke()
                rows.append(dequantize(it.get_tensor(out["index"]), out))
            return np.concatenate(rows)

        reference = logits(self.float_model)
        candidates = q.weighted_ops(self.float_model)
        log.info("probing %d ops one at a time (about 0.3 s each)", len(candidates))
        scores = {}
        for name in candidates:
            with quiet():
                model, _ = self.quantizer.quantize([name])
            scores[name] = float(np.mean(kl_divergence(reference, logits(model))))
        return sorted(candidates, key=lambda n: scores[n])


__all__ = ["TFLiteTuner"]
