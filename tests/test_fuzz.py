"""Property-based fuzzing of everything that reads untrusted bytes: image decoding, the TFLite
metadata reader, the TensorRT header reader, the spec member of a .pt2, ModelSpec.from_json
(every field, and a spec it accepts is used: an image preprocessed with it) and ONNX
metadata reading.

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
from edgecls.spec import MAX_CLASSES, MAX_SIDE

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
    from edgecls.imaging.preprocess import load_rgb
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
    from edgecls.imaging.preprocess import load_rgb
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


# -- every spec field, as a hostile sender would write it -------------------------------------------------
def _nested(depth: int) -> object:
    value: object = {}
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


#: numbers around every bound a spec field has, and things that are not numbers
NUMBER = (st.integers(-2, 12) | st.sampled_from([255, 256, 8192, 8193, 60000, 10 ** 6, 10 ** 7,
                                                  2 ** 63, -2 ** 63])
          | st.floats(allow_nan=True, allow_infinity=True) | st.booleans() | st.none())
#: strings: what names a path, a module:function, control characters, and every choice
TEXT = st.text(max_size=12) | st.sampled_from([
    "", ".", "..", "../x", "/abs/x", ".hidden", "a/b", "a\\b", "x" * 200, "y" * 9000,
    "os:system", "subprocess:getoutput", "timm:../x", "torchvision:resnet18", "resnet18",
    "\x00", "\x1b[31m", "a\nb", "NCHW", "NHWC", "RGB", "BGR", "bilinear", "bicubic", "nearest",
    "logits", "probabilities", "fp32", "fp16", "int8", "uint8", "float32", "zoo", "factory",
    "module-file", "onnx", "program", "module", "pretrained", "none"])
ANY = JSON | NUMBER | TEXT | st.integers(0, 80).map(_nested)
SIZES = st.lists(NUMBER, max_size=4)
#: the keys edgecls reads from the dict fields
DICT_KEYS = {
    "quantization": ["target", "saturation_safe", "calibration_ids", "search", "method", "recipe"],
    "reference": ["kind", "source", "sha256", "weights", "weights_sha256", "kwargs"],
    "notes": ["static_batch", "engine_size", "engine_sha256", "engine_built_on", "dla_core",
              "best", "unknown_spec_fields"],
    "parent": ["format", "precision", "weights", "path", "sha256"],
    "tools": ["torch", "onnx", "tensorrt"],
}


def _dict_of(keys: list[str]):
    inner = ANY | st.dictionaries(st.sampled_from(["chosen", "measured_with", "candidates",
                                                   "reason", "gpu", "compute_capability"]), ANY,
                                  max_size=3) | st.lists(TEXT, max_size=3)
    return st.fixed_dictionaries({}, optional={k: inner for k in keys}) | ANY


#: per ModelSpec field, what a hostile spec could hold (test_every_spec_field_is_fuzzed
#: keeps this and VALID complete)
HOSTILE = {
    "name": TEXT, "architecture": TEXT, "num_classes": NUMBER,
    "labels": st.lists(TEXT, max_size=5) | ANY, "input_size": SIZES | ANY, "resize": NUMBER,
    "interpolation": TEXT, "mean": SIZES, "std": SIZES, "channel_order": TEXT,
    "channels": NUMBER, "layout": TEXT, "input_dtype": TEXT,
    "normalization_in_graph": NUMBER, "output": TEXT, "precision": TEXT, "format": TEXT,
    "weights": TEXT, "trained": NUMBER, "exported_from": TEXT | st.none(),
    "spec_version": NUMBER, **{name: _dict_of(keys) for name, keys in DICT_KEYS.items()},
}


_SMALL = st.text(max_size=10)
_FLOATS = st.floats(-10, 10, allow_nan=False)
#: per ModelSpec field, values that are allowed, up to the bounds (so that accepted specs
#: with hostile neighbours get used too)
VALID = {
    "name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,20}", fullmatch=True)
    .filter(lambda n: ".." not in n),
    "architecture": _SMALL, "num_classes": st.integers(1, 1000) | st.just(MAX_CLASSES),
    "labels": st.lists(_SMALL, max_size=5),
    "input_size": st.lists(st.integers(1, 40), min_size=2, max_size=2)
    | st.just([MAX_SIDE, 1]),
    "resize": st.none() | st.integers(1, 300) | st.just(MAX_SIDE),
    "interpolation": st.sampled_from(["bilinear", "bicubic", "nearest"]),
    "mean": st.lists(_FLOATS, min_size=3, max_size=3) | st.lists(_FLOATS, min_size=1, max_size=1),
    "std": st.lists(_FLOATS.filter(bool), min_size=3, max_size=3),
    "channel_order": st.sampled_from(["RGB", "BGR"]), "channels": st.sampled_from([1, 3]),
    "layout": st.sampled_from(["NCHW", "NHWC"]), "input_dtype": st.sampled_from(
        ["float32", "uint8", "int8"]), "normalization_in_graph": st.booleans(),
    "output": st.sampled_from(["logits", "probabilities"]),
    "precision": st.sampled_from(["fp32", "fp16", "int8"]) | _SMALL, "format": _SMALL,
    "weights": _SMALL, "trained": st.booleans(), "exported_from": st.none() | _SMALL,
    "spec_version": st.integers(1, 3),
    "quantization": st.none() | st.fixed_dictionaries({}, optional={
        "target": _SMALL, "saturation_safe": st.none() | st.booleans(),
        "calibration_ids": st.lists(_SMALL, max_size=3), "method": _SMALL,
        "search": st.fixed_dictionaries({}, optional={
            "chosen": st.none() | _SMALL, "measured_with": st.dictionaries(_SMALL, JSON),
            "candidates": st.lists(JSON, max_size=2), "reason": _SMALL})}),
    "reference": st.none() | st.fixed_dictionaries({}, optional={
        "kind": st.sampled_from(["zoo", "onnx", "factory", "nope"]), "source": TEXT,
        "weights": _SMALL, "kwargs": st.dictionaries(_SMALL, JSON, max_size=2)}),
    "notes": st.fixed_dictionaries({}, optional={
        "static_batch": st.none() | st.integers(1, 4096), "engine_size": st.integers(1, 10 ** 9),
        "engine_sha256": _SMALL, "engine_built_on": st.dictionaries(_SMALL, _SMALL, max_size=2),
        "dla_core": st.none() | st.integers(0, 3), "deep": st.integers(0, 30).map(_nested)}),
    "parent": st.none() | st.dictionaries(_SMALL, JSON, max_size=3),
    "tools": st.dictionaries(_SMALL, _SMALL, max_size=3),
}


@st.composite
def spec_changes(draw) -> dict:
    """One to four fields of a spec, each allowed or hostile."""
    names = draw(st.lists(st.sampled_from(sorted(HOSTILE)), min_size=1, max_size=4,
                          unique=True))
    return {name: draw(st.one_of(VALID[name], HOSTILE[name])) for name in names}


def test_every_spec_field_is_fuzzed():
    import dataclasses
    from edgecls.spec import ModelSpec
    fields = {f.name for f in dataclasses.fields(ModelSpec)}
    assert set(HOSTILE) == set(VALID) == fields


def _usable(spec) -> None:
    """A spec that was accepted works: it round-trips, and an image preprocesses with it
    (or fails with a user error, never anything else)."""
    from edgecls.imaging.preprocess import encode_png, preprocess
    from edgecls.errors import DataError
    from edgecls.spec import ModelSpec
    assert ModelSpec.from_json(spec.to_json(), "again") == spec
    spec.input_shape(2), spec.label(0), spec.summary()
    h, w = spec.input_size
    assert max(h, w, spec.resize or 1) <= MAX_SIDE and spec.num_classes <= MAX_CLASSES
    if h * w > 128 * 128 or (spec.resize or 0) > 512:
        return      # allowed up to MAX_SIDE, at a cost per case: test_security_artifacts
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    for image in (rgb, encode_png(rgb)):
        try:
            batch = preprocess([image], spec)
        except (ArtifactError, DataError) as e:
            assert "\n" not in str(e)
            continue
        assert batch.shape == spec.input_shape(1)


@settings(FUZZ, max_examples=300)
@given(spec_changes())
def test_every_spec_field_replaced(changes):
    """Each field, alone or with others, set to what a hostile spec could hold: from_json
    accepts it (and then it is usable) or raises an ArtifactError, never anything else."""
    from edgecls.spec import ModelSpec
    base = json.loads(ModelSpec("m", "a", 3, ["x", "y", "z"], input_size=(8, 8),
                                resize=10).to_json())
    try:
        spec = ModelSpec.from_json(json.dumps({**base, **changes}), "fuzz")
    except ArtifactError as e:
        assert "\n" not in str(e), str(e)
        return
    _usable(spec)


# -- the spec member of a .pt2 archive (zip), read capped ------------------------------------------------
def _pt2_seed() -> bytes:
    import io
    import zipfile
    from edgecls.spec import ModelSpec
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("m/extra/edgecls.spec", ModelSpec("m", "a", 3, ["x", "y", "z"]).to_json())
        archive.writestr("m/data/constants/model_constants_config.json", '{"config": {}}')
    return buffer.getvalue()


@FUZZ
@given(mutations(_pt2_seed(), focus=4096))
def test_mutated_pt2_spec_members(data):
    import io
    from edgecls.backends.torch.container import spec_of
    from edgecls.spec import ModelSpec
    works_or_user_error(lambda: spec_of(io.BytesIO(data), Path("fuzz.pt2")), ModelSpec)


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
    from edgecls.imaging.preprocess import load_rgb
    for ext, data in SEED_IMAGES.items():
        assert load_rgb(data).shape == (12, 16, 3), ext
    with pytest.raises(ArtifactError, match="spec is not a JSON object"):
        from edgecls.spec import ModelSpec
        ModelSpec.from_json("[]")
