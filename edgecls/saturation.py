"""Which layers saturate on x86 CPUs without VNNI: predicted on any CPU, from the FP32 ONNX.

On AVX2 (and AVX-512 without VNNI) the u8 x s8 kernels of ONNX Runtime (MLAS) and of
OpenVINO (oneDNN) multiply two adjacent activation bytes by two weight bytes with
VPMADDUBSW, which adds the two products into a signed 16-bit integer *with saturation*:
|a1*w1 + a2*w2| can reach 2*255*127 = 64770 but is clamped to 32767. VNNI's VPDPBUSD and
ARM's SDOT accumulate in 32 bits and never clamp. Which layers suffer depends on the data
(large u8 activations after ReLU6 or residual adds, large weights of the same sign), so this
module emulates exactly that pairwise sum, per layer, on real calibration images:

  activations  u8 asymmetric over the calibration range (what every x86 recipe uses)
  weights      s8 symmetric per output channel
  pairs        adjacent input channels (k, k+1), as the kernels pack them

and ranks layers by the share of their integer output lost to clamping. Layers not listed
are not GEMM-like (depthwise convolutions run in other kernels) or lose nothing.

Measured on EfficientNet-Lite0 on an AMD EPYC (AVX2): the 4 layers ranked first here are the
4 with the largest gap between ONNX Runtime's default and its exact (U8U8) kernel when each
layer alone is quantized (Spearman 0.86 over the 33 pointwise convolutions).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

INT16_MAX = 32767
#: output positions sampled per image and layer (the emulation is O(positions x out x in))
POSITIONS_PER_IMAGE = 1024
MAX_IMAGES = 16


@dataclass(frozen=True)
class LayerSaturation:
    node: str                  # ONNX node name (OpenVINO keeps it as the op's friendly name)
    op: str
    relative_error: float      # |clamped - exact| summed / |exact output| summed
    clamped_fraction: float    # share of output values that met at least one clamp


@dataclass(frozen=True)
class _Layer:
    node: str
    op: str
    activation: str            # the input tensor's name
    weight: np.ndarray         # (out, in, kh, kw) for convolutions, (out, in) otherwise
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)


def rank_layers(fp32_onnx: Path, batches: Iterable[np.ndarray],
                seed: int = 0) -> list[LayerSaturation]:
    """Every GEMM-like layer with initializer weights, most saturated first."""
    layers = _gemm_layers(Path(fp32_onnx))
    if not layers:
        return []
    activations = _activations(Path(fp32_onnx), {l.activation for l in layers}, batches)
    rng = np.random.default_rng(seed)
    rows = [_emulate(layer, activations[layer.activation], rng) for layer in layers]
    return sorted(rows, key=lambda r: -r.relative_error)


def _gemm_layers(path: Path) -> list[_Layer]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    layers = []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        if node.op_type == "Conv" and attrs.get("group", 1) == 1 and w.ndim == 4:
            pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
            layers.append(_Layer(node.name, "Conv", node.input[0], w,
                                 tuple(attrs.get("strides", (1, 1))), pads,
                                 tuple(attrs.get("dilations", (1, 1)))))
        elif node.op_type == "Gemm" and w.ndim == 2:
            layers.append(_Layer(node.name, "Gemm", node.input[0],
                                 w if attrs.get("transB", 0) else w.T))
        elif node.op_type == "MatMul" and w.ndim == 2:
            layers.append(_Layer(node.name, "MatMul", node.input[0], w.T))
    return layers


def _activations(path: Path, names: set[str], batches: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """The FP32 model's input tensors of the layers, on up to MAX_IMAGES images."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    present = {o.name for o in model.graph.output}
    for name in sorted(names - present):
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    # no fusion: every requested tensor exists exactly as in the FP32 graph
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with tempfile.TemporaryDirectory(prefix="edgecls-sat-") as work:
        exposed = Path(work) / "exposed.onnx"
        onnx.save(model, str(exposed))
        session = ort.InferenceSession(str(exposed), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        wanted = sorted(names)
        collected: dict[str, list[np.ndarray]] = {n: [] for n in wanted}
        seen = 0
        for batch in batches:
            batch = batch[:MAX_IMAGES - seen]
            for name, value in zip(wanted, session.run(wanted, {input_name: batch})):
                collected[name].append(value)
            seen += len(batch)
            if seen >= MAX_IMAGES:
                break
    return {n: np.concatenate(v) for n, v in collected.items()}


def _emulate(layer: _Layer, x: np.ndarray, rng: np.random.Generator) -> LayerSaturation:
    # u8 asymmetric activations over the observed range (zero included), as ORT/NNCF do
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (hi - lo) / 255.0 or 1.0
    zero = int(round(-lo / scale))
    a = _patches(layer, x, rng)                                   # (M, K) float
    a = np.clip(np.round(a / scale) + zero, 0, 255).astype(np.int32)
    # convolution weights (out, in, kh, kw) -> (out, kh*kw*in): taps-major, channels adjacent
    w = (layer.weight.transpose(0, 2, 3, 1).reshape(len(layer.weight), -1)
         if layer.op == "Conv" else layer.weight)
    w_scale = np.abs(w).max(axis=1, keepdims=True) / 127.0
    w_scale[w_scale == 0] = 1.0
    q = np.clip(np.round(w / w_scale), -127, 127).astype(np.int32)  # (N, K)
    exact = (a - zero) @ q.T                                       # (M, N) the true integer output
    lost = np.zeros_like(exact)
    # only pairs whose largest possible |sum| exceeds int16 can clamp: skip the rest
    a_max = a.max(axis=0)
    k_even = a.shape[1] - a.shape[1] % 2
    for j in range(0, k_even, 2):
        bound = a_max[j] * np.abs(q[:, j]) + a_max[j + 1] * np.abs(q[:, j + 1])
        cols = np.flatnonzero(bound > INT16_MAX)
        if not len(cols):
            continue
        pair = a[:, j:j + 1] * q[cols, j][None] + a[:, j + 1:j + 2] * q[cols, j + 1][None]
        lost[:, cols] += np.clip(pair, -INT16_MAX - 1, INT16_MAX) - pair
    total = float(np.abs(exact).sum()) or 1.0
    return LayerSaturation(layer.node, layer.op, float(np.abs(lost).sum()) / total,
                           float((lost != 0).mean()))


def _patches(layer: _Layer, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(positions, K) input rows of the layer's GEMM, sampled; K ordered (tap, channel)."""
    if layer.op != "Conv":
        return x.reshape(len(x), -1).astype(np.float32)
    n, c, h, w = x.shape
    _, _, kh, kw = layer.weight.shape
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    top, left, bottom, right = layer.pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    per_image = min(POSITIONS_PER_IMAGE, out_h * out_w)
    rows = []
    for i in range(n):
        picks = rng.choice(out_h * out_w, size=per_image, replace=False)
        ys, xs = np.divmod(picks, out_w)
        # an int and two index arrays split by a slice: numpy puts the positions first, (P, C)
        taps = [xp[i, :, ys * sh + ky * dh, xs * sw + kx * dw]
                for ky in range(kh) for kx in range(kw)]
        rows.append(np.concatenate(taps, axis=1))
    return np.concatenate(rows).astype(np.float32)


__all__ = ["LayerSaturation", "rank_layers"]
