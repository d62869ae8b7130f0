"""The INT8 recipe for TensorRT: explicit quantization (Q/DQ in the ONNX), no calibrator
(TensorRT deprecated implicit quantization in 10.1).

ONNX Runtime's quantizer with its "tensorrt" target writes the QDQ ONNX that TensorRT parses:
s8 activations and weights, symmetric (zero points 0), weights per channel (axis 0 of a
Conv's weight), biases left in float (QuantizeBias=False: TensorRT's parser rejects int32
bias DequantizeLinear). It is calibrated on the same calibration set as every other backend.
Needs no TensorRT, so the tests check this file anywhere.
"""
from __future__ import annotations

from pathlib import Path

from edgecls.backends.onnx.quantize import quantize_onnx
from edgecls.spec import ModelSpec


def qdq_onnx(fp32_onnx: Path, spec: ModelSpec, calibration, work: Path) -> Path:
    """The QDQ ONNX to build an INT8 engine from; spec.quantization / parent / tools filled in."""
    out = work / f"{spec.name}.int8.qdq.onnx"
    q_spec = spec.derive(tools=dict(spec.tools), notes=dict(spec.notes), format="onnx")
    quantize_onnx(fp32_onnx, q_spec, out, calibration, target="tensorrt")
    spec.quantization = {**q_spec.quantization, "applied_by": "tensorrt (explicit Q/DQ)"}
    spec.parent = q_spec.parent
    spec.tools.update(q_spec.tools)
    return out
