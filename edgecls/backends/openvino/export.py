"""ONNX (or PyTorch) -> OpenVINO IR (.xml + .bin), FP32 / FP16 / INT8, the spec in rt_info.

Starts from the FP32 ONNX artifact: it is the file that was already exported and checked
against PyTorch and carries the dynamic batch dimension; measured here (2 cores, f32 hint)
the ONNX route gave the same logits as ov.convert_model(torch_module) and equal or lower
latency (mobilenet_v3_large 9.4 vs 12.1 ms; efficientnet_lite0 15.2 vs 15.3 ms, with 248
vs 526 ops before compilation). ov.convert_model on the torch module is the fallback when
the ONNX export itself fails (an op the dynamo exporter cannot lower). The route taken is
recorded in spec.exported_from.

Order of the steps matters: INT8 quantization runs on the float graph with float NCHW
calibration tensors; static batch and baked preprocessing are applied afterwards, so the
calibration data never has to know about them.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

from edgecls import targets
from edgecls.backends.base import ExportPaths
from edgecls.backends.openvino import OpenVINOOptions
from edgecls.backends.openvino.container import save, write_spec
from edgecls.backends.openvino.tuning import OpenVINOTuner, Start
from edgecls.errors import first_line
from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")

#: the weights compression that ov.save_model applies, per precision
COMPRESS_TO_FP16 = {"fp32": False, "fp16": True, "int8": False}


# -- the export paths (base.ExportPaths); the format table's exporter for "openvino" writes
# `out` and out.with_suffix(".bin")
def fp32(source, spec: ModelSpec, out: Path, *, calibration, options: OpenVINOOptions) -> None:
    model, spec.exported_from = convert(source, spec)
    _finish(model, spec, out, precision="fp32", options=options)


def fp16(source, spec: ModelSpec, out: Path, *, calibration, options: OpenVINOOptions) -> None:
    model, spec.exported_from = convert(source, spec)
    _finish(model, spec, out, precision="fp16", options=options)


def int8(source, spec: ModelSpec, out: Path, *, calibration, options: OpenVINOOptions):
    """The Tuner the recipe search runs: NNCF from the FP32 model and (unless --no-search) from
    the adaptively rounded one (edgecls.backends.adaround), converted the same way; and, for
    a target that never saturates, ONNX Runtime's QDQ models from both (tuning.py says why)."""
    import openvino as ov

    from edgecls.backends.onnx.export import rounded_onnx

    model, spec.exported_from = convert(source, spec)
    target = targets.resolve(options.target)
    starts = [Start(model)]
    rounded = (None if options.no_search or spec.exported_from != "onnx"
               else rounded_onnx(source, calibration))
    if rounded is not None:
        _, rounded_path, facts = rounded
        starts.append(Start(ov.convert_model(str(rounded_path)), facts))
    finish = functools.partial(_finish, precision="int8", options=options)
    qdq = (_qdq_quantizers(source, calibration, target, options, rounded and rounded[1:])
           if spec.exported_from == "onnx" else [])
    return OpenVINOTuner(starts, source, spec, calibration, target, options, finish, qdq=qdq)


def _qdq_quantizers(source, calibration, target, options: OpenVINOOptions, rounded) -> list:
    """ONNX Runtime's quantizers (backends/onnx/quantize.OrtQuantizer) for the target's QDQ
    recipe, one per start (from the FP32 ONNX export the IR came from); none where the
    target has no such recipe, where NNCF was asked for by name (--preset, --calib-method,
    --ignored-scope), or with --no-search."""
    from edgecls.backends.onnx.quantize import OrtQuantizer
    from edgecls.backends.openvino.quantize import QDQ_TARGETS

    ort_target = QDQ_TARGETS.get(target.name)
    if (ort_target is None or options.no_search or options.preset or options.calib_method
            or options.ignored_scope):
        return []
    found = []
    for index, start in enumerate([None, rounded] if rounded else [None]):
        work = Path(source.workdir) / "openvino-qdq" / str(index)
        work.mkdir(parents=True, exist_ok=True)
        found.append(OrtQuantizer(source.onnx(), source.spec, calibration, work,
                                  target=ort_target, rounded=start))
    return found


def qat(source, spec: ModelSpec, out: Path, *, calibration, options: OpenVINOOptions) -> None:
    """The QDQ ONNX's trained scales become FakeQuantize."""
    import openvino as ov
    model, spec.exported_from = ov.convert_model(str(source.qat_onnx())), "onnx"
    source.student.record(spec, "openvino")
    _finish(model, spec, out, precision="int8", options=options)


export = ExportPaths(fp32=fp32, fp16=fp16, int8=int8, qat=qat)


def _finish(model, spec: ModelSpec, out: Path, *, precision: str, options: OpenVINOOptions) -> None:
    """Static batch and baked preprocessing (after quantization, so calibration never has to
    know about them), the spec, and the .xml + .bin pair."""
    import openvino as ov

    if options.static_batch is not None:
        model = set_batch(model, options.static_batch, spec)
    if options.bake_preprocessing:
        model = bake_preprocessing(model, spec)
    spec.tools.update(openvino=ov.get_version().split("-")[0])
    write_spec(model, spec)
    save(model, out, compress_to_fp16=COMPRESS_TO_FP16[precision])


def convert(source, spec: ModelSpec):
    """(ov.Model, "onnx" | "torch"): from the ONNX artifact, or the torch module if that fails."""
    import openvino as ov

    try:
        onnx_path = source.onnx()
    except Exception as e:  # the dynamo exporter's own error types vary by torch version
        log.warning("ONNX export failed (%s); converting the torch model directly",
                    first_line(e, 200))
        return _from_torch(source.model, spec), "torch"
    return ov.convert_model(str(onnx_path)), "onnx"


def _from_torch(model, spec: ModelSpec):
    import openvino as ov
    import torch

    h, w = spec.input_size
    c = spec.channels
    ov_model = ov.convert_model(model, example_input=torch.randn(1, c, h, w),
                                input=[(-1, c, h, w)])
    return ov_model


def set_batch(model, batch: int, spec: ModelSpec):
    """Fix the batch dimension; the runtime splits/pads other batch sizes (spec.notes)."""
    h, w = spec.input_size
    model.reshape({model.input(0).get_any_name(): [batch, spec.channels, h, w]})
    spec.notes = {**spec.notes, "static_batch": batch}  # a new dict: derive() shares notes
    return model


def bake_preprocessing(model, spec: ModelSpec):
    """u8 NHWC pixels in, mean/scale in the graph (PrePostProcessor).

    Channel order is not converted: to_model_input already flips RGB->BGR when the spec
    says so, so the graph receives pixels in the order the network was trained on.
    """
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32) \
        .mean([m * 255.0 for m in spec.mean]).scale([s * 255.0 for s in spec.std])
    spec.normalization_in_graph, spec.layout, spec.input_dtype = True, "NHWC", "uint8"
    return ppp.build()
