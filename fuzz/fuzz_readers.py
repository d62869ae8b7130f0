"""Open-ended, coverage-guided fuzzing of edgecls' readers of untrusted bytes (atheris).

tests/test_fuzz.py runs a fixed few hundred cases in CI; this harness runs for as long as
you let it, from a corpus you give it (real artifacts and images are good seeds):

    pip install atheris
    python fuzz/fuzz_readers.py image  -max_total_time=600 fuzz/corpus-image/
    python fuzz/fuzz_readers.py tflite -max_total_time=600 fuzz/corpus-tflite/

Targets: image (load_rgb), tflite (the TFLite metadata reader), engine (the TensorRT header
reader), spec (ModelSpec.from_json, then an image preprocessed with what it accepted), pt2
(the spec member of a .pt2 archive, read capped), onnx (ONNX metadata through ONNX Runtime).
The property is the tests': an input works or raises an EdgeclsError; anything else is a
crash, and atheris saves the input that caused it.
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np

os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")   # millions of broken images: no chatter
with atheris.instrument_imports():
    import imagesize  # noqa: F401  (the header reader load_rgb trusts first)
    from edgecls.backends.onnx.container import read_spec as onnx_spec
    from edgecls.backends.tensorrt.container import read_engine
    from edgecls.backends.tflite.container import spec_of as tflite_spec
    from edgecls.backends.torch.container import spec_text as pt2_spec_text
    from edgecls.imaging.preprocess import load_rgb, preprocess
    from edgecls.errors import EdgeclsError
    from edgecls.spec import ModelSpec

_FILE = Path(tempfile.mkdtemp(prefix="edgecls-fuzz-"))


def _through_file(suffix: str, read):
    def target(data: bytes) -> None:
        path = _FILE / f"input{suffix}"
        path.write_bytes(data)
        read(path)
    return target


def _spec_then_use(data: bytes) -> None:
    """A spec that is accepted is usable: a small image preprocesses with it (specs whose
    input is large are only parsed: one case would take seconds)."""
    spec = ModelSpec.from_json(data.decode("utf-8", "replace"), "fuzz")
    h, w = spec.input_size
    if h * w <= 256 * 256 and (spec.resize or 0) <= 1024:
        preprocess([_IMAGE], spec)


_IMAGE = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)


TARGETS = {
    "image": lambda data: load_rgb(data, max_pixels=1 << 22),
    "tflite": lambda data: tflite_spec(data, Path("fuzz.tflite")),
    "engine": _through_file(".engine", read_engine),
    "spec": _spec_then_use,
    "pt2": lambda data: pt2_spec_text(io.BytesIO(data), Path("fuzz.pt2")),
    "onnx": _through_file(".onnx", onnx_spec),
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        raise SystemExit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv.pop(1)]

    def one_input(data: bytes) -> None:
        try:
            target(data)
        except EdgeclsError:
            pass     # the documented outcome for bad input

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
