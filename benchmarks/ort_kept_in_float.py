"""ONNX Runtime INT8 with chosen layers kept in float: KL to FP32 on the verification photos.

    python benchmarks/ort_kept_in_float.py FP32.onnx [NODE ...] [--no-bias-correction]

Quantizes the FP32 ONNX export (e.g. `edgecls export efficientnet_lite0 --to onnx`) with the
x86-vnni recipe as it is (no search), once with the recipe's own float layers and once with
NODE ... kept in float too, calibrated on the built-in calibration photos, and prints the mean
KL(FP32 || INT8) on a third of the verification crops (117 of 351: photos that neither
calibrated nor chose anything) for each.

Why it exists (issue 18, AMD EPYC with VNNI): torch fake-quant says EfficientNet-Lite0's first
two depthwise convolutions hold 40% of its weight-rounding error, yet keeping them
(node_Conv_775, node_Conv_870) in float made ONNX Runtime's INT8 ten times further from FP32
(KL 0.025 -> 0.235, with or without bias correction). Not explained yet.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from edgecls.backends.onnx.quantize import OrtQuantizer
from edgecls.formats import open_session, read_spec
from edgecls.imaging.datasets import CalibrationSet, load_part
from edgecls.imaging.preprocess import to_model_input
from edgecls.metrics import kl_divergence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path)
    parser.add_argument("nodes", nargs="*", help="ONNX node names to keep in float as well")
    parser.add_argument("--no-bias-correction", action="store_true")
    args = parser.parse_args()
    spec = read_spec(args.fp32)
    calibration = CalibrationSet.from_source("photos", spec, size=300)
    pixels = load_part("photos", spec, "verify").crops(spec)[::3]

    def logits(path: Path) -> np.ndarray:
        with open_session(path, device="cpu") as session:
            return np.concatenate([session.run(to_model_input(pixels[i:i + 32], spec))
                                   for i in range(0, len(pixels), 32)])

    reference = logits(args.fp32)
    for extra in ([], args.nodes):
        with tempfile.TemporaryDirectory(prefix="edgecls-kept-") as tmp:
            work = Path(tmp)
            quantizer = OrtQuantizer(args.fp32, spec, calibration, work, target="x86-vnni",
                                     bias_correction=not args.no_bias_correction)
            settings = quantizer.default_settings()
            settings["kept_in_float"] = list(settings.get("kept_in_float", [])) + extra
            out = work / "int8.onnx"
            quantizer.quantize(settings, out, spec.derive(precision="int8"))
            kept = read_spec(out).quantization["kept_in_float"]
            kl = float(kl_divergence(reference, logits(out)).mean())
            print(f"kept in float {', '.join(kept)}: mean KL {kl:.4f} on {len(pixels)} "
                  "verification crops")


if __name__ == "__main__":
    main()
