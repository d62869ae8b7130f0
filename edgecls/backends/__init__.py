"""The backends: one package per kind of artifact, each holding its format row, export,
runtime session, quantization recipes and artifact container (see base.py for the
contracts). Adding a backend is adding a folder here, named in BUILTIN.
"""
from __future__ import annotations

import importlib

from edgecls.backends.base import Format

BUILTIN = ("onnx", "openvino", "tflite", "tensorrt", "torch")


def discover() -> list[Format]:
    """The built-in rows."""
    return [importlib.import_module(f"edgecls.backends.{name}").FORMAT for name in BUILTIN]


__all__ = ["discover", "BUILTIN"]
