"""INT8 post-training quantization of an OpenVINO model with NNCF, per target.

NNCF runs on the ov.Model (never the torch module: that path compiles a C++ extension on
first use). Calibration tensors come from the shared CalibrationSet, one image per NNCF
item so `subset_size` counts images. What edgecls decides is the recipe for the target:

    target     NNCF overflow fix               when the recipe misses its tolerance
    x86-vnni   disable (VNNI never saturates)  NNCF's accuracy-controlled quantization
    arm64      disable                         (layers go back to float, most harmful
    x86-avx2   first_layer_only, or enable     first, until the drop is met)
    portable   (NNCF's 7-bit weights)

Measured on EfficientNet-Lite0, AMD EPYC AVX2, 48 held-out photo crops: first_layer_only
81.2% agreement, enable 89.6%; keeping the 1-7 layers the VPMADDUBSW emulation ranks first
in float (as ONNX Runtime's search does) lowered KL but stopped at 93.8%; accuracy control
reached 95.8% (KL 0.0086) at 1.16x ORT FP32 speed. So accuracy control is the remedy here.

Every recipe keeps the first convolution and the classifier in float (`--ignored-scope
none` quantizes them too). The layers a recipe keeps in float are its settings
{"ignored": [...], "overflow_fix": ...}, recorded in the spec with the weighted operations
that really ended up in floating point.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecls import targets
from edgecls.errors import UnsupportedOptionError
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


#: OpenVINO targets whose kernels never saturate, and the ONNX Runtime recipe whose QDQ model
#: the search converts for them too (backends/onnx/quantize.OrtQuantizer: the same layers in
#: float, bias correction, adaptive rounding). Why: EfficientNet-Lite0, the 72 selection
#: crops, AMD EPYC with VNNI: ORT's QDQ model run by OpenVINO KL 0.0061 (0.0053 in ORT),
#: NNCF's own from the same start 0.024 (its "mixed" preset 0.024 too), and no slower.
#: AVX2 targets need NNCF's overflow fix, which a QDQ model cannot carry.
QDQ_TARGETS = {"x86-vnni": "x86-vnni", "arm64": "arm64"}


@dataclass(frozen=True)
class NncfRecipe:
    overflow_fixes: tuple[str, ...]          # NNCF OverflowFix values, one base candidate each
    accuracy_control: bool = True            # NNCF's own search when no base meets the tolerance


_AVX2_SAFE = NncfRecipe(("first_layer_only", "enable"))
RECIPES: dict[str, NncfRecipe] = {
    "x86-vnni": NncfRecipe(("disable",)),
    "x86-avx2": _AVX2_SAFE,
    "portable": _AVX2_SAFE,
    "arm64": NncfRecipe(("disable",)),
}


def check_recipe(preset: str | None, calib_method: str | None, target: str | None) -> None:
    """Refuse a preset, range estimator or target NNCF has no recipe for, before any model
    work."""
    if preset is not None and preset not in PRESETS:
        raise UnsupportedOptionError(f"unknown --preset {preset!r}; use {' or '.join(PRESETS)}")
    if calib_method is not None and calib_method not in RANGE_ESTIMATORS:
        raise UnsupportedOptionError(f"OpenVINO/NNCF --calib-method is one of "
                                     f"{', '.join(RANGE_ESTIMATORS)}, not {calib_method!r}")
    name = targets.resolve(target).name
    if name not in RECIPES:
        raise UnsupportedOptionError(f"--target {name} is not an OpenVINO target; choose one of "
                                     f"auto, {', '.join(RECIPES)}")


def nncf_quantize(model, spec: ModelSpec, calibration, settings: dict[str, Any], *,
                  preset: str = "performance", calib_method: str | None = None,
                  validation=None):
    """The INT8 ov.Model for one recipe. With settings["accuracy_control"], NNCF's
    quantize_with_accuracy_control on `validation` (held-out images with the FP32 model's
    logits) to settings["max_drop"] points of top-1."""
    import nncf

    nncf.set_log_level(logging.WARNING)   # its INFO lines would drown the candidates table
    kwargs = dict(preset=getattr(nncf.QuantizationPreset, preset.upper()),
                  subset_size=len(calibration),
                  model_type=None,  # CNN classifiers: NNCF's only other type is TRANSFORMER
                  ignored_scope=_ignored(model, settings.get("ignored", [])))
    advanced = _advanced(calib_method, settings.get("overflow_fix"))
    dataset = nncf.Dataset(list(calibration.batches(spec, batch_size=1)))
    if not settings.get("accuracy_control"):
        # full bias correction, not NNCF's fast default: on EfficientNet-Lite0 (AMD EPYC with
        # VNNI, 84 calibration crops) it halved the mean KL to FP32 on the verification photos
        # (0.074 -> 0.035) and on the selection photos (0.131 -> 0.082), for 11 s instead of 5
        return nncf.quantize(model, dataset, advanced_parameters=advanced,
                             fast_bias_correction=False, **kwargs)
    from edgecls.imaging.preprocess import to_model_input   # OpenCV: imaging.preprocess imports cv2
    x = to_model_input(validation.pixels, spec)
    labels = (validation.labels if validation.labels is not None
              else validation.reference.argmax(1))   # unlabelled: FP32's own top-1
    items = [(x[i:i + 1], int(labels[i])) for i in range(len(x))]
    return nncf.quantize_with_accuracy_control(
        model, dataset, nncf.Dataset(items, lambda item: item[0]), _top1,
        max_drop=settings["max_drop"] / 100.0, drop_type=nncf.DropType.ABSOLUTE,
        advanced_quantization_parameters=advanced, **kwargs)


def describe(quantized, calibration, settings: dict[str, Any], preset: str,
             calib_method: str | None) -> dict[str, Any]:
    """spec.quantization for a recipe (the target facts are added by the tuner)."""
    import nncf
    kept = kept_in_float(quantized)
    if kept:
        log.debug("OpenVINO INT8: kept in floating point: %s", ", ".join(kept))
    method = "nncf-ptq-accuracy-control" if settings.get("accuracy_control") else "nncf-ptq"
    return {**calibration.recipe(), "method": method, "preset": preset,
            "bias_correction": "full" if method == "nncf-ptq" else "nncf-default",
            "calib_method": calib_method or "nncf-default",
            "overflow_fix": settings.get("overflow_fix"),
            "ignored_scope": list(settings.get("ignored", [])),
            "tool": f"nncf {nncf.__version__}", "kept_in_float": kept}


def first_and_last_layers(model) -> list[str]:
    """The first convolution, the group (depthwise) convolutions it feeds, and the final
    classifier MatMul: kept in float by default.

    The same mixed-precision recipe as the ONNX Runtime path (see first_and_last_layers in
    backends/onnx/quantize.py, which says why the depthwise one): measured on
    EfficientNet-Lite0 with the photo crops, NNCF INT8 top-1 agreement with FP32 went from
    85.4% to 93.8% (KL 0.039 -> 0.029) for the first and last. `--ignored-scope none`
    quantizes all."""
    ops = list(model.get_ordered_ops())
    convs = [o for o in ops if o.get_type_name() == "Convolution"]
    heads = [o.get_friendly_name() for o in ops if o.get_type_name() == "MatMul"]
    if not convs:
        return heads[-1:]
    fed, nodes = [], [convs[0]]
    for _ in range(4):      # through its bias Add and activation (Relu, Clamp, x * sigmoid(x))
        reached = [i.get_node() for n in nodes for out in n.outputs() for i in out.get_target_inputs()]
        fed += [n.get_friendly_name() for n in reached if n.get_type_name() == "GroupConvolution"]
        nodes = [n for n in reached if n.get_type_name() in _ACTIVATIONS]
    return [convs[0].get_friendly_name()] + list(dict.fromkeys(fed)) + heads[-1:]


#: what may sit between the first convolution and a group convolution it feeds
_ACTIVATIONS = ("Relu", "Clamp", "HSwish", "HSigmoid", "Sigmoid", "Swish", "Multiply", "Add")


def with_float_weights(model, fp32, names: list[str]) -> None:
    """Give the operations `names` of `model` (a copy of `fp32` converted from other weights:
    the adaptively rounded ones) the weights they have in `fp32`, in place: a layer kept in
    float runs on its own weights, not on the ones rounded for an int8 grid it never meets.
    Both models come from the same exporter, so their operation names are the same."""
    import openvino as ov

    ops = {op.get_friendly_name(): op for op in model.get_ops()}
    originals = {op.get_friendly_name(): op for op in fp32.get_ops()}
    for name in names:
        if name not in ops or name not in originals:
            raise UnsupportedOptionError(f"ignored_scope: no operation named {name} in both the "
                                         "FP32 and the rounded OpenVINO model")
        weights = ops[name].input_value(1).get_node()
        original = originals[name].input_value(1).get_node()
        if weights.get_type_name() != "Constant" or original.get_type_name() != "Constant":
            continue   # computed weights (none in the exporters' graphs): nothing to give back
        ops[name].input(1).replace_source_output(
            ov.op.Constant(original.get_data().copy()).output(0))


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


def _advanced(calib_method: str | None, overflow_fix: str | None):
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    params: dict[str, Any] = {}
    if overflow_fix:
        params["overflow_fix"] = OverflowFix(overflow_fix)
    if calib_method is not None:
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet
        params["activations_range_estimator_params"] = getattr(
            RangeEstimatorParametersSet, RANGE_ESTIMATORS[calib_method])
    return AdvancedQuantizationParameters(**params) if params else None


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
