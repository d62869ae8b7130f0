"""INT8 post-training quantization of an ONNX model with ONNX Runtime's own tooling.

No quantizer math here: shape pre-processing (quant_pre_process), calibration (MinMax /
Entropy / Percentile, cached so a model is calibrated once) and QDQ insertion are ORT's.
What edgecls decides is the recipe for the target (targets.py), one row each:

    target     activations     weights              when the recipe misses its tolerance
    x86-vnni   u8 asymmetric   s8 per-channel       keep sensitive layers in float
    x86-avx2   u8 asymmetric   s8 per-channel       first give the layers whose u8 x s8 pairs
    portable                                        saturate VPMADDUBSW u8 weights (ORT then
                                                    runs them on its exact U8U8 kernel), then
                                                    keep sensitive layers in float
    arm64      s8 symmetric    s8 per-channel       keep sensitive layers in float
    tensorrt   s8 symmetric    s8 symmetric, float  nothing: TensorRT's Q/DQ rules are fixed
                               bias (no int32 DQ)

Every CPU recipe keeps the first convolution and the classifier in float (`--exclude none`
quantizes them too). The layers a recipe changes are its `settings`:
{"kept_in_float": [...], "u8u8_weights": [...]} - recorded in the artifact's spec - and,
with min / max calibration, {"ranges": ...}: ORT's own min / max, or a quantile of each
calibration image's extremes (backends/ranges.py), written into a calibration cache of its
own that quantize_static reads like ORT's.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from edgecls import hardware, targets
from edgecls.backends import ranges as activation_ranges
from edgecls.backends.onnx.bias_correction import available as bias_correction_available
from edgecls.backends.onnx.bias_correction import bias_corrected
from edgecls.backends.onnx.container import write_spec
from edgecls.errors import UnsupportedOptionError
from edgecls.io import sha256
from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# ORT's `distribution` calibrator picks thresholds that clip most of the activation range
# on CNN classifiers (accuracy collapses to near chance): refused rather than offered.
REFUSED_METHODS = {"distribution": "ORT's 'distribution' calibration collapses the accuracy of "
                                   "CNN classifiers; use minmax, entropy or percentile"}
# ORT's histogram calibrators (entropy, percentile) keep every activation of every
# calibration image in memory and need equal-sized batches: bounded here, and said so.
HISTOGRAM_MAX_IMAGES = 64


@dataclass(frozen=True)
class OrtRecipe:
    """What ONNX Runtime's quantizer is asked for on one target."""
    activations: str                         # QuantType name
    symmetric: bool = False                  # activations and weights with zero points 0
    float_bias: bool = False                 # TensorRT's parser takes no int32 bias DQ
    keep_first_last: bool = True
    remedies: tuple[str, ...] = ("float",)   # what the recipe search may change, in order
    bias_correction: bool = True             # NNCF's, where installed (bias_correction.py)

    @property
    def short(self) -> str:
        """activations/weights, as ORT's documentation writes them: u8/s8, s8/s8."""
        return {"QUInt8": "u8/s8", "QInt8": "s8/s8"}[self.activations]

    def describe(self) -> dict[str, str]:
        act = "s8 symmetric" if self.symmetric else "u8 asymmetric"
        weights = "s8 symmetric per-channel" if self.symmetric else "s8 per-channel"
        return {"activations": act,
                "weights": weights + (", float bias" if self.float_bias else "")}


_AVX2_SAFE = OrtRecipe("QUInt8", remedies=("u8u8 weights", "float"))
RECIPES: dict[str, OrtRecipe] = {
    "x86-vnni": OrtRecipe("QUInt8"),
    "x86-avx2": _AVX2_SAFE,
    "portable": _AVX2_SAFE,
    "arm64": OrtRecipe("QInt8", symmetric=True),
    # TensorRT's Q/DQ rules are fixed and its float bias is what its parser takes
    "tensorrt": OrtRecipe("QInt8", symmetric=True, float_bias=True, remedies=(),
                          bias_correction=False),
}


def first_and_last_layers(path: Path) -> list[str]:
    """Names of the first convolution, the grouped (depthwise) convolutions it feeds, and
    the final classifier (Gemm/MatMul) node.

    Keeping the first and last in float is the usual mixed-precision recipe for CNN
    classifiers: the first sees raw normalised pixels, the last decides the ranking of
    near-equal classes, and both are tiny. Measured on EfficientNet-Lite0 with the photo
    crops: top-1 agreement with FP32 went from 92.6% to 96.3% at unchanged latency.
    The depthwise convolution right after the first (MobileNet v2/v3, EfficientNet) holds
    the largest share of the weight-rounding error (9 weights per channel, BatchNorm folded
    in) and costs little in float: it reads the first convolution's float output. Measured
    (ONNX Runtime, x86-vnni recipe with bias correction, 351 verification crops, AMD EPYC
    with VNNI): mean KL to FP32 EfficientNet-Lite0 0.0243 -> 0.0147 at the same latency
    (4.3 vs 4.2 ms, FP32 9.5 ms), EfficientNet-Lite1 0.0534 -> 0.0148."""
    import onnx
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    convs = [n for n in nodes if n.op_type == "Conv"]
    heads = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    if not convs:
        return heads[-1:]
    readers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    fed, tensors = [], list(convs[0].output)
    for _ in range(3):      # through the activation after it (Relu, Clip, x * sigmoid(x))
        reached = [n for t in tensors for n in readers.get(t, [])]
        fed += [n.name for n in reached if n.op_type == "Conv" and _group(n) > 1]
        tensors = [t for n in reached if n.op_type in _ACTIVATIONS for t in n.output]
    return [convs[0].name] + list(dict.fromkeys(fed)) + heads[-1:]


#: what may sit between the first convolution and a depthwise convolution it feeds
_ACTIVATIONS = ("Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Mul")


def _group(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def weighted_layers(path: Path) -> list[str]:
    """Nodes with weights the recipe quantizes: every convolution (depthwise included),
    Gemm and MatMul."""
    import onnx
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return [n.name for n in nodes if n.op_type in ("Conv", "Gemm", "MatMul")]


class BatchReader:
    """ORT's CalibrationDataReader over model-input batches: get_next() for the
    calibrators, iteration for qdq_loss_debug.collect_activations."""

    def __init__(self, batches: Iterable[np.ndarray], input_name: str = "input"):
        self.input_name = input_name
        self._batches = batches
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return ({self.input_name: b} for b in self._batches)

    def rewind(self) -> None:
        self._it = iter(self._batches)


def check_recipe(calib_method: str | None, target: str | None) -> None:
    """Refuse a calibration method or target this module has no recipe for."""
    method = (calib_method or "minmax").lower()
    if method in REFUSED_METHODS:
        raise UnsupportedOptionError(REFUSED_METHODS[method])
    if method not in CALIBRATION_METHODS:
        raise UnsupportedOptionError(f"unknown calibration method {method!r}; choose "
                                     f"{', '.join(CALIBRATION_METHODS)}")
    targets.resolve(target)


class OrtQuantizer:
    """ORT's quantize_static for one FP32 model, calibration set and target: the model is
    pre-processed once and calibrated once (ORT's calibration cache), after which any
    variant of the recipe takes about a second - what makes a per-layer search affordable."""

    def __init__(self, fp32_path: Path, spec: ModelSpec, calibration, work: Path, *,
                 target: str = "x86-vnni", calib_method: str | None = None,
                 exclude: Sequence[str] | None = None, bias_correction: bool | None = None,
                 rounded: tuple[Path, dict[str, Any]] | None = None):
        """`exclude`: layers kept in float from the start (--exclude; ["none"] quantizes the
        first and last layers too). `bias_correction`: None does what the target's recipe
        says (where NNCF is installed); False turns it off (what it gains is measured so).
        `rounded`: (the FP32 export of the adaptively rounded model, its facts): its weights
        are quantized instead of `fp32_path`'s, which stays the parent and gives the layers
        kept in float their weights."""
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.fp32_path, self.spec, self.target = Path(fp32_path), spec, target
        self.recipe = RECIPES[target]
        self.exclude = list(exclude or [])
        self._fp32: dict[str, Any] | None = None
        self.bias_correction: dict[str, Any] | None = None
        self.rounding = rounded[1] if rounded else None
        quantized_from = Path(rounded[0]) if rounded else self.fp32_path
        wanted = self.recipe.bias_correction if bias_correction is None else bias_correction
        if wanted and bias_correction_available():
            # the FP32 model stays the parent; a corrected copy of it is quantized
            corrected = Path(work) / "bias-corrected.onnx"
            # the layers that start in float are left alone: each corrected layer's bias
            # then answers for the quantized layers before it as they will be
            ignored = self.default_settings()["kept_in_float"]
            changed = bias_corrected(quantized_from, spec, calibration, corrected, ignored)
            if changed is not None:
                quantized_from = corrected
                self.bias_correction = {"tool": "nncf (full bias correction)", "layers": changed}
        self.method = (calib_method or "minmax").lower()
        self.calibration = _bounded(calibration, self.method)
        self.prepared = Path(work) / "prepared.onnx"
        self.cache = Path(work) / "calibration.json"
        self._extremes: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        # BatchNorm is already folded by the exporter; skipping ORT's graph optimisation keeps
        # tensor names equal to the FP32 artifact's, which the SQNR diagnostics rely on.
        quant_pre_process(str(quantized_from), str(self.prepared), skip_optimization=True)
        import onnx
        graph = onnx.load(str(self.prepared), load_external_data=False).graph
        self.weights = {n.name: n.input[1] for n in graph.node
                        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1}

    def default_settings(self) -> dict[str, list[str]]:
        """The target's starting point: --exclude, plus the first conv and the classifier
        unless `--exclude none`."""
        kept = list(self.exclude)
        if kept == ["none"]:
            kept = []
        elif self.recipe.keep_first_last:
            kept += [n for n in first_and_last_layers(self.fp32_path) if n not in kept]
        return {"kept_in_float": kept, "u8u8_weights": []}

    @property
    def range_choices(self) -> tuple[str, ...]:
        """The activation ranges (backends/ranges.py) this quantizer offers: ORT's own
        ("minmax": whatever --calib-method calibrates), and with min / max calibration the
        quantiles of the images' extremes too."""
        return tuple(activation_ranges.ACTIVATION_RANGES) if self.method == "minmax" else ("minmax",)

    def bases(self, start: int) -> list[tuple[str, dict[str, Any]]]:
        """(label, settings) of this quantizer's base recipes as the search's `start`: its
        default settings with each of its activation ranges (what ONNX Runtime's search and
        OpenVINO's QDQ candidates both start from)."""
        return [(self.label + activation_ranges.label(ranges),
                 {**self.default_settings(), "start": start, "ranges": ranges})
                for ranges in self.range_choices]

    def quantize(self, settings: dict[str, Any], out: Path,
                 spec: ModelSpec | None = None) -> None:
        """Write the QDQ model for `settings`; its recipe goes into `spec` (when given)."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        # removable activations (Relu/Clip before a Q) stay in the graph: a layer kept in float
        # reads the tensor before its Q/DQ (_float_layers_as_in_fp32), which must be clipped
        extra: dict[str, Any] = {"CalibMaxIntermediateOutputs": 16,
                                 "QDQKeepRemovableActivations": True}
        if self.recipe.symmetric:
            extra.update(ActivationSymmetric=True, WeightSymmetric=True)
        if self.recipe.float_bias:
            extra["QuantizeBias"] = False
        if self.method == "percentile":
            extra["CalibPercentile"] = 99.999
        # u8 weights make ORT pick its U8U8 GEMM, which never saturates (ORT's documented
        # remedy, here for single layers rather than the whole session)
        overrides = {self.weights[n]: [{"axis": 0, "quant_type": QuantType.QUInt8}]
                     for n in settings.get("u8u8_weights", []) if n in self.weights}
        if overrides:
            extra["TensorQuantOverrides"] = overrides
        batch_size = 8 if self.method == "minmax" else 1
        if self.method == "entropy" and not self.cache.exists():
            self._entropy_ranges(batch_size, extra["CalibMaxIntermediateOutputs"])
        cache = self._cache_for(settings.get("ranges", "minmax"))
        quantize_static(
            str(self.prepared), str(out),
            calibration_data_reader=BatchReader(self.calibration.batches(self.spec, batch_size)),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=getattr(QuantType, self.recipe.activations),
            weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax,
                              "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[self.method],
            nodes_to_exclude=list(settings.get("kept_in_float", [])),
            nodes_to_quantize=settings.get("only"),       # a one-layer probe
            extra_options=extra,
            calibration_cache_path=str(cache))
        _float_layers_as_in_fp32(out, self._fp32_initializers())
        if spec is not None:
            self.describe(spec, settings)
            write_spec(out, spec)

    def _fp32_initializers(self) -> dict[str, Any]:
        """The FP32 model's weights by name, read once (a search quantizes dozens of times)."""
        if self._fp32 is None:
            import onnx
            self._fp32 = {i.name: i for i in onnx.load(str(self.fp32_path)).graph.initializer}
        return self._fp32

    def _cache_for(self, ranges: str) -> Path:
        """The calibration cache quantize_static reads for these activation ranges: ORT's own
        (written by its calibrator on first use), or one set from the images' extremes."""
        if ranges == "minmax":
            return self.cache
        activation_ranges.check(ranges)
        path = self.cache.with_name(f"calibration.{ranges}.json")
        if not path.exists():
            from onnxruntime.quantization import CalibrationMethod
            from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

            data = {}
            for name, (minima, maxima) in self._per_image_extremes().items():
                low, high = activation_ranges.from_extremes(minima, maxima, ranges)
                data[name] = TensorData(lowest=low.reshape(1), highest=high.reshape(1))
            save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)
        return path

    def _per_image_extremes(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every tensor ORT's calibrator would calibrate -> (its minimum on each calibration
        image, its maximum on each): the prepared model run image by image with those tensors
        as outputs."""
        if self._extremes is None:
            import onnxruntime
            from onnxruntime.quantization.calibrate import MinMaxCalibrater

            # the calibrator loads the model with its shapes inferred and chooses the tensors
            calibrator = MinMaxCalibrater(self.prepared)
            model = calibrator.model
            names, value_infos = calibrator.select_tensors_to_calibrate(model)
            outputs = {o.name for o in model.graph.output}
            model.graph.output.extend(value_infos[n] for n in sorted(names) if n not in outputs)
            session = onnxruntime.InferenceSession(model.SerializeToString(),
                                                   providers=["CPUExecutionProvider"])
            wanted = [o.name for o in session.get_outputs() if o.name in names]
            feed = session.get_inputs()[0].name
            minima, maxima = [], []
            for batch in self.calibration.batches(self.spec, 1):
                values = session.run(wanted, {feed: batch})
                minima.append([float(v.min()) for v in values])
                maxima.append([float(v.max()) for v in values])
            low, high = np.array(minima), np.array(maxima)
            self._extremes = {n: (low[:, i], high[:, i]) for i, n in enumerate(wanted)}
        return self._extremes

    def _entropy_ranges(self, batch_size: int, max_outputs: int) -> None:
        """Entropy (KL) calibration ranges, into the calibration cache quantize_static reads.

        quantize_static cannot pass histogram sizes to ORT's entropy calibrator, whose
        defaults (128 bins, 128 quantized bins) leave it one candidate threshold: the whole
        range, i.e. min/max (every activation scale of EfficientNet-Lite0 and SqueezeNet came
        out equal to min/max's). With TensorRT's entropy calibration sizes (2048 bins searched
        down to 128) it clips the tails as the method intends."""
        from onnxruntime.quantization import CalibrationMethod
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

        with tempfile.TemporaryDirectory(prefix="edgecls-entropy-") as tmp:
            calibrator = create_calibrator(
                self.prepared, [], augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=CalibrationMethod.Entropy,
                extra_options={"num_bins": 2048, "num_quantized_bins": 128,
                               "max_intermediate_outputs": max_outputs})
            calibrator.collect_data(BatchReader(self.calibration.batches(self.spec, batch_size)))
            save_tensors_data(calibrator.compute_data(), self.cache)

    @property
    def label(self) -> str:
        """"u8/s8 + adaptive rounding + bias correction": the recipe and what was done to the
        model it quantizes (what a search's base recipe is called, in ONNX Runtime and in
        the OpenVINO IR converted from its QDQ model)."""
        return (self.recipe.short + (" + adaptive rounding" if self.rounding else "")
                + (" + bias correction" if self.bias_correction else ""))

    def facts(self, settings: dict[str, Any]) -> dict[str, Any]:
        """What spec.quantization records of this recipe (an OpenVINO IR converted from the
        QDQ model records the same)."""
        import onnxruntime

        ranges = settings.get("ranges", "minmax")
        return {"tool": f"onnxruntime {onnxruntime.__version__}", "method": self.method,
                **({"activation_ranges": activation_ranges.describe(ranges)}
                   if ranges != "minmax" else {}),
                "format": "QDQ", **self.recipe.describe(),
                "kept_in_float": list(settings.get("kept_in_float", [])),
                "u8u8_weights": list(settings.get("u8u8_weights", [])),
                **({"rounding": self.rounding} if self.rounding else {}),
                **({"bias_correction": self.bias_correction} if self.bias_correction else {}),
                **self.calibration.recipe()}

    def describe(self, spec: ModelSpec, settings: dict[str, list[str]]) -> None:
        """Fill spec.quantization / parent / tools with this recipe."""
        import onnxruntime

        spec.quantization = {**(spec.quantization or {}), **self.facts(settings)}
        spec.parent = {"format": "onnx", "precision": "fp32",
                       "sha256": sha256(self.fp32_path, 16), "weights": spec.weights}
        spec.tools["onnxruntime"] = onnxruntime.__version__


def _float_layers_as_in_fp32(path: Path, fp32: dict[str, Any]) -> None:
    """Make every layer left in float (kept by the recipe or the search, or outside a
    one-layer probe) the FP32 model's layer: its own weights and bias, run in float on the
    float tensor its input was quantized from. `fp32`: the FP32 model's initializers by name.

    The bias: bias correction shifts the bias of every layer it expects quantized; a layer
    left in float would carry a shift for an error it does not have. Restoring the FP32 bias:
    EfficientNet-Lite0, its first two depthwise convolutions kept in float, mean KL to FP32 on
    the 351 verification crops 0.055 -> 0.015 (AMD EPYC, VNNI).

    The input: ONNX Runtime (its WeightBiasQuantization graph optimisation, 1.32 here) reads a
    Conv/Gemm with float weights between a DequantizeLinear and a QuantizeLinear as a QDQ unit
    whose weights the quantizer forgot, and quantizes them itself when the session loads: per
    tensor, asymmetric. A layer kept in float in the middle of a network is exactly that, so
    ORT ran it worse than quantizing it at all (the same two layers, no bias correction: KL
    0.082 -> 0.21 on 117 verification crops; 0.047 with ORT's graph optimisations off). Fed
    from the tensor before the Q/DQ pair, the layer is no QDQ unit and stays float; the layer
    producing that tensor then runs in float too (on its int8-rounded weights), which costs
    speed (Lite0 above: 4.8 -> 6.5 ms, FP32 9.9 ms), not accuracy. A float layer whose input
    is not a Q/DQ pair (the first convolution, fed by the image) is fed as it was."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    changed = False
    for node in graph.node:
        weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
        if (node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or weight is None
                or weight.data_type != onnx.TensorProto.FLOAT):
            continue                                       # a quantized layer: its weights are DQ'd
        for name in node.input[1:]:
            if name in initializers and name in fp32 and initializers[name] != fp32[name]:
                initializers[name].CopyFrom(fp32[name])
                changed = True
        dq = producer.get(node.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[0] = q.input[0]
            changed = True
    if changed:
        _drop_unread(graph)
        onnx.save(model, str(path))


def _drop_unread(graph) -> None:
    """Remove the Q/DQ nodes nothing reads any more, then the initializers nothing reads."""
    while True:
        read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        unread = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                  and not any(out in read for out in n.output)]
        if not unread:
            break
        for node in unread:
            graph.node.remove(node)
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)


def _bounded(calibration, method: str):
    if method != "minmax" and len(calibration) > HISTOGRAM_MAX_IMAGES:
        log.warning("%s calibration keeps all activations in memory: using %d of %d images",
                    method, HISTOGRAM_MAX_IMAGES, len(calibration))
        return type(calibration)(calibration.images.subset(HISTOGRAM_MAX_IMAGES),
                                 calibration.spec, calibration.source)
    return calibration


def quantize_onnx(fp32_path: Path, spec: ModelSpec, out: Path, calibration, *,
                  calib_method: str | None = None, target: str = "x86-vnni",
                  exclude: Sequence[str] | None = None) -> None:
    """One INT8 QDQ model with the target's recipe as it is (no search): what TensorRT's
    explicit quantization starts from."""
    with tempfile.TemporaryDirectory(prefix="edgecls-q-") as work:
        quantizer = OrtQuantizer(fp32_path, spec, calibration, Path(work), target=target,
                                 calib_method=calib_method, exclude=exclude)
        spec.quantization = targets.record(targets.resolve(target), hardware.cpu().int8_isa)
        quantizer.quantize(quantizer.default_settings(), out, spec)
