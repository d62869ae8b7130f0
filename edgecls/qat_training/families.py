"""Which PT2E quantizer a student is trained with: one row per family of backends.

One PT2E graph cannot serve every backend, so a student is trained once per family:

  cpu       ONNX Runtime and OpenVINO on CPU targets: torchao's X86InductorQuantizer config
            (u8 asymmetric activations, s8 symmetric per-channel weights, the u8 x s8 path
            both runtimes have fast kernels for). For targets whose CPUs add u8 x s8
            products in saturating 16-bit integers (x86-avx2, portable) the weights of the
            GEMM-like layers are trained in 7 bits (-64..63): 2 x 255 x 64 stays below
            32767, so nothing saturates, and the weights are constants, so no input can
            push them out of that range (depthwise convolutions keep 8 bits: their kernels
            widen before they add).
  tensorrt  TensorRT (and ONNX made for it): symmetric s8 activations and weights, zero
            points 0, the only INT8 Q/DQ TensorRT accepts.
  tflite    LiteRT full-integer: litert-torch's own PT2E quantizer (int8 asymmetric
            activations, int8 symmetric per-channel weights, every op annotated), which its
            converter lowers to integer TFLite kernels.

Why not one graph: TensorRT needs zero points 0, which wastes half of the int8 range on the
non-negative activations the CPU recipe quantizes asymmetrically; TFLite needs every op
quantized (adds, pads, pooling) where the x86 recipe leaves the ops ONNX Runtime runs in
float; and 7-bit weights serve only the saturating x86 CPUs.

All three start from the same fake-quantize modules: activations observed with global
min/max (the ranges every PTQ tool here uses; PT2E's default moving-average and histogram
observers start far below them, see FINDINGS), weights per output channel. The quantizer
configs say is_qat=False on purpose: BatchNorm is folded into the convolutions before
prepare_qat_pt2e (qat_training.training), so the conv-BN QAT patterns have nothing to
match, and with is_qat=True litert-torch builds those patterns with a torch.export call that
torch 2.13 rejects (a plain function where a Module is required). The fake-quantize
constructors make it quantization-aware training all the same.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from edgecls import targets
from edgecls.backends.executorch.quantize import quantizer
from edgecls.errors import MissingDependencyError, UnsupportedOptionError

CPU_TARGETS = ("x86-vnni", "x86-avx2", "arm64", "portable")
SEVEN_BIT = (-64, 63)


@dataclass(frozen=True)
class Family:
    name: str
    formats: tuple[str, ...]          # the formats its students export to
    targets: tuple[str, ...]          # the INT8 targets (edgecls.targets) it serves
    make: Callable[[bool], Any]       # seven-bit weights? -> a PT2E Quantizer
    activations: str
    weights: str
    seven_bit_when_saturating: bool = False
    lowering: str = "torch.onnx (dynamo): QDQ ONNX"   # what turns the student into the artifact
    requires: tuple[tuple[str, str], ...] = (("torchao", "qat"),)   # (module, pip extra)
    #: its artifacts take pixels - 128 (scaled) where the model allows (edgecls.backends.pixel_input):
    #: a full-integer graph quantizes its input, and int8 then holds every pixel exactly
    pixel_input: bool = False

    def seven_bit(self, target: targets.Target) -> bool:
        return self.seven_bit_when_saturating and target.saturation_safe

    def quantizer(self, target: targets.Target) -> Any:
        return self.make(self.seven_bit(target))

    def weights_for(self, target: targets.Target) -> str:
        bits = "7-bit (-64..63) where a GEMM, 8-bit depthwise" if self.seven_bit(target) \
            else "8-bit"
        return f"{self.weights}, {bits}"


# -- quantization configs -------------------------------------------------------------------
def _fake_quant(spec, per_channel: bool = False):
    """`spec` with a FakeQuantize whose observer keeps the global min/max (PT2E hands it the
    spec's dtype, range and scheme)."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.observer import MinMaxObserver, PerChannelMinMaxObserver
    observer = PerChannelMinMaxObserver if per_channel else MinMaxObserver
    return dataclasses.replace(spec, observer_or_fake_quant_ctr=FakeQuantize.with_args(
        observer=observer, eps=2 ** -12))


def _x86(seven_bit: bool, symmetric: bool):
    import torch
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    base = get_default_x86_inductor_quantization_config(is_qat=False)
    act = base.input_activation
    if symmetric:
        act = dataclasses.replace(act, dtype=torch.int8, quant_min=-128, quant_max=127,
                                  qscheme=torch.per_tensor_symmetric)
    config = dataclasses.replace(base, input_activation=_fake_quant(act),
                                 output_activation=_fake_quant(act),
                                 weight=_fake_quant(base.weight, per_channel=True))
    quantizer = _seven_bit_gemms(X86InductorQuantizer) if seven_bit else X86InductorQuantizer
    return quantizer().set_global(config)


def _seven_bit_gemms(base: type) -> type:
    """`base` with 7-bit weights on the layers x86 CPUs run as u8 x s8 GEMMs (convolutions
    with groups=1, linear): the ones whose VPMADDUBSW pair sums saturate. Depthwise
    convolutions run in kernels that widen to 16 bits first, and keep 8-bit weights."""
    import torch
    gemms = {torch.ops.aten.conv2d.default: 6, torch.ops.aten.conv1d.default: 6,
             torch.ops.aten.linear.default: None}      # op -> index of its groups argument

    def groups(node) -> int:
        index = gemms[node.target]
        return node.args[index] if index is not None and len(node.args) > index else 1

    class SevenBitGemmWeights(base):
        def annotate(self, model):
            model = super().annotate(model)
            for node in model.graph.nodes:
                note = node.meta.get("quantization_annotation")
                if node.target not in gemms or note is None or groups(node) != 1:
                    continue
                weight = note.input_qspec_map.get(node.args[1])
                if weight is not None:
                    note.input_qspec_map[node.args[1]] = dataclasses.replace(
                        weight, quant_min=SEVEN_BIT[0], quant_max=SEVEN_BIT[1])
            return model

    return SevenBitGemmWeights


def cpu_quantizer(seven_bit: bool):
    return _x86(seven_bit, symmetric=False)


def tensorrt_quantizer(seven_bit: bool):
    return _x86(seven_bit, symmetric=True)


def litert_quantizer(seven_bit: bool):
    # litert-torch, torch
    from edgecls.qat_training.litert import LiteRTQuantizer, quantization_config
    return LiteRTQuantizer().set_global(quantization_config(_fake_quant))


def executorch_quantizer(seven_bit: bool):
    """ExecuTorch's XNNPACKQuantizer (int8 asymmetric activations, int8 symmetric per-channel
    weights) with the global min/max fake-quantize modules. XNNPACK widens before it adds,
    so no 7-bit weights are needed on any CPU."""
    return quantizer(fake_quant=_fake_quant)


FAMILIES: tuple[Family, ...] = (
    Family("cpu", ("onnx", "openvino"), CPU_TARGETS, cpu_quantizer,
           "u8 asymmetric per-tensor", "s8 symmetric per-channel",
           seven_bit_when_saturating=True),
    Family("tensorrt", ("tensorrt", "onnx"), ("tensorrt",), tensorrt_quantizer,
           "s8 symmetric per-tensor", "s8 symmetric per-channel"),
    Family("tflite", ("tflite",), CPU_TARGETS, litert_quantizer,
           "int8 asymmetric per-tensor", "int8 symmetric per-channel",
           lowering="litert-torch (PT2E): full-integer TFLite",
           requires=(("torchao", "qat"), ("litert_torch", "tflite")), pixel_input=True),
    Family("executorch", ("executorch",), CPU_TARGETS, executorch_quantizer,
           "int8 asymmetric per-tensor", "int8 symmetric per-channel",
           lowering="ExecuTorch (to_edge_transform_and_lower, XNNPACK): .pte",
           requires=(("torchao", "qat"), ("executorch", "executorch"))),
)


def require(family: Family) -> None:
    """A one-line error naming the pip extra when a family's tools are not installed."""
    import importlib.util

    for module, extra in family.requires:
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(f"quantization-aware training for {family.name} "
                                         f"({module})", extra)


def resolve(fmt: str, target: str | None) -> tuple[Family, targets.Target]:
    """The family and target a student for `--to fmt --target target` is trained for.
    Without a target: this machine's CPU, or the one target a format has (TensorRT)."""
    rows = [f for f in FAMILIES if fmt in f.formats]
    if not rows:
        raise UnsupportedOptionError(f"quantization-aware training has no recipe for --to {fmt}")
    if target is None and all(len(f.targets) == 1 for f in rows):
        chosen = targets.TARGETS[rows[0].targets[0]]
    else:
        chosen = targets.resolve(target)
    for family in rows:
        if chosen.name in family.targets:
            return family, chosen
    raise UnsupportedOptionError(
        f"--to {fmt} has no INT8 target {chosen.name}; QAT for {fmt} serves "
        f"{', '.join(t for f in rows for t in f.targets)}")


__all__ = ["Family", "FAMILIES", "resolve"]
