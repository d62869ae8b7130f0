"""ExecuTorch INT8: PT2E with ExecuTorch's XNNPACK quantizer (int8 symmetric per-channel
weights, int8 asymmetric per-tensor static activations), conv -> ReLU6 annotated as one op,
calibrated on the CalibrationSet and lowered to XNNPACK."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from edgecls.backends import ranges as activation_ranges
from edgecls.backends.executorch.program import capture, lower, quiet
from edgecls.spec import ModelSpec


def quantizer(observer: str = "minmax", keep_float: Sequence[str] = (), qat: bool = False,
              fake_quant: Callable[[Any, bool], Any] | None = None):
    """ExecuTorch's XNNPACKQuantizer: int8 symmetric per-channel weights, int8 asymmetric
    per-tensor static activations; `observer` picks the activation observer ("minmax":
    global min/max, "histogram": the quantizer's default); the graph nodes named in
    `keep_float` (and the ops they alone feed) stay in float. `fake_quant(spec,
    per_channel)` replaces the observers (QAT)."""
    import dataclasses

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.observer import MinMaxObserver

    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    if fake_quant is not None:
        config = dataclasses.replace(
            config, input_activation=fake_quant(config.input_activation, False),
            output_activation=fake_quant(config.output_activation, False),
            weight=fake_quant(config.weight, True))
    elif observer == "minmax":
        act = dataclasses.replace(config.input_activation,
                                  observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2 ** -12))
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    q = XNNPACKQuantizer().set_global(config)
    fused = conv_clamp_fusion(config)
    if not qat:
        # PTQ's prepare_pt2e folds BatchNorm into the convolutions before it annotates, so the
        # quantizer's conv+BN patterns can never match there - yet building each pattern is a
        # torch.export of its own (14 s of every candidate on EfficientNet-Lite0). An instance
        # attribute, so the class and QAT (which needs the patterns) are untouched;
        # test_executorch checks that PTQ annotates the same nodes with and without them.
        q.SUPPORTED_PATTERNS = [p for p in q.SUPPORTED_PATTERNS if not p.is_qat]
    if keep_float:
        kept = set(keep_float)
        q.set_filter_function(lambda node: node.name not in kept)
        fused.filter_fn = lambda node: node.name not in kept
    from torchao.quantization.pt2e.quantizer import ComposableQuantizer
    return ComposableQuantizer([fused, q])     # the fusion first: XNNPACK skips what it marked


def conv_clamp_fusion(config):
    """A PT2E Quantizer that runs before the XNNPACK one (the class is made here: torchao is
    imported only when exporting)."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer

    class _ConvClampFusion(Quantizer):
        """Annotates conv2d -> hardtanh (ReLU6) as ONE quantized op, as the XNNPACK quantizer
        does for conv -> relu and as XNNPACK runs it (a conv with output clamping).

        Why: ExecuTorch 1.4's XNNPACKQuantizer annotates the conv alone and makes hardtanh
        share the conv's observer, so the ReLU6 output is quantized over the conv's whole
        pre-clamp range: about 30 of 256 levels fall in [0, 6]. On EfficientNet-Lite0 (all
        ReLU6) that gave KL 0.54 to FP32 and 47% agreement on verification photos. Public
        PT2E API only: annotations, and the XNNPACK quantizer skips annotated nodes."""

        def __init__(self, config):
            super().__init__()
            self.config, self.filter_fn = config, None

        def annotate(self, gm):
            import torch
            clamps = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
            for clamp in gm.graph.nodes:
                conv = clamp.args[0] if clamp.op == "call_function" and clamp.target in clamps else None
                if (conv is None or not isinstance(conv, torch.fx.Node)
                        or conv.target != torch.ops.aten.conv2d.default or len(conv.users) != 1
                        or (self.filter_fn is not None and not self.filter_fn(conv))):
                    continue
                inputs = {conv.args[0]: self.config.input_activation, conv.args[1]: self.config.weight}
                if len(conv.args) > 2 and isinstance(conv.args[2], torch.fx.Node) \
                        and self.config.bias is not None:
                    inputs[conv.args[2]] = self.config.bias
                conv.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map=inputs, _annotated=True)
                clamp.meta["quantization_annotation"] = QuantizationAnnotation(
                    output_qspec=self.config.output_activation, _annotated=True)
                for param in conv.args[1:3]:       # so no other annotator claims them
                    if isinstance(param, torch.fx.Node):
                        param.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
            return gm

        def validate(self, gm) -> None:
            pass

    return _ConvClampFusion(config)


def weighted_nodes(model, spec: ModelSpec) -> list[str]:
    """The conv / linear node names of the captured graph, in order (what keep_float names)."""
    import torch
    ops = {torch.ops.aten.conv2d.default, torch.ops.aten.conv1d.default,
           torch.ops.aten.linear.default}
    graph = capture(model, spec).module().graph
    return [n.name for n in graph.nodes if n.op == "call_function" and n.target in ops]


def quantize(model, spec: ModelSpec, calibration, observer: str = "minmax",
             keep_float: Sequence[str] = (), ranges: str = "minmax"):
    """The PT2E-converted INT8 model, calibrated on every calibration image, one image at a
    time; with the min / max observer, `ranges` (backends/ranges.py) says how each
    activation's range is set from the images' own extremes."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    activation_ranges.check(ranges)
    if ranges != "minmax" and observer != "minmax":
        raise ValueError(f"activation ranges {ranges!r} need the min / max observer, not {observer!r}")
    graph = capture(model, spec).module()
    with quiet():
        prepared = prepare_pt2e(graph, quantizer(observer, keep_float))
        observers = _activation_observers(prepared) if ranges != "minmax" else {}
        extremes: dict[str, list[tuple[float, float]]] = {name: [] for name in observers}
        with torch.no_grad():
            for batch in calibration.batches(spec):
                for sample in batch:
                    for obs in observers.values():
                        obs.reset_min_max_vals()
                    prepared(torch.from_numpy(sample[None]))
                    for name, obs in observers.items():
                        extremes[name].append((float(obs.min_val), float(obs.max_val)))
        for name, obs in observers.items():
            seen = np.array(extremes[name], dtype=np.float64)
            low, high = activation_ranges.from_extremes(seen[:, 0], seen[:, 1], ranges)
            obs.min_val.copy_(torch.tensor(float(low)))
            obs.max_val.copy_(torch.tensor(float(high)))
        return convert_pt2e(prepared)


def _activation_observers(prepared) -> dict[str, Any]:
    """name -> the per-tensor min / max observer of each activation the quantizer observes,
    but not the graph's input: its range is the pixels' own (backends/pixel_input.py), which
    a quantile would clip, and a weight's per-channel observer sees the same tensor on every
    image."""
    from torchao.quantization.pt2e.observer import MinMaxObserver
    modules = dict(prepared.named_modules())
    found = {}
    for node in prepared.graph.nodes:
        observer = modules.get(node.target) if node.op == "call_module" else None
        if (isinstance(observer, MinMaxObserver)
                and not any(arg.op in ("placeholder", "get_attr") for arg in node.args
                            if hasattr(arg, "op"))):
            found[node.target] = observer
    return found


def int8_program(model, spec: ModelSpec, calibration, observer: str = "minmax",
                 keep_float: Sequence[str] = (), ranges: str = "minmax"
                 ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(edge program, delegation facts, recipe facts) of the INT8 model."""
    converted = quantize(model, spec, calibration, observer, keep_float, ranges)
    edge, facts = lower(converted, spec)
    recipe = {"method": "static", "tool": "executorch XNNPACKQuantizer (PT2E)",
              "weights": "int8 symmetric per-channel",
              "activations": "int8 asymmetric per-tensor",
              "observer": {"minmax": "global min/max",
                           "histogram": "HistogramObserver"}[observer],
              **({"activation_ranges": activation_ranges.describe(ranges)}
                 if ranges != "minmax" else {}),
              "kept_in_float": list(keep_float), **calibration.recipe()}
    return edge, facts, recipe


__all__ = ["quantizer", "conv_clamp_fusion", "weighted_nodes", "quantize", "int8_program"]
