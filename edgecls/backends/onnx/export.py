"""PyTorch -> ONNX with torch.onnx's dynamo exporter; FP16 and INT8 derive from the FP32 file.

One self-contained file (no external data; models over 2 GB are refused), a dynamic batch
dimension, onnx.checker, and the ModelSpec in metadata_props.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from edgecls import targets
from edgecls.backends.base import ExportPaths
from edgecls.backends.onnx import DEFAULT_OPSET, OnnxOptions
from edgecls.backends.onnx.container import write_spec
from edgecls.backends.onnx.tuning import OnnxTuner
from edgecls.spec import ModelSpec


def export_fp32(model, spec: ModelSpec, out: Path, opset: int = DEFAULT_OPSET) -> None:
    """Write the FP32 torch model to `out` (a .onnx path) with the spec embedded."""
    import torch

    h, w = spec.input_size
    sample = torch.randn(2, spec.channels, h, w)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (sample,), str(out), dynamo=True, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    import onnx
    spec.tools.update(onnx=onnx.__version__, opset=str(opset))
    write_spec(out, spec)


def export_qat(student, spec: ModelSpec, out: Path, opset: int = DEFAULT_OPSET) -> None:
    """A QAT student as QDQ ONNX: convert_pt2e folds the weights into int8 tensors, and the
    dynamo exporter (with its optimizer) keeps them as int8 initializers feeding
    DequantizeLinear, per channel (onnxscript >= 0.7.1), with the trained activation scales
    on QuantizeLinear / DequantizeLinear pairs."""
    student.record(spec, "onnx")
    export_fp32(student.converted(fold_quantize=True), spec, out, opset)


def export_fp16(fp32_path: Path, spec: ModelSpec, out: Path) -> None:
    """FP16 weights and compute, float32 inputs and outputs (Cast nodes at the edges)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    import onnx_ir

    proto = onnx.load(str(fp32_path))
    fp16 = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=False)
    # the converter appends its input Casts at the end of the node list; ONNX requires
    # topological order, which onnx_ir (onnxscript's IR) restores
    model = onnx_ir.from_proto(fp16)
    model.graph.sort()
    onnx.save_model(onnx_ir.to_proto(model), str(out))
    write_spec(out, spec)


# -- the export paths (base.ExportPaths): every precision starts from the source's FP32 ONNX
# (exported from torch at --opset, or the ONNX file the source is); a QAT student from its own
# QDQ graph
def fp32(source, spec: ModelSpec, out: Path, *, calibration, options: OnnxOptions) -> None:
    import onnx
    shutil.copyfile(source.onnx(options.opset), out)
    spec.tools.update(onnx=onnx.__version__, opset=str(source.onnx_opset))
    write_spec(out, spec)


def fp16(source, spec: ModelSpec, out: Path, *, calibration, options: OnnxOptions) -> None:
    export_fp16(source.onnx(options.opset), spec, out)


def int8(source, spec: ModelSpec, out: Path, *, calibration,
         options: OnnxOptions) -> OnnxTuner:
    """The Tuner the recipe search runs (nothing written here)."""
    return int8_tuner(source.onnx(options.opset), source, spec, calibration, options)


def qat(source, spec: ModelSpec, out: Path, *, calibration, options: OnnxOptions) -> None:
    """The trained scales: nothing to calibrate."""
    export_qat(source.student, spec, out, options.opset or DEFAULT_OPSET)


#: the format table's exporter for "onnx"
export = ExportPaths(fp32=fp32, fp16=fp16, int8=int8, qat=qat)


def int8_tuner(fp32_onnx: Path, source, spec: ModelSpec, calibration, options: OnnxOptions) -> OnnxTuner:
    """ORT QDQ with the target's recipe, for the search to measure and, where it misses,
    change - from the FP32 export and, when searching a torch model, from its adaptively
    rounded twin too; its calibration cache lives in the export's own work folder."""
    work = Path(source.workdir) / "ort-quantize"
    work.mkdir(exist_ok=True)
    rounded = None if options.no_search else rounded_onnx(source, calibration, options.opset)
    return OnnxTuner(fp32_onnx, spec, calibration, targets.resolve(options.target), work,
                     calib_method=options.calib_method, exclude=options.exclude,
                     rounded=rounded and rounded[1:])


def rounded_onnx(source, calibration, opset: int | None = None):
    """(the source's torch model adaptively rounded (edgecls.backends.adaround), its FP32
    ONNX export, what the spec records) - None when the source is no torch model (an ONNX
    file, a QAT student: nothing to round)."""
    import torch

    from edgecls.backends.adaround import adaptively_rounded

    if source.student is not None or not isinstance(source.model, torch.nn.Module):
        return None
    model, facts = adaptively_rounded(source.model, calibration, source.spec)
    path = Path(source.workdir) / f"{source.spec.name}.rounded.fp32.onnx"
    export_fp32(model, source.spec.derive(format="onnx", exported_from="torch",
                                          tools=dict(source.spec.tools)), path,
                opset or DEFAULT_OPSET)
    return model, path, facts
