"""TFLite / LiteRT: litert-torch export, ai-edge-quantizer FP16 and full-integer INT8, the
spec as a TFLite metadata entry, and LiteRT sessions (XNNPACK, delegates)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgecls import targets
from edgecls.backends.base import Format, TargetedOptions, option
from edgecls.errors import UnsupportedOptionError

INT8_IO = ("int8", "uint8")


def io_type(value: Any) -> str | None:
    """--int8-io's value: "int8" / "uint8", or None for float I/O."""
    if value in (None, False, "", "float32", "none"):
        return None
    if value is True:
        return "int8"
    if str(value).lower() in INT8_IO:
        return str(value).lower()
    raise UnsupportedOptionError(f"--int8-io takes int8 or uint8, not {value!r}")


@dataclass(frozen=True)
class TFLiteOptions(TargetedOptions):
    int8_io: Any = option("int8 (or uint8) input and output", int8_only=True, nargs="?",
                          const="int8")
    allow_float_ops: bool = option("TFLite INT8: let the search keep ops in float when "
                                   "full-integer misses the tolerance (the model is then not "
                                   "full-integer; --qat trains a full-integer model instead)",
                                   int8_only=True, default=False)

    def check(self, precision: str) -> None:
        io_type(self.int8_io)
        if precision == "int8":
            if targets.resolve(self.target).device != "cpu":
                raise UnsupportedOptionError(f"--target {self.target} is not a TFLite target; "
                                             "TFLite INT8 is the same full-integer model on "
                                             "every CPU: x86-vnni, x86-avx2, arm64, portable")


FORMAT = Format(
    "tflite", (".tflite",),
    runtime="edgecls.backends.tflite.runtime:TFLiteSession",
    requires=("ai_edge_litert|tflite_runtime",), extra="tflite",
    container="edgecls.backends.tflite.container",   # pure Python: no requirement
    exporter="edgecls.backends.tflite.export:export",
    export_requires=("torch", "litert_torch", "ai_edge_quantizer"), options=TFLiteOptions,
    description="TFLite / LiteRT (XNNPACK CPU, GPU and NPU delegates)")
