"""edgecls: export, quantize, run and verify image classifiers on edge runtimes.

The public API is imported lazily: `import edgecls` loads neither torch nor any backend,
so the on-device side (Classifier on an .onnx/.xml/.tflite) needs only numpy, OpenCV and
the runtime.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Classifier": "edgecls.classifier",
    "Prediction": "edgecls.classifier",
    "ModelSpec": "edgecls.spec",
    "EdgeclsError": "edgecls.errors",
    # Not edgecls/export.py and edgecls/parity.py: importing a submodule binds its name on
    # the package, which would shadow the functions edgecls.export() and edgecls.parity().
    "export": "edgecls.api",
    "parity": "edgecls.verification",
    "ParityReport": "edgecls.verification",
    "open_session": "edgecls.formats",
    "read_spec": "edgecls.formats",
    "list_models": "edgecls.zoo",
    "FORMATS": "edgecls.formats",
    # quantization-aware training (edgecls/qat_training/: a module named qat would shadow it)
    "qat": "edgecls.qat_training.training",
    "QATStudent": "edgecls.qat_training.student",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgecls' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
