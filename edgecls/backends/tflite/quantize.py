"""TFLite PTQ with ai-edge-quantizer, on the float .tflite that litert-torch wrote.

    int8  static, full-integer: int8 weights (symmetric, per-channel) and int8 activations
          (asymmetric, per-tensor) on every op the quantizer supports, calibrated on the
          shared calibration images. Graph I/O: float (one QUANTIZE after the input, one
          DEQUANTIZE before the output - the only float ops), or int8 / uint8 (--int8-io:
          no float op at all; uint8 I/O is requantized to int8 by one QUANTIZE each side).
    fp16  weight-only float16 (FLOAT_CASTING) for conv/FC weights: DEQUANTIZE fp16->fp32
          on the constants (folded by XNNPACK; GPU delegates run fp16 natively).

`op_table` / `float_ops` inspect a flatbuffer's operators and tensor types (for the
full-integer check that export runs and the tests repeat).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from edgecls.backends import ranges as activation_ranges

log = logging.getLogger("edgecls")

#: ops that may legitimately touch float tensors in a full-integer model with float I/O
BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")
_INTEGER_TYPES = {"INT8", "UINT8", "INT16", "INT32", "INT64", "BOOL"}


def signature_io(model: bytes) -> tuple[str, str]:
    """(signature key, input name) of a single-signature float model."""
    from ai_edge_litert.interpreter import Interpreter
    sigs = Interpreter(model_content=model).get_signature_list()
    if len(sigs) != 1:
        raise ValueError(f"expected one signature, found {list(sigs)}")
    key, io = next(iter(sigs.items()))
    return key, io["inputs"][0]


class Int8Quantizer:
    """ai-edge-quantizer's static full-integer recipe for one float model: calibrated ONCE
    (global min/max, below), after which a variant of the recipe - some ops kept in float -
    takes about 0.1 s (measured on EfficientNet-Lite0), which is what makes a per-op search
    affordable."""

    def __init__(self, float_model: bytes, samples: Iterable[np.ndarray],
                 int8_io: str | None = None, input_range: tuple[float, float] | None = None):
        """`input_range`: the input tensor's range when it is known rather than measured
        (backends/pixel_input: pixels - 128 times a scale, which int8 then holds exactly)."""
        self.float_model, self.int8_io = float_model, int8_io
        key, name = signature_io(float_model)
        data = [{name: np.ascontiguousarray(s[None], np.float32)} for s in samples]
        if not data:
            raise ValueError("no calibration samples")
        self.samples = len(data)
        self.per_image = _calibrate_per_image(self._quantizer(()), key, data)
        self.input_range, self.input_tensor = input_range, _input_tensor(float_model)
        self._ranges: dict[str, dict[str, Any]] = {}

    def ranges(self, method: str) -> dict[str, dict[str, Any]]:
        """Every tensor's quantization statistics (ai-edge-quantizer's form) with the
        activation ranges `method` (backends/ranges.py) sets from the per-image min / max."""
        if method not in self._ranges:
            activation_ranges.check(method)
            stats = {}
            for tensor, (template, mins, maxs) in self.per_image.items():
                stats[tensor] = dict(template)
                if mins is not None:
                    low, high = activation_ranges.from_extremes(mins, maxs, method)
                    stats[tensor].update(min=low, max=high)
            if self.input_range is not None:     # in the calibrated statistics' own shapes
                given = stats[self.input_tensor]
                given["min"] = np.full_like(given["min"], self.input_range[0])
                given["max"] = np.full_like(given["max"], self.input_range[1])
            self._ranges[method] = stats
        return self._ranges[method]

    def _quantizer(self, float_ops: Sequence[str]):
        from ai_edge_quantizer import qtyping, quantizer, recipe

        qt = quantizer.Quantizer(bytearray(self.float_model))
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
        if self.int8_io is None:   # float I/O: keep the graph's input/output tensors float
            for op in ("INPUT", "OUTPUT"):
                qt.update_quantization_recipe(".*", op, qtyping.OpQuantizationConfig(),
                                              algorithm_key="no_quantize")
        elif self.int8_io == "uint8":
            u8 = qtyping.OpQuantizationConfig(
                activation_tensor_config=qtyping.TensorQuantizationConfig(
                    num_bits=8, symmetric=False, dtype=qtyping.TensorDataType.UINT),
                weight_tensor_config=qtyping.TensorQuantizationConfig(
                    num_bits=8, symmetric=True, granularity=qtyping.QuantGranularity.CHANNELWISE),
                compute_precision=qtyping.ComputePrecision.INTEGER)
            for op in ("INPUT", "OUTPUT"):
                qt.update_quantization_recipe(".*", op, u8)
        # int8_io == "int8": the static recipe already quantizes the graph I/O to int8
        for name in float_ops:     # an op's scope is its output tensors' names, ";"-joined
            qt.update_quantization_recipe(f"(^|;){re.escape(name)}($|;)", "*",
                                          qtyping.OpQuantizationConfig(),
                                          algorithm_key="no_quantize")
        return qt

    def quantize(self, float_ops: Sequence[str] = (),
                 ranges: str = "minmax") -> tuple[bytes, dict[str, Any]]:
        """INT8 model bytes (full-integer unless `float_ops` names ops by their output
        tensor) with the activation ranges `ranges` (backends/ranges.py), plus the recipe
        facts for the spec."""
        result = self._quantizer(float_ops).quantize(self.ranges(ranges),
                                                     enable_progress_report=False)
        facts = {"method": "static", "tool": "ai-edge-quantizer", "algorithm": "min_max",
                 "weights": "int8 symmetric per-channel",
                 "activations": "int8 asymmetric per-tensor", "io": self.int8_io or "float32",
                 "activation_ranges": activation_ranges.describe(ranges),
                 "calibration_samples": self.samples}
        return bytes(result.quantized_model), facts


def _input_tensor(model: bytes) -> str:
    from ai_edge_litert.interpreter import Interpreter
    return Interpreter(model_content=model).get_input_details()[0]["name"]


def weighted_ops(model: bytes) -> list[str]:
    """Output tensor names of the convolutions and fully connected ops, in graph order."""
    return [op.output_names[0] for op in ops(model)
            if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and op.output_names]


def _calibrate_per_image(qt, key: str, data: list[dict[str, np.ndarray]]) -> dict:
    """Each tensor's statistics template and its min / max on each calibration image
    (stacked; None for tensors without statistics), from which the activation ranges are
    set (backends/ranges.py).

    ai-edge-quantizer's own calibrate() folds samples in with a moving average (weight 0.95
    on the past), which keeps roughly the last ~20 samples' ranges and clips the rest:
    measured on EfficientNet-Lite0 with the photo crops, top-1 agreement with FP32 went from
    68.5% to 92.6% (KL 0.154 -> 0.018) with global min/max, which is what ONNX Runtime and
    NNCF use. So each sample is calibrated on its own (public API) and kept."""
    seen: dict[str, list[dict[str, Any]]] = {}
    for sample in data:
        for tensor, qsv in qt.calibrate({key: [sample]}, num_threads=1).items():
            seen.setdefault(tensor, []).append(qsv)
    found = {}
    for tensor, rows in seen.items():
        rows = [r for r in rows if r]
        if not rows:
            found[tensor] = ({}, None, None)
        else:
            found[tensor] = (dict(rows[0]), np.stack([r["min"] for r in rows]),
                             np.stack([r["max"] for r in rows]))
    return found


def quantize_fp16(float_model: bytes) -> bytes:
    """Float16 weights (weight-only FLOAT_CASTING on conv / depthwise / FC)."""
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer

    qt = quantizer.Quantizer(bytearray(float_model))
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_2D_TRANSPOSE"):
        qt.add_weight_only_config(".*", qtyping.TFLOperationName(op), num_bits=16,
                                  algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    return bytes(qt.quantize(enable_progress_report=False).quantized_model)


# -- inspection ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    name: str                   # BUILTIN name, or CUSTOM:<code>
    inputs: list[str]           # tensor types
    outputs: list[str]
    output_names: list[str]     # tensor names (ai-edge-quantizer's op scope)


def ops(model: bytes) -> list[Op]:
    """Every op of every subgraph, in order."""
    from ai_edge_litert import schema_py_generated as S

    m = S.Model.GetRootAs(model, 0)
    builtins = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(S.TensorType).items() if not k.startswith("_")}
    found = []
    for g in range(m.SubgraphsLength()):
        sub = m.Subgraphs(g)
        for o in range(sub.OperatorsLength()):
            op = sub.Operators(o)
            code = m.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = builtins.get(builtin, str(builtin))
            if name == "CUSTOM":
                name = f"CUSTOM:{code.CustomCode().decode()}"
            ins = [i for i in op.InputsAsNumpy() if i >= 0]
            outs = [i for i in op.OutputsAsNumpy() if i >= 0]
            found.append(Op(name, [types[sub.Tensors(i).Type()] for i in ins],
                            [types[sub.Tensors(i).Type()] for i in outs],
                            [sub.Tensors(i).Name().decode() for i in outs]))
    return found


def op_table(model: bytes) -> list[tuple[str, list[str], list[str]]]:
    """(op name, input tensor types, output tensor types) for every op of every subgraph."""
    return [(op.name, op.inputs, op.outputs) for op in ops(model)]


def io_dtypes(model: bytes) -> tuple[str, str]:
    """The numpy dtype names of a single-input, single-output model's input and output."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=model)
    return (np.dtype(it.get_input_details()[0]["dtype"]).name,
            np.dtype(it.get_output_details()[0]["dtype"]).name)


def float_ops(model: bytes, allow_boundary: bool = True) -> list[str]:
    """Ops that compute on float tensors. With float I/O, the single QUANTIZE at the input
    and DEQUANTIZE at the output are conversions, not float compute; they are allowed when
    `allow_boundary`."""
    bad = []
    for name, ins, outs in op_table(model):
        if allow_boundary and name in BOUNDARY_OPS:
            continue
        if any(t not in _INTEGER_TYPES for t in ins + outs):
            bad.append(f"{name}({','.join(ins)}->{','.join(outs)})")
    return bad


@contextlib.contextmanager
def quiet():
    """litert-torch prints a progress tree and absl/XLA chatter; keep the CLI clean."""
    saved = {k: os.environ.get(k) for k in ("LITERT_TORCH_SHOW_PROGRESS", "TF_CPP_MIN_LOG_LEVEL",
                                            "TQDM_DISABLE")}
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    os.environ["TQDM_DISABLE"] = "1"       # ai-edge-quantizer's calibration progress bar
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
