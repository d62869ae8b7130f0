"""The TFLite side of the INT8 recipe search (edgecls.search).

Full-integer INT8 for every CPU target, one base recipe per start (backends/onnx/
torch_start.py: the bias-corrected model and, when the search runs, the adaptively rounded
and corrected one) and way of setting activation ranges (global min / max, quantiles of the
calibration images' own extremes: backends/ranges.py) - the same graph at the same speed,
so the search keeps the one closest to FP32 on the selection images. XNNPACK widens int8
to 16 bits before it multiplies, so no x86 CPU saturates it (measured: EfficientNet-Lite0
agrees with FP32 on the same 91.7% of the held-out photo crops on AVX2 and VNNI machines) -
what it loses is ordinary quantization noise, and full-integer TFLite's remedy for that is
QAT (--qat).

With --allow-float-ops the search may keep ops in float: the convolutions and fully
connected ops, ranked by how much keeping each ONE in float lowers KL against FP32 on the
calibration images (a probe costs about 0.3 s: calibration is done once). Such a model is
no longer full-integer: integer-only accelerators (Edge TPU, many NPUs) cannot run it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgecls import hardware, targets
from edgecls.backends import pixel_input
from edgecls.backends import ranges as activation_ranges
from edgecls.backends.onnx.torch_start import Start
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

    def __init__(self, starts: Sequence[tuple[Start, bytes]], spec: ModelSpec, calibration,
                 target: targets.Target, int8_io: str | None, allow_float_ops: bool):
        """`starts`: the torch models recipes start from (edgecls.backends.onnx.torch_start)
        with the float TFLite model each converted to; one base recipe per way of setting
        activation ranges each (bases())."""
        self.starts, self.spec, self.calibration = list(starts), spec, calibration
        self.target, self.int8_io, self.allow_float_ops = target, int8_io, allow_float_ops
        self._quantizers: dict[int, q.Int8Quantizer] = {}
        self._samples: list[np.ndarray] | None = None

    def quantizer(self, start: int) -> q.Int8Quantizer:
        """The start's quantizer, calibrated when a recipe first needs it."""
        if start not in self._quantizers:
            if self._samples is None:     # preprocessed once for every start
                self._samples = [x for batch in self.calibration.batches(self.spec) for x in batch]
            # a start that takes pixels - 128 (pixel_input.pixel_starts) has its input's
            # range given, not measured
            pixels = "input" in self.starts[start][0].methods
            with quiet():
                self._quantizers[start] = q.Int8Quantizer(
                    self.starts[start][1], self._samples, self.int8_io,
                    input_range=pixel_input.input_range(self.spec) if pixels else None)
        return self._quantizers[start]

    def bases(self) -> list[Recipe]:
        """Each start with each way of setting activation ranges (backends/ranges.py)."""
        return [Recipe(f"{self.target.name} full-integer{start.label}"
                       f"{activation_ranges.label(ranges)}",
                       {"start": i, "ranges": ranges, "float_ops": []})
                for i, (start, _) in enumerate(self.starts)
                for ranges in activation_ranges.ACTIVATION_RANGES]

    def remedies(self, recipe: Recipe) -> list[Remedy]:
        if not self.allow_float_ops:
            log.info("full-integer TFLite keeps every op in INT8: where it misses its "
                     "tolerance, QAT (--qat) is the remedy, or --allow-float-ops")
            return []
        start, ranges = recipe.settings["start"], recipe.settings["ranges"]
        return [Remedy("float", lambda: self.sensitive(start, ranges),
                       lambda settings, op: {**settings,
                                             "float_ops": settings["float_ops"] + [op]})]

    def build(self, recipe: Recipe, out: Path, search: dict[str, Any] | None = None) -> None:
        kept = list(recipe.settings["float_ops"])
        start = self.starts[recipe.settings["start"]][0]
        with quiet():
            model, facts = self.quantizer(recipe.settings["start"]).quantize(
                kept, recipe.settings["ranges"])
        leftover = q.float_ops(model, allow_boundary=self.int8_io is None)
        if leftover and not kept:  # never hand out a "full-integer" model with float islands
            raise UnsupportedOptionError(
                f"{self.spec.name}: ai-edge-quantizer left float ops in the INT8 model "
                f"({', '.join(leftover[:5])}); this architecture has no full-integer TFLite "
                "export yet")
        spec = self.spec.derive(tools=dict(self.spec.tools), notes=dict(self.spec.notes))
        spec.quantization = {**targets.record(self.target, hardware.cpu().int8_isa, True),
                             "recipe": recipe.label, **self.calibration.recipe(), **facts,
                             "float_ops": leftover if kept else [], **start.methods,
                             **({"search": search} if search is not None else {})}
        Path(out).write_bytes(embed_spec(model, spec))

    def sensitive(self, start: int = 0, ranges: str = "minmax") -> list[str]:
        """Weighted ops of the start's model, the one whose float version lowers KL most
        first."""
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

        float_model = self.starts[start][1]
        reference = logits(float_model)
        candidates = q.weighted_ops(float_model)
        log.info("probing %d ops one at a time (about 0.3 s each)", len(candidates))
        scores = {}
        for name in candidates:
            with quiet():
                model, _ = self.quantizer(start).quantize([name], ranges)
            scores[name] = float(np.mean(kl_divergence(reference, logits(model))))
        return sorted(candidates, key=lambda n: scores[n])


__all__ = ["TFLiteTuner"]
