"""INT8 post-training quantization of an OpenVINO model with NNCF.

NNCF runs on the ov.Model (never the torch module: that path compiles a C++ extension on
first use). Calibration tensors come from the shared CalibrationSet, one image per NNCF
item so `subset_size` counts images. With `max_drop` the accuracy-controlled variant is
used on a validation subset of `data` that excludes every calibration image; the weighted
operations left in floating point are logged and recorded in spec.quantization.
"""
from __future__ import annotations

import logging
import numpy as np

from edgecls.backends.openvino import OpenVINOOptions
from edgecls.errors import DataError, UnsupportedOptionError
from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")

PRESETS = ("performance", "mixed")
#: --calib-method -> NNCF activation range estimator (None: NNCF's default for the preset)
RANGE_ESTIMATORS = {"minmax": "MINMAX", "mean_minmax": "MEAN_MINMAX",
                    "percentile": "MEAN_QUANTILE", "histogram": "HISTOGRAM"}
#: ops whose weights NNCF quantizes; one without an int8 input was kept in float
WEIGHTED_OPS = {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"}
#: ops that pass int8 values through unchanged (NNCF quantizes their input instead)
AGNOSTIC_OPS = {"MaxPool", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Flatten",
                "StridedSlice", "Slice", "Split", "VariadicSplit", "Pad", "Gather", "Concat"}
#: images in the accuracy-control validation subset
VALIDATION_SIZE = 300


def check_recipe(preset: str | None, calib_method: str | None) -> None:
    """Refuse a preset or range estimator NNCF has no recipe for, before any model work."""
    if preset is not None and preset not in PRESETS:
        raise UnsupportedOptionError(f"unknown --preset {preset!r}; use {' or '.join(PRESETS)}")
    if calib_method is not None and calib_method not in RANGE_ESTIMATORS:
        raise UnsupportedOptionError(f"OpenVINO/NNCF --calib-method is one of "
                                     f"{', '.join(RANGE_ESTIMATORS)}, not {calib_method!r}")


def quantize(model, spec: ModelSpec, calibration, options: OpenVINOOptions):
    """The INT8 ov.Model; spec.quantization is filled in."""
    import nncf

    preset, calib_method = options.preset or "performance", options.calib_method
    scope = list(options.ignored_scope or ()) or first_and_last_layers(model)
    if scope == ["none"]:
        scope = []
    kwargs = dict(preset=getattr(nncf.QuantizationPreset, preset.upper()),
                  subset_size=len(calibration),
                  model_type=None,  # CNN classifiers: NNCF's only other type is TRANSFORMER
                  ignored_scope=_ignored(model, scope),
                  advanced_parameters=_advanced(calib_method))
    dataset = nncf.Dataset(list(calibration.batches(spec, batch_size=1)))
    recipe = {**calibration.recipe(), "method": "nncf-ptq", "preset": preset,
              "calib_method": calib_method or "nncf-default",
              "ignored_scope": scope, "tool": f"nncf {nncf.__version__}"}
    if options.max_drop is None:
        quantized = nncf.quantize(model, dataset, **kwargs)
    else:
        quantized, val = _with_accuracy_control(model, spec, dataset, calibration, options.data,
                                                options.max_drop, kwargs)
        recipe.update(method="nncf-ptq-accuracy-control", max_drop=options.max_drop,
                      validation_source=val.name, validation_size=len(val),
                      validation_hash=val.digest())
    recipe["kept_in_float"] = kept_in_float(quantized)
    if recipe["kept_in_float"]:
        log.info("OpenVINO INT8: kept in floating point: %s", ", ".join(recipe["kept_in_float"]))
    spec.quantization = recipe
    return quantized


def first_and_last_layers(model) -> list[str]:
    """The first convolution and the final classifier MatMul: kept in float by default.

    The same mixed-precision recipe as the ONNX Runtime path (see backends/onnx/quantize.py):
    measured on EfficientNet-Lite0 with the photo crops, NNCF INT8 top-1 agreement with FP32
    went from 85.4% to 93.8% (KL 0.039 -> 0.029). `--ignored-scope none` quantizes all."""
    ops = list(model.get_ordered_ops())
    convs = [o.get_friendly_name() for o in ops if o.get_type_name() == "Convolution"]
    heads = [o.get_friendly_name() for o in ops if o.get_type_name() == "MatMul"]
    return convs[:1] + heads[-1:]


def _ignored(model, names: list[str]):
    """nncf.IgnoredScope of op names; a name not in the graph is the user's error, said here
    in one line (NNCF's own validation raises a multi-line internal error)."""
    import nncf
    if not names:
        return None
    present = {op.get_friendly_name() for op in model.get_ops()}
    missing = [n for n in names if n not in present]
    if missing:
        raise UnsupportedOptionError(f"ignored_scope: no operation named {', '.join(missing[:5])} "
                                     "in the OpenVINO model (names are the IR's friendly names)")
    return nncf.IgnoredScope(names=names)


def _advanced(calib_method: str | None):
    if calib_method is None:
        return None
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    params = getattr(RangeEstimatorParametersSet, RANGE_ESTIMATORS[calib_method])
    return AdvancedQuantizationParameters(activations_range_estimator_params=params)


# -- accuracy control ----------------------------------------------------------------------
def _with_accuracy_control(model, spec, calib_dataset, calibration, data, max_drop, kwargs):
    """nncf.quantize_with_accuracy_control with top-1 accuracy (points -> fraction)."""
    import nncf
    import openvino as ov

    val = _validation_set(data, spec, calibration)
    x = np.concatenate(list(_batches(val, spec)))
    labels = val.labels()
    if labels is None:  # unlabelled (photos): the float model's own top-1 is the target
        labels = ov.Core().compile_model(model, "CPU")(x)[0].argmax(1)
    items = [(x[i:i + 1], int(labels[i])) for i in range(len(x))]
    quantized = nncf.quantize_with_accuracy_control(
        model, calib_dataset, nncf.Dataset(items, lambda item: item[0]), _top1,
        max_drop=max_drop / 100.0, drop_type=nncf.DropType.ABSOLUTE,
        preset=kwargs["preset"], subset_size=kwargs["subset_size"],
        model_type=kwargs["model_type"], ignored_scope=kwargs["ignored_scope"],
        advanced_quantization_parameters=kwargs["advanced_parameters"])
    return quantized, val


def _validation_set(data, spec, calibration):
    """The same held-out images the export's INT8 parity check uses (--data, else what the
    calibration source has left), never a calibration image."""
    val = calibration.held_out(data, spec, size=VALIDATION_SIZE)
    if val is None or not len(val):
        raise DataError(f"--max-drop needs held-out images: --data {data or 'DIR'} has none "
                        "once the calibration images are excluded")
    return val


def _batches(images, spec, batch_size: int = 64):
    from edgecls.calibration.preprocess import to_model_input
    crops = images.crops(spec)
    for i in range(0, len(crops), batch_size):
        yield to_model_input(crops[i:i + batch_size], spec)


def _top1(compiled_model, items) -> tuple[float, list[float]]:
    """NNCF's validation_fn: mean top-1 hit and the per-item hits it ranks layers with."""
    output = compiled_model.output(0)
    hits = [float(np.argmax(compiled_model(x)[output]) == label) for x, label in items]
    return float(np.mean(hits)) if hits else 0.0, hits


def kept_in_float(model) -> list[str]:
    """Friendly names of weighted ops whose activation input is not fake-quantized.

    NNCF puts a quantizer before quantization-agnostic ops (MaxPool, Reshape, ...) rather
    than after them, so the search walks up through those."""
    kept = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in WEIGHTED_OPS:
            continue
        producer = op.input_value(0).get_node()
        while producer.get_type_name() in AGNOSTIC_OPS:
            producer = producer.input_value(0).get_node()
        if producer.get_type_name() not in ("FakeQuantize", "FakeConvert"):
            kept.append(op.get_friendly_name())
    return kept
