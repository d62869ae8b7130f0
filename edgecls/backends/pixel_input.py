"""Pixels as the INT8 input: the input's offset folded into the first convolution.

A full-integer model (TFLite, ExecuTorch) quantizes its input to int8 like any other tensor.
The input is (p - 255 mean) / (255 std) for pixels p = 0..255: 256 levels on a grid of
1 / (255 std), so an int8 grid could hold them exactly - but only if the grid's zero point,
an integer, falls on a pixel level. For mean 0.5 (EfficientNet-Lite and most
TensorFlow-born models) the centre, 127.5, sits halfway between two levels: every pixel is
rounded by half a level. Measured on EfficientNet-Lite0 (real weights, AMD EPYC): that
rounding alone, on the float model, is KL 0.0047 from FP32 on the 72 selection crops - a
quarter of the full-integer TFLite model's whole distance (0.0207).

So the model is given u = (p - 128) / (255 s) instead, s the mean of the channels' stds
(spec: mean 128/255, std s; int8 with scale 1 / (255 s) and zero point 0 holds every pixel
exactly; uint8 I/O is the camera's bytes unchanged), and its first convolution takes over
the rest: bias + sum(w * (128 - 255 mean) / (255 std)) and, where the channels' stds
differ, weights * s / std per input channel. The weights keep their size (for one std they
are unchanged): AdaRound's grid and QAT's learning rate stay what they were. That is exact
except where the convolution pads with zeros: a padded zero of u stands for pixel 128, not
for the mean. For mean 0.5 that is half a level (KL 2e-7 on Lite0); for ImageNet's mean
(123.7, 116.3, 103.5) it is 4 to 24 levels along the border, which measured KL 0.03-0.17
on the same model. So the fold is kept only where the float model, folded, still gives its
own logits (`FOLD_ERROR` on a few calibration images); elsewhere the input stays as it was.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")

#: the pixel that u = 0 stands for: the middle of uint8, zero of int8
CENTRE = 128
#: what an artifact's quantization record says of such an input
RECORD = (f"(pixels - {CENTRE}) / (255 std): every pixel level exact in int8; the mean is "
          "in the first convolution")
#: the largest relative change of the float model's logits (|folded - model| / |model|
#: over the check images) the fold may cost. Measured: 2.5e-4 for mean 0.5 with zero
#: padding (EfficientNet-Lite0, a small random CNN), 1e-7 without padding; ImageNet's mean
#: with zero padding 3.5e-3 (mobilenet_v2, random weights) to 2e-2 (Lite0 given that mean)
FOLD_ERROR = 1e-3
#: calibration images the float check runs on
CHECK_IMAGES = 8


def pixel_spec(spec: ModelSpec) -> ModelSpec:
    """The spec of a model that takes u = (p - CENTRE) / (255 s): what its artifact records."""
    common = float(np.mean(spec.std))
    return spec.derive(mean=(CENTRE / 255,) * len(spec.mean), std=(common,) * len(spec.std))


def input_range(spec: ModelSpec) -> tuple[float, float]:
    """The range of u for pixels 0..255 under a pixel_spec: given to the quantizer rather
    than measured, so that its int8 grid is the pixels' own (scale 1 / (255 s))."""
    step = 1 / (255 * spec.std[0])
    return -CENTRE * step, (255 - CENTRE) * step


def first_convolution(model, spec: ModelSpec):
    """The nn.Conv2d that receives the model's input tensor itself (no op before it), or
    None."""
    import torch

    h, w = spec.input_size
    x = torch.zeros(1, spec.channels, h, w)
    found = []

    def look(module, args):
        if args and args[0] is x and not found:
            found.append(module)

    hooks = [m.register_forward_pre_hook(look) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return found[0] if found else None


def fold(model, spec: ModelSpec) -> Any | None:
    """A copy of `model` that takes u = (p - CENTRE) / (255 s) (NCHW float; pixel_spec) with
    the rest of the normalisation in its first convolution's bias (and weights, where the
    stds differ); None where the model's first op is not an ungrouped convolution."""
    import torch

    folded = copy.deepcopy(model).eval()
    conv = first_convolution(folded, spec)
    if conv is None or conv.groups != 1:
        return None
    mean = torch.tensor(spec.mean, dtype=torch.float64) * 255
    std = torch.tensor(spec.std, dtype=torch.float64) * 255
    common = torch.tensor(pixel_spec(spec).std[0], dtype=torch.float64) * 255
    with torch.no_grad():
        weight = conv.weight.double()               # out, in, kh, kw
        # x = (p - mean) / std = u * common / std + (CENTRE - mean) / std, per channel
        offset = ((CENTRE - mean) / std)[None, :, None, None]
        shift = (weight * offset).sum((1, 2, 3))
        if conv.bias is None:
            conv.bias = torch.nn.Parameter(torch.zeros_like(conv.weight[:, 0, 0, 0]))
        conv.bias.add_(shift.to(conv.bias.dtype))
        conv.weight.copy_((weight * (common / std)[None, :, None, None]).to(conv.weight.dtype))
    return folded


def fold_error(model, folded, spec: ModelSpec, calibration) -> float:
    """|folded - model| / |model| of the logits of a few calibration images, each model fed
    as its spec says."""
    import torch

    # OpenCV: imaging.preprocess imports cv2
    from edgecls.imaging.preprocess import to_model_input

    pixels = calibration.images.subset(CHECK_IMAGES).crops(spec)
    nchw = spec.derive(layout="NCHW", normalization_in_graph=False, input_dtype="float32")
    with torch.no_grad():
        ref = model(torch.from_numpy(to_model_input(pixels, nchw))).numpy()
        got = folded(torch.from_numpy(to_model_input(pixels, pixel_spec(nchw)))).numpy()
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12))


def pixel_inputs(models: list, spec: ModelSpec, calibration) -> list | None:
    """Each model folded to take pixel_spec's u, or None (the input stays as it was) where
    the first model has no foldable first convolution or folding changes its answers."""
    folded = [fold(m, spec) for m in models]
    if any(f is None for f in folded):
        log.info("the input stays normalised: the model's first op is not a plain convolution")
        return None
    cost = fold_error(models[0], folded[0], spec, calibration)
    if cost > FOLD_ERROR:
        log.info("the input stays normalised: folding mean %s into the first convolution "
                 "would change the float model's logits by %.2g (its zero padding)",
                 spec.mean, cost)
        return None
    return folded


def pixel_starts(starts: Sequence[Any], source_spec: ModelSpec, spec: ModelSpec,
                 calibration) -> list[Any]:
    """The INT8 starts (backends/onnx/torch_start.Start) folded to take pixel_spec's u, each
    with the method "input" (RECORD) added, and the artifact's `spec` saying how it is fed;
    or the starts as they were. `source_spec`: how the source's model is fed (NCHW)."""
    folded = pixel_inputs([start.model for start in starts], source_spec, calibration)
    if folded is None:
        return list(starts)
    pixels = pixel_spec(spec)
    spec.mean, spec.std = pixels.mean, pixels.std
    return [dataclasses.replace(start, model=model, methods={**start.methods, "input": RECORD})
            for start, model in zip(starts, folded)]


__all__ = ["pixel_starts", "pixel_inputs", "pixel_spec", "fold", "first_convolution", "CENTRE", "RECORD",
           "input_range"]
