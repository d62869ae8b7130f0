"""Activation ranges from each calibration image's own extremes: what the INT8 searches of
ONNX Runtime (and the OpenVINO IR converted from its QDQ models), full-integer TFLite and
ExecuTorch offer besides their quantizer's own min / max.

Global min / max lets one image's outlier widen a tensor's whole range, and every other
image then gets fewer levels; a quantile of the images' own minima and maxima clips the
rarest images instead. Each quantizer collects, per tensor it quantizes, the minimum and
maximum on each calibration image (ONNX Runtime: backends/onnx/quantize.py; TFLite:
backends/tflite/quantize.py; ExecuTorch: its PT2E observers, backends/executorch/quantize.py)
and sets the range from them as a row below says. Which row is best is the model's: each
search builds every row and measures it on the selection images. Measured
(EfficientNet-Lite0, real weights, adaptively rounded and bias-corrected, AMD EPYC with VNNI;
selection = the 72 selection crops, verification = the 351 verification crops, neither
calibrated anything):

    ONNX Runtime u8/s8   selection KL   verification KL
    min / max            0.0053         0.0105
    p90                  0.0048         0.0075
    p75                  0.0039         0.0069
    (p50: 0.0044 / 0.0058 - not offered: the selection crops rank it below p75)

Full-integer TFLite (pixel input, nearest start): min / max 0.0149 / 0.0211, p90 0.0141 /
0.0188; the mean of the images' extremes was worse there (0.026 / 0.032). ExecuTorch XNNPACK
(pixel input, adaptively rounded start), selection KL: min / max 0.0141, p90 0.0116, p75
0.0105, chosen; verification 0.014 (min / max: 0.019, measured a session earlier).
"""
from __future__ import annotations

import numpy as np

#: name -> (what the spec says, (quantile of the images' minima, quantile of their maxima),
#: how a recipe's label says it)
ACTIVATION_RANGES = {
    "minmax": ("min / max over every calibration image", (0.0, 1.0), ""),
    "p90": ("10th / 90th percentile of each calibration image's min / max", (0.1, 0.9),
            ", 90th-percentile ranges"),
    "p75": ("25th / 75th percentile of each calibration image's min / max", (0.25, 0.75),
            ", 75th-percentile ranges"),
}


def check(name: str) -> None:
    if name not in ACTIVATION_RANGES:
        raise ValueError(f"unknown activation ranges {name!r}; one of {', '.join(ACTIVATION_RANGES)}")


def describe(name: str) -> str:
    """What an artifact's spec says of its activation ranges."""
    return ACTIVATION_RANGES[name][0]


def label(name: str) -> str:
    """What a recipe's label adds for them ("" for min / max)."""
    return ACTIVATION_RANGES[name][2]


def from_extremes(minima: np.ndarray, maxima: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of one tensor from its per-image minima and maxima (stacked on axis 0; a
    per-channel statistic keeps its other axes), as ACTIVATION_RANGES[name] says."""
    low, high = ACTIVATION_RANGES[name][1]
    return (np.quantile(minima, low, axis=0).astype(np.float32),
            np.quantile(maxima, high, axis=0).astype(np.float32))


__all__ = ["ACTIVATION_RANGES", "check", "describe", "label", "from_extremes"]
