"""THE format table. A format is a row here; nothing else in edgecls branches on format names.

Exporters and runtimes are named as "module:attribute" strings and imported only when used,
so `import edgecls` stays light and a missing backend is an error that names its pip extra.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecls.errors import MissingDependencyError, UnknownFormatError

DEVICES = ("cpu", "gpu", "npu", "auto")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Format:
    name: str
    suffixes: tuple[str, ...]          # the first one is used for new artifacts
    runtime: str                       # "module:Class", a runtimes.base.Session
    requires: tuple[str, ...]          # modules the runtime needs
    extra: str                         # the pip extra that brings them
    exporter: str | None = None        # "module:function"
    export_requires: tuple[str, ...] = ()
    precisions: tuple[str, ...] = PRECISIONS
    devices: tuple[str, ...] = DEVICES
    options: tuple[str, ...] = ()      # format-specific export options it understands
    companions: tuple[str, ...] = ()   # files that belong to the artifact (OpenVINO .bin)
    # "module:function" that reads the spec without the runtime (e.g. TensorRT's header),
    # so `edgecls info` works on a machine that cannot run the artifact
    spec_reader: str | None = None
    # "module:function" naming the INT8 layers that lose most signal against the FP32 model:
    # (int8_path, fp32_onnx_path, spec, pixels, count) -> rows; None where there is none yet
    int8_diagnostics: str | None = None
    description: str = ""

    def load_runtime(self) -> Any:
        self._require(self.requires, f"the {self.name} runtime")
        return _import(self.runtime)

    def load_spec_reader(self) -> Any:
        if self.spec_reader:
            return _import(self.spec_reader)
        return self.load_runtime().read_spec

    def load_int8_diagnostics(self) -> Any:
        return _import(self.int8_diagnostics) if self.int8_diagnostics else None

    def default_device(self) -> str:
        return "cpu" if "cpu" in self.devices else "auto"

    def load_exporter(self) -> Any:
        if self.exporter is None:
            raise UnknownFormatError(f"edgecls cannot export to {self.name}")
        self._require(self.export_requires, f"the {self.name} exporter")
        return _import(self.exporter)

    def available(self) -> bool:
        return all(_installed(m) for m in self.requires)

    def _require(self, modules: tuple[str, ...], what: str) -> None:
        for module in modules:
            if not _installed(module):
                raise MissingDependencyError(f"{what} ({module.replace('|', ' or ')})",
                                             self.extra)


_TORCH_EXPORT = ("torch", "onnx", "onnxscript")

FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", (".onnx",),
           runtime="edgecls.runtimes.onnxruntime:OnnxRuntimeSession",
           requires=("onnxruntime",), extra="onnx",
           exporter="edgecls.exporters.onnx:export",
           export_requires=_TORCH_EXPORT + ("onnxruntime",),
           options=("opset", "calib_method", "exclude", "target"),
           int8_diagnostics="edgecls.quantization.debug:worst_onnx_layers",
           description="ONNX Runtime (CPU, CUDA/TensorRT/DirectML EPs, NPU EPs)"),
    Format("openvino", (".xml",),
           runtime="edgecls.runtimes.openvino:OpenVINOSession",
           requires=("openvino",), extra="openvino",
           exporter="edgecls.exporters.openvino:export",
           export_requires=_TORCH_EXPORT + ("openvino", "nncf"),
           options=("preset", "max_drop", "data", "static_batch", "bake_preprocessing",
                    "ignored_scope", "calib_method"),
           companions=(".bin",),
           description="OpenVINO IR (Intel CPU, GPU, NPU)"),
    Format("tflite", (".tflite",),
           runtime="edgecls.runtimes.tflite:TFLiteSession",
           requires=("ai_edge_litert|tflite_runtime",), extra="tflite",
           exporter="edgecls.exporters.tflite:export",
           export_requires=("torch", "litert_torch", "ai_edge_quantizer"),
           options=("int8_io",),
           description="TFLite / LiteRT (XNNPACK CPU, GPU and NPU delegates)"),
    Format("tensorrt", (".engine", ".plan"),
           runtime="edgecls.runtimes.tensorrt:TensorRTSession",
           requires=("tensorrt",), extra="tensorrt",
           exporter="edgecls.exporters.tensorrt:export",
           export_requires=_TORCH_EXPORT + ("tensorrt",),
           devices=("gpu", "npu", "auto"),   # npu = DLA cores
           options=("workspace_gb", "dla_core"),
           spec_reader="edgecls.tensorrt_header:read_spec",
           description="TensorRT engine (NVIDIA GPU, DLA)"),
)}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name.lower()]
    except KeyError:
        raise UnknownFormatError(
            f"unknown format {name!r}; choose one of: {', '.join(FORMATS)}") from None


def format_for_path(path: str | Path) -> Format:
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    known = ", ".join(s for f in FORMATS.values() for s in f.suffixes)
    raise UnknownFormatError(f"{path}: unknown artifact type {suffix or '(no suffix)'!r}; "
                             f"edgecls reads {known}")


def _installed(module: str) -> bool:
    """True if the module (or one of "a|b" alternatives) can be imported."""
    return any(importlib.util.find_spec(m) is not None for m in module.split("|"))


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
