"""Property-based fuzzing of everything that reads untrusted bytes: image decoding, the TFLite
metadata reader, the TensorRT header reader, ModelSpec.from_json and ONNX metadata reading.

The property, for every input: it works, or it raises an EdgeclsError - never another
exception, never a hang. Inputs are random bytes and real files (exported in this session)
with bytes replaced, inserted and cut. Deterministic (derandomize, no example database) and
bounded, so CI sees the same few hundred cases every run; `fuzz/` has the open-ended
harness for long local runs.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecls.errors import ArtifactError, EdgeclsError, ImageReadError

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
FEW = settings(FUZZ, max_examples=60)     # for readers that cost ~10 ms per case


@st.composite
def mutations(draw, seed: bytes, focus: int = 64) -> bytes:
    """`seed` with a few bytes replaced (mostly in its first `focus` bytes, where headers
    are), some inserted, and maybe cut short."""
    data = bytearray(seed)
    n = len(data)
    anywhere = st.integers(0, max(n - 1, 0))
    place = st.one_of(st.integers(0, max(min(focus, n) - 1, 0)), anywhere)
    for pos, value in draw(st.lists(st.tuples(place, st.integers(0, 255)), max_size=8)):
        if pos < len(data):
            data[pos] = value
    for pos, blob in draw(st.lists(st.tuples(place, st.binary(max_size=8)), max_size=2)):
        data[pos:pos] = blob
    cut = draw(st.one_of(st.none(), anywhere))
    return bytes(data if cut is None else data[:cut])


def works_or_user_error(call, *ok_types: type):
    """The property: a result of `ok_types`, or an EdgeclsError with a one-line message."""
    try:
        result = call()
    except EdgeclsError as e:
        assert "\n" not in str(e), str(e)
        return None
    assert isinstance(result, ok_types), type(result)
    return result


# -- image decoding ------------------------------------------------------------------------------
def _seed_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    seeds = {ext: cv2.imencode(ext, rgb)[1].tobytes()
             for ext in (".png", ".jpg", ".bmp", ".webp", ".tiff", ".ppm")}
    from PIL import Image
    import io
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "GIF")
    seeds[".gif"] = buf.getvalue()
    return seeds


SEED_IMAGES = _seed_images()


def _decoded(data: bytes):
    from edgecls.calibration.preprocess import load_rgb
    rgb = works_or_user_error(lambda: load_rgb(data, max_pixels=1 << 20), np.ndarray)
    if rgb is not None:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert rgb.shape[0] * rgb.shape[1] <= 1 << 20


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_as_an_image(data):
    _decoded(data)


@FUZZ
@given(st.sampled_from(sorted(SEED_IMAGES)).flatmap(lambda ext: mutations(SEED_IMAGES[ext])))
def test_mutated_images(data):
    _decoded(data)


@FUZZ
@given(st.integers(0, 2 ** 31 - 1), st.integers(0, 2 ** 31 - 1), st.sampled_from([0, 2, 4, 6]))
def test_png_headers_claiming_any_size(width, height, color_type):
    """The header is believed before decoding: a claim over the limit is refused, whatever
    the data that follows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    from edgecls.calibration.preprocess import load_rgb
    if width * height > 1 << 20:
        with pytest.raises(ImageReadError, match="over the limit"):
            load_rgb(png, max_pixels=1 << 20)
    else:
        _decoded(png)


# -- the TFLite metadata reader (a flatbuffer reader of our own) ------------------------------------
@pytest.fixture(scope="module")
def tflite_bytes(digits_tflite_fp32) -> bytes:
    return digits_tflite_fp32.read_bytes()


def _tflite_spec(data: bytes):
    from edgecls.backends.tflite.container import spec_of
    from edgecls.spec import ModelSpec
    works_or_user_error(lambda: spec_of(data, Path("fuzz.tflite")), ModelSpec)


@FUZZ
@given(data=st.data())
def test_mutated_tflite_metadata(tflite_bytes, data):
    # the header and root table lead the file; the metadata and its buffer end it
    blob = bytearray(data.draw(mutations(tflite_bytes, focus=256)))
    for back, value in data.draw(st.lists(st.tuples(st.integers(1, 4096), st.integers(0, 255)),
                                          max_size=6)):
        if back <= len(blob):
            blob[-back] = value
    _tflite_spec(bytes(blob))


@FUZZ
@given(st.binary(max_size=512))
def test_random_flatbuffers(body):
    _tflite_spec(body[:4] + b"TFL3" + body[4:])


# -- the TensorRT engine header ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine_bytes(digits_onnx, tmp_path_factory) -> bytes:
    from edgecls.backends.tensorrt.container import write_engine
    from edgecls.formats import read_spec
    path = write_engine(tmp_path_factory.mktemp("fuzz-trt") / "d.engine",
                        read_spec(digits_onnx).derive(format="tensorrt"), bytes(range(256)) * 8)
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_mutated_engine_headers(engine_bytes, tmp_path_factory, data):
    from edgecls.backends.tensorrt.container import read_engine
    path = tmp_path_factory.getbasetemp() / "fuzz.engine"
    path.write_bytes(data.draw(mutations(engine_bytes, focus=40)))
    works_or_user_error(lambda: read_engine(path), tuple)


# -- ModelSpec.from_json ---------------------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _from_json(text: str):
    from edgecls.spec import ModelSpec
    spec = works_or_user_error(lambda: ModelSpec.from_json(text, "fuzz"), ModelSpec)
    if spec is not None:              # what was accepted is usable: it round-trips
        assert ModelSpec.from_json(spec.to_json(), "again") == spec
        spec.input_shape(2), spec.label(0)


@FUZZ
@given(JSON)
def test_any_json_as_a_spec(value):
    _from_json(json.dumps(value))


@FUZZ
@given(st.dictionaries(st.sampled_from(["name", "architecture", "num_classes", "labels",
                                        "input_size", "resize", "interpolation", "mean", "std",
                                        "layout", "channel_order", "normalization_in_graph",
                                        "output", "quantization", "notes", "tools"]),
                       JSON, max_size=4))
def test_a_real_spec_with_fields_replaced(changes):
    from edgecls.spec import ModelSpec
    base = json.loads(ModelSpec("m", "a", 3, ["x", "y", "z"]).to_json())
    _from_json(json.dumps({**base, **changes}))


@FUZZ
@given(st.text(max_size=200))
def test_any_text_as_a_spec(text):
    _from_json(text)


# -- ONNX metadata --------------------------------------------------------------------------------------
@FEW
@given(data=st.data())
def test_mutated_onnx_metadata(digits_onnx, tmp_path_factory, data):
    from edgecls.formats import read_spec
    from edgecls.spec import ModelSpec
    original = digits_onnx.read_bytes()
    path = tmp_path_factory.getbasetemp() / "fuzz.onnx"
    path.write_bytes(data.draw(mutations(original, focus=len(original))))
    works_or_user_error(lambda: read_spec(path), ModelSpec)


@FEW
@given(st.binary(max_size=256))
def test_random_bytes_as_onnx(body):
    from edgecls.backends.onnx.container import read_spec
    from edgecls.spec import ModelSpec
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
        f.write(body)
        f.flush()
        works_or_user_error(lambda: read_spec(Path(f.name)), ModelSpec)


def test_the_fuzz_seeds_are_valid():
    """The mutations start from real, decodable files (else they would test nothing)."""
    from edgecls.calibration.preprocess import load_rgb
    for ext, data in SEED_IMAGES.items():
        assert load_rgb(data).shape == (12, 16, 3), ext
    with pytest.raises(ArtifactError):
        from edgecls.spec import ModelSpec
        ModelSpec.from_json("[]")
