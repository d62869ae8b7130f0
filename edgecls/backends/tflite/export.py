"""PyTorch -> TFLite with litert-torch; FP16 and full-integer INT8 with ai-edge-quantizer.

Why this route (measured, see the issue note): litert-torch lowers the torch model itself
(torch.export -> StableHLO -> TFLite) with no TensorFlow and no download at conversion time,
installs next to onnxruntime/openvino/nncf under the torch pin, and the float model matches
PyTorch to ~1e-5. ai-edge-quantizer then makes a full-integer model (every op int8, residual
adds and squeeze-excite multiplies included), calibrated on the shared calibration set.
onnx2tf would need full TensorFlow (~650 MB wheel, and it pins an older ai-edge-litert).

The artifact takes NHWC input (TFLite's convention): the torch model is wrapped in a
permute, which the converter folds into the first convolution. The batch dimension is
fixed at 1 (litert-torch cannot lower adaptive pooling with a symbolic batch); the runtime
runs a batch as a loop over samples. The ModelSpec is a TFLite metadata entry
(edgecls.spec -> a buffer with the JSON), readable back without TensorFlow.
"""
from __future__ import annotations

import logging
from pathlib import Path

from edgecls import targets
from edgecls.backends.base import ExportPaths
from edgecls.backends.onnx.torch_start import starts
from edgecls.backends.pixel_input import pixel_starts
from edgecls.backends.tflite import TFLiteOptions, io_type
from edgecls.backends.tflite.container import embed_spec
from edgecls.backends.tflite.hardswish import xnnpack_hardswish
from edgecls.backends.tflite.quantize import float_ops, io_dtypes, quantize_fp16, quiet
from edgecls.backends.tflite.tuning import TFLiteTuner
from edgecls.errors import DataError, UnsupportedOptionError
from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")


# -- the export paths (base.ExportPaths), the format table's exporter for "tflite"
def _describe(spec: ModelSpec, options: TFLiteOptions) -> str | None:
    """The spec's fields every path shares; --int8-io's type (None: float I/O)."""
    int8_io = io_type(options.int8_io)
    spec.layout = "NHWC"
    spec.exported_from = "torch"
    spec.input_dtype = int8_io or "float32"
    spec.tools.update(_versions())
    return int8_io


def fp32(source, spec: ModelSpec, out: Path, *, calibration, options: TFLiteOptions) -> None:
    _describe(spec, options)
    Path(out).write_bytes(embed_spec(convert_fp32(source.model, spec), spec))


def fp16(source, spec: ModelSpec, out: Path, *, calibration, options: TFLiteOptions) -> None:
    _describe(spec, options)
    model = convert_fp32(source.model, spec)
    with quiet():
        model = quantize_fp16(model)
    spec.quantization = {"method": "weight-only", "weights": "float16",
                         "tool": "ai-edge-quantizer"}
    Path(out).write_bytes(embed_spec(model, spec))


def int8(source, spec: ModelSpec, out: Path, *, calibration, options: TFLiteOptions):
    """The Tuner the recipe search runs (full-integer by ai-edge-quantizer)."""
    if not len(calibration):          # before the conversions: nothing to quantize with
        raise DataError("the calibration set is empty")
    int8_io = _describe(spec, options)
    # full-integer PTQ quantizes copies of the model: bias-corrected (NNCF, found on the ONNX
    # export, fed as the source's spec says, not this NHWC one), and adaptively rounded
    # first when the search is to choose; they take pixels - 128 (scaled) where the first
    # convolution can take the normalisation: int8 then holds every pixel exactly
    # (pixel_input.py)
    found = pixel_starts(starts(source, calibration, rounding=not options.no_search),
                         source.spec, spec, calibration)
    converted = []
    for start in found:
        model, rewritten = xnnpack_hardswish(start.model)
        if rewritten:
            spec.notes["tflite"] = {"hardswish_for_xnnpack": rewritten}
        converted.append((start, convert_fp32(model, spec)))
    return TFLiteTuner(converted, spec, calibration, targets.resolve(options.target), int8_io,
                       options.allow_float_ops)


def qat(source, spec: ModelSpec, out: Path, *, calibration, options: TFLiteOptions) -> None:
    """litert-torch lowers the trained scales."""
    _describe(spec, options)
    Path(out).write_bytes(embed_spec(convert_qat(source.student, spec), spec))


export = ExportPaths(fp32=fp32, fp16=fp16, int8=int8, qat=qat)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    found = {}
    for dist in ("litert-torch", "ai-edge-quantizer", "ai-edge-litert", "litert-converter"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


def _nhwc(model):
    import torch

    class NHWCInput(torch.nn.Module):
        """Takes NHWC (TFLite's layout) and feeds the NCHW model."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.permute(0, 3, 1, 2))

    return NHWCInput(model).eval()


def convert_fp32(model, spec: ModelSpec) -> bytes:
    """The float32 TFLite flatbuffer (NHWC input, batch 1) of a torch model in eval mode."""
    import torch

    h, w = spec.input_size
    with quiet():
        import litert_torch
        with torch.no_grad():
            edge = litert_torch.convert(_nhwc(model), (torch.zeros(1, h, w, spec.channels),))
        return bytes(edge.model_content())


def convert_qat(student, spec: ModelSpec) -> bytes:
    """The full-integer TFLite flatbuffer of a QAT student: litert-torch lowers its converted
    PT2E graph (quantize / dequantize pairs with the trained scales, weights not folded, as
    litert-torch's PT2E path expects) with the quantizer it was prepared with. Input and
    output come out int8 with the trained scales (the session quantizes and dequantizes)."""
    import torch
    from litert_torch.quantize.quant_config import QuantConfig

    h, w = spec.input_size
    with quiet():
        import litert_torch
        with torch.no_grad():
            edge = litert_torch.convert(_nhwc(student.converted(fold_quantize=False)),
                                        (torch.zeros(1, h, w, spec.channels),),
                                        quant_config=QuantConfig(pt2e_quantizer=student.quantizer))
        model = bytes(edge.model_content())
    leftover = float_ops(model)
    if leftover:
        raise UnsupportedOptionError(f"{spec.name}: the QAT model lowered to TFLite keeps float "
                                     f"ops ({', '.join(leftover[:5])}); litert-torch's quantizer "
                                     "does not cover this architecture yet")
    student.record(spec, "tflite")
    spec.input_dtype = io_dtypes(model)[0]
    return model
