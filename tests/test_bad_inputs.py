"""The bad-input matrix: every way a user can hand edgecls something wrong.

Each case asserts the contract of a user error: the specific EdgeclsError subclass (API) or
exit status 2 (CLI), ONE line that says what is wrong and what to do, no traceback, and
nothing left on disk (the folders involved, and edgecls' temporary folders, listed before
and after). The inputs are real: artifacts exported from the digits CNN trained in this
session, real image files, real checkpoints. The last section holds the odd-but-valid
images that must WORK.
"""
from __future__ import annotations

import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
from conftest import assert_user_error, offline_env, run_cli

from edgecls.errors import (ArtifactError, DataError, DeviceUnavailableError, EdgeclsError,
                            ImageReadError, MissingDependencyError, OutputError,
                            UnknownFormatError, UnknownModelError, UnsupportedOptionError,
                            WeightsError)

SMALL = "shufflenet_v2_x0_5"     # a small zoo model (1.4 M parameters)


# -- the contract ----------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def private_tmp(tmp_path_factory, monkeypatch):
    """A temporary folder of this test's own (children inherit TMPDIR): on a shared machine
    other processes make edgecls-* folders in /tmp too, which are not this test's leftovers."""
    tmp = tmp_path_factory.mktemp("tmp")
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _edgecls_temps() -> list[str]:
    return sorted(p.name for p in Path(tempfile.gettempdir()).glob("edgecls-*"))


def expect_error(call: Callable[[], object], error: type[EdgeclsError], *fragments: str,
                 folder: Path | None = None) -> str:
    """`call` raises exactly `error` with a one-line message holding every fragment, and
    leaves `folder` (and the temporary folders edgecls makes) as they were."""
    before = (_tree(folder) if folder else [], _edgecls_temps())
    with pytest.raises(EdgeclsError) as info:
        call()
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert message and "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert (_tree(folder) if folder else [], _edgecls_temps()) == before, "left on disk"
    return message


def expect_cli_error(tmp_path: Path, *args, fragments: tuple[str, ...] = (),
                     env: dict[str, str] | None = None, run=None) -> str:
    """`edgecls ARGS` exits 2 with one `edgecls: error:` line and writes nothing; in a
    process of its own, or through `run` (conftest's `cli`: in this process)."""
    before = _tree(tmp_path)
    proc = run(*args, cwd=tmp_path) if run else run_cli(*args, cwd=tmp_path, env=env)
    line = assert_user_error(proc, *fragments)
    assert _tree(tmp_path) == before, "left on disk"
    return line


def _png_header_only(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header claims width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0,
                                                            0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


# -- 1. artifacts: zero-byte, truncated, another format's file, not a model --------------------------
@pytest.fixture(scope="module")
def good(digits_onnx, digits_ir, digits_tflite_fp32, tmp_path_factory) -> dict[str, Path]:
    """One real artifact per format (the .engine: a real edgecls header around stand-in
    engine bytes; TensorRT itself cannot run here, its header reader is pure Python)."""
    from edgecls.backends.tensorrt.container import write_engine
    from edgecls.formats import read_spec
    folder = tmp_path_factory.mktemp("good")
    engine = write_engine(folder / "digits.engine", read_spec(digits_onnx).derive(
        format="tensorrt"), bytes(range(256)) * 16)
    return {".onnx": digits_onnx, ".xml": digits_ir, ".tflite": digits_tflite_fp32,
            ".engine": engine}


def _open(path: Path):
    """How a user meets the artifact: Classifier, or for a TensorRT engine (TensorRT is
    absent here) `read_spec`, which is what `edgecls info` runs."""
    from edgecls.classifier import Classifier
    from edgecls.formats import read_spec
    return read_spec(path) if path.suffix == ".engine" else Classifier(path).close()


# what each reader says about a file it cannot use, and what it tells the user to do
BROKEN = {".onnx": ("ONNX Runtime cannot load it", "export it again"),
          ".xml": ("OpenVINO", "export it again"),
          ".tflite": ("TFLite", "export it again"),
          ".engine": ("edgecls", "export")}
OTHER = {".onnx": ".tflite", ".xml": ".onnx", ".tflite": ".onnx", ".engine": ".onnx"}


def _make_bad(good: dict[str, Path], suffix: str, kind: str, folder: Path) -> Path:
    path = folder / f"{kind}{suffix}"
    source = good[suffix].read_bytes()
    content = {"empty": b"", "truncated": source[: len(source) // 2],
               "renamed": good[OTHER[suffix]].read_bytes(),
               "not-a-model": cv2.imencode(".jpg", np.full((8, 8, 3), 90, np.uint8))[1].tobytes()}
    path.write_bytes(content[kind])
    if suffix == ".xml":      # the IR's weights are there: the .xml itself is what is wrong
        shutil.copyfile(good[".xml"].with_suffix(".bin"), path.with_suffix(".bin"))
    return path


@pytest.mark.parametrize("kind", ["empty", "truncated", "renamed", "not-a-model"])
@pytest.mark.parametrize("suffix", [".onnx", ".xml", ".tflite", ".engine"])
def test_broken_artifact(good, tmp_path, suffix, kind):
    path = _make_bad(good, suffix, kind, tmp_path)
    message = expect_error(lambda: _open(path), ArtifactError, str(path), folder=tmp_path)
    what, todo = BROKEN[suffix]
    assert what in message and todo in message, message


def test_broken_artifact_cli(good, tmp_path, cli):
    """The same through the command line: `predict` and `info`."""
    digit = tmp_path / "digit.png"
    cv2.imwrite(str(digit), np.zeros((8, 8, 3), np.uint8))
    onnx = _make_bad(good, ".onnx", "truncated", tmp_path)
    expect_cli_error(tmp_path, "predict", onnx, digit, fragments=("ONNX Runtime cannot load it",),
                     run=cli)
    engine = _make_bad(good, ".engine", "renamed", tmp_path)
    expect_cli_error(tmp_path, "info", engine, fragments=("without an edgecls header",), run=cli)


def test_openvino_ir_without_its_bin(good, tmp_path):
    xml = tmp_path / "alone.xml"
    shutil.copyfile(good[".xml"], xml)
    expect_error(lambda: _open(xml), ArtifactError, "alone.bin is missing", "copy both",
                 folder=tmp_path)


@pytest.mark.parametrize("kind", ["truncated", "same-size-other-weights"])
def test_openvino_ir_with_a_mismatched_bin(good, tmp_path, kind):
    """A .bin that is not the .xml's: cut short, or (silent for OpenVINO itself) of the
    right size with other weights, as another export of the same model would have."""
    xml = tmp_path / "pair.xml"
    shutil.copyfile(good[".xml"], xml)
    weights = np.frombuffer(good[".xml"].with_suffix(".bin").read_bytes(), np.uint8)
    if kind == "truncated":
        xml.with_suffix(".bin").write_bytes(weights[: len(weights) // 3].tobytes())
        fragment = "OpenVINO cannot read it"
    else:
        other = weights.copy()
        other[len(other) // 2:len(other) // 2 + 64] ^= 0x5A       # some weights changed
        xml.with_suffix(".bin").write_bytes(other.tobytes())
        fragment = "pair.bin is not its weights file"
    expect_error(lambda: _open(xml), ArtifactError, fragment, "copy", folder=tmp_path)


def test_unknown_artifact_suffix(tmp_path):
    path = tmp_path / "model.pb"
    path.write_bytes(b"\x08\x01")
    expect_error(lambda: _open(path), UnknownFormatError, "'.pb'", ".onnx", folder=tmp_path)


# -- 2. ONNX external data -------------------------------------------------------------------------
def _onnx_with_external_weight(folder: Path, location: str, digits_onnx: Path) -> Path:
    """A MatMul model whose weight lives in an external file at `location`."""
    from onnx import TensorProto, helper, numpy_helper

    from edgecls.formats import read_spec
    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": "0", "length": "16"}.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
                              [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(model, {"edgecls.spec": read_spec(digits_onnx).to_json()})
    folder.mkdir(exist_ok=True)
    path = folder / "external.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_external_data_outside_its_folder(tmp_path, digits_onnx):
    """Path traversal: `../secret.bin` must not be read."""
    (tmp_path / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    path = _onnx_with_external_weight(tmp_path / "model", "../secret.bin", digits_onnx)
    message = expect_error(lambda: _open(path), ArtifactError, "ONNX Runtime cannot load it",
                           folder=tmp_path)
    assert "escapes" in message or "outside" in message, message


def test_onnx_external_data_missing(tmp_path, digits_onnx):
    path = _onnx_with_external_weight(tmp_path / "model", "weights.bin", digits_onnx)
    expect_error(lambda: _open(path), ArtifactError, "ONNX Runtime cannot load it", "weights.bin",
                 folder=tmp_path)


# -- 3. weights ------------------------------------------------------------------------------------
class _Exploit:
    """A pickle that writes a file when it is loaded unsafely."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _export_small(tmp_path: Path, **kwargs):
    from edgecls.exporting import export
    return lambda: export(SMALL, to="onnx", out=tmp_path / "out" / "small.onnx", **kwargs)


def test_weights_that_carry_code_are_refused(tmp_path):
    import torch
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Exploit(marker)}, evil)
    expect_error(_export_small(tmp_path, weights=str(evil)), WeightsError,
                 "not a loadable state_dict", folder=tmp_path)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Exploit(marker)))       # the payload is real: it runs unsafely
    assert marker.read_text() == "pwned"


def test_weights_of_another_architecture(tmp_path, digits_model):
    import torch
    model, _ = digits_model
    path = tmp_path / "digits.pt"
    torch.save(model.state_dict(), path)
    expect_error(_export_small(tmp_path, weights=str(path)), WeightsError,
                 "does not fit this model", "--num-classes", folder=tmp_path)


def test_weights_with_another_class_count(tmp_path):
    import torch

    from edgecls import zoo
    model, _ = zoo.build(SMALL, weights="none", num_classes=3)
    path = tmp_path / "three.pt"
    torch.save({"model": model.state_dict()}, path)
    expect_error(_export_small(tmp_path, weights=str(path)), WeightsError,
                 "does not fit this model", "--num-classes N", folder=tmp_path)


def test_labels_file_with_the_wrong_count(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\ncow\n")
    # pretrained ImageNet weights have 1000 classes: 3 labels cannot name them
    expect_cli_error(tmp_path, "export", SMALL, "--labels", labels, "-o", tmp_path / "o.onnx",
                     fragments=("3 labels given for a model with 1000 classes",),
                     env=offline_env(tmp_path))
    from edgecls.zoo import read_labels
    expect_error(_export_small(tmp_path, weights="none", num_classes=4,
                               labels=read_labels(labels)), WeightsError,
                 "3 labels given for a model with 4 classes", folder=tmp_path)


# -- 4. images -------------------------------------------------------------------------------------
@pytest.fixture
def clf(digits_onnx):
    from edgecls.classifier import Classifier
    with Classifier(digits_onnx) as c:
        yield c


def _truncated(ext: str) -> bytes:
    rng = np.random.default_rng(0)
    data = cv2.imencode(ext, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))[1].tobytes()
    return data[: len(data) // 2]


IMAGE_FILES = {
    "text-as-jpg": (".jpg", b"this is a text file, not a photo\n", "not an image"),
    "empty-png": (".png", b"", "not an image"),
    "truncated-jpeg": (".jpg", _truncated(".jpg"), "truncated"),
    "truncated-png": (".png", _truncated(".png"), "truncated"),
    "png-bomb-60000x60000": (".png", _png_header_only(60000, 60000), "60000 x 60000"),
}


@pytest.mark.parametrize("case", IMAGE_FILES)
def test_unusable_image_file(clf, tmp_path, case):
    suffix, content, what = IMAGE_FILES[case]
    path = tmp_path / f"{case}{suffix}"
    path.write_bytes(content)
    message = expect_error(lambda: clf.predict(path), ImageReadError, str(path), what,
                           folder=tmp_path)
    if "bomb" in case:        # what to do: raise the limit, if the image is trusted
        assert "EDGECLS_MAX_PIXELS" in message and "268,435,456" in message


def test_decompression_bomb_cli(tmp_path, digits_onnx):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(60000, 60000))
    expect_cli_error(tmp_path, "predict", digits_onnx, bomb,
                     fragments=("over the limit", "EDGECLS_MAX_PIXELS"))
    # the limit comes from the environment too: a 20 x 20 image over a 100-pixel limit
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((20, 20, 3), np.uint8))
    expect_cli_error(tmp_path, "predict", digits_onnx, small, fragments=("limit of 100",),
                     env={"EDGECLS_MAX_PIXELS": "100"})
    expect_cli_error(tmp_path, "predict", digits_onnx, small,
                     fragments=("EDGECLS_MAX_PIXELS='lots'", "whole number"),
                     env={"EDGECLS_MAX_PIXELS": "lots"})


def test_bombs_are_refused_before_decoding_pil_and_arrays(digits_onnx, tmp_path):
    """max_pixels applies to PIL images (checked on the lazy header, before PIL decodes)
    and to arrays; raised per Classifier it lets the same image through."""
    from PIL import Image

    from edgecls.classifier import Classifier
    path = tmp_path / "big.png"
    Image.new("RGB", (1200, 900), (200, 30, 30)).save(path)
    lazy = Image.open(path)
    with Classifier(digits_onnx, max_pixels=1_000_000) as small_limit:
        expect_error(lambda: small_limit.predict(lazy), ImageReadError, "1200 x 900",
                     "max_pixels", folder=tmp_path)
        assert lazy.tile, "PIL decoded the image: the limit came too late"
        expect_error(lambda: small_limit.predict(np.zeros((1001, 1000, 3), np.uint8)),
                     ImageReadError, "1000 x 1001", folder=tmp_path)
    with Classifier(digits_onnx, max_pixels=2_000_000) as raised:
        assert len(raised.predict(Image.open(path), topk=2)) == 2
    expect_error(lambda: Classifier(digits_onnx, max_pixels=0), ImageReadError,
                 "positive whole number")


def test_parity_and_calibration_take_max_pixels(digits_onnx, tmp_path):
    """max_pixels reaches the image files parity compares on and those an INT8 export
    calibrates on: a folder with one 1200 x 900 photo among small ones is refused, naming
    it, under a 1-megapixel limit, and used whole under a 2-megapixel one."""
    import cv2

    from edgecls.formats import read_spec
    from edgecls.imaging.datasets import CalibrationSet
    from edgecls.verification import parity
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"small{i}.png"), np.full((32, 32, 3), 60 * i, np.uint8))
    cv2.imwrite(str(folder / "big.png"), np.full((900, 1200, 3), 200, np.uint8))
    spec = read_spec(digits_onnx)

    def compare(limit):
        return parity([digits_onnx], data=folder, reference=digits_onnx, max_pixels=limit,
                      sqnr=False, progress=False)

    def calibrate(limit):
        return np.concatenate(list(CalibrationSet.from_source(folder, spec, max_pixels=limit)
                                   .batches()))

    for run in (compare, calibrate):
        expect_error(lambda: run(1_000_000), ImageReadError, "big.png", "1200 x 900")
    assert compare(2_000_000).data["n"] == 4
    assert calibrate(2_000_000).shape[0] == 4


ARRAYS = {
    "nan": (np.full((8, 8, 3), np.nan, np.float32), "NaN or infinite"),
    "inf": (np.pad(np.full((7, 8, 3), 0.5), ((0, 1), (0, 0), (0, 0)), constant_values=np.inf),
            "NaN or infinite"),
    "two-channels": (np.zeros((8, 8, 2), np.uint8), "not an image"),
    "one-dimensional": (np.zeros(64, np.uint8), "not an image"),
    "empty": (np.zeros((0, 0, 3), np.uint8), "at least 1 x 1"),
    "floats-0-255": (np.full((8, 8, 3), 200.0, np.float32), "must be in [0, 1]"),
    "int64": (np.zeros((8, 8, 3), np.int64), "use uint8"),
    "batch-of-two-channel": (np.zeros((2, 8, 8, 2), np.uint8), "not an image"),
}


@pytest.mark.parametrize("case", ARRAYS)
def test_unusable_array(clf, case):
    array, what = ARRAYS[case]
    expect_error(lambda: clf.predict(array), ImageReadError, what)


def test_not_an_image_at_all(clf):
    expect_error(lambda: clf.predict(12345), ImageReadError, "int", "pass a path")


# -- 5. data folders -------------------------------------------------------------------------------
def _digit_png(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), value, np.uint8))
    return path


def _folder_case(root: Path, case: str) -> Path:
    root.mkdir()
    if case == "empty":
        pass
    elif case == "no-images":
        (root / "README.txt").write_text("images go here")
        (root / "notes.csv").write_text("a,b\n")
    elif case == "class-without-images":     # unbalanced down to nothing
        for i in range(5):
            _digit_png(root / "3" / f"{i}.png")
        (root / "7").mkdir()
    elif case == "mislabelled-classes":      # folder names that are neither labels nor indices
        _digit_png(root / "three" / "a.png")
        _digit_png(root / "seven" / "b.png")
    elif case == "class-index-out-of-range":
        _digit_png(root / "3" / "a.png")
        _digit_png(root / "12" / "b.png")
    elif case == "images-beside-classes":
        _digit_png(root / "3" / "a.png")
        _digit_png(root / "loose.png")
    return root


FOLDERS = {"empty": "no images", "no-images": "no images",
           "class-without-images": "hold no images; add images or remove",
           "mislabelled-classes": "rename them",
           "class-index-out-of-range": "match neither a label",
           "images-beside-classes": "move them into a class folder"}


@pytest.mark.parametrize("case", FOLDERS)
def test_unusable_calibration_folder(digits_model, tmp_path, case):
    from edgecls.exporting import export
    model, spec = digits_model
    root = _folder_case(tmp_path / case, case)
    expect_error(lambda: export(model, to="onnx", out=tmp_path / "out" / "d.onnx", spec=spec,
                                precision="int8", calib=root), DataError, FOLDERS[case],
                 folder=tmp_path)


def test_unusable_parity_folder_cli(digits_onnx, tmp_path, cli):
    root = _folder_case(tmp_path / "val", "mislabelled-classes")
    expect_cli_error(tmp_path, "parity", digits_onnx, "--data", root,
                     "--reference", digits_onnx, fragments=("three", "rename them"), run=cli)
    expect_cli_error(tmp_path, "parity", digits_onnx, "--data", tmp_path / "absent",
                     fragments=("not a folder of images",), run=cli)   # before any model is built
    expect_cli_error(tmp_path, "parity", digits_onnx, "--data", "digits", "--limit", "0",
                     "--reference", digits_onnx, fragments=("--limit", ">= 1"), run=cli)


# -- 6. names: model, format, device, target, calibration method ------------------------------------
def test_unknown_names(digits_model, digits_onnx, tmp_path):
    from edgecls.classifier import Classifier
    from edgecls.exporting import export
    model, spec = digits_model
    out = tmp_path / "out" / "d.onnx"
    expect_error(lambda: export("resnet19", to="onnx", out=out), UnknownModelError,
                 "did you mean", "resnet18", folder=tmp_path)
    expect_error(lambda: export(model, to="coreml", out=out, spec=spec), UnknownFormatError,
                 "unknown format 'coreml'", "choose one of", folder=tmp_path)
    expect_error(lambda: Classifier(digits_onnx, device="tpu"), DeviceUnavailableError,
                 "unknown device 'tpu'", "use one of")
    expect_error(lambda: export(model, to="onnx", out=out, spec=spec, precision="int8",
                                calib="digits", options={"target": "hexagon"}),
                 UnsupportedOptionError, "unknown INT8 target 'hexagon'", "choose", folder=tmp_path)
    expect_error(lambda: export(model, to="onnx", out=out, spec=spec, precision="int8",
                                calib="digits", options={"calib_method": "magic"}),
                 UnsupportedOptionError, "unknown calibration method 'magic'", "choose",
                 folder=tmp_path)
    expect_error(lambda: export(model, to="openvino", out=tmp_path / "o" / "d.xml", spec=spec,
                                precision="int8", calib="digits",
                                options={"calib_method": "entropy"}),
                 UnsupportedOptionError, "minmax", folder=tmp_path)


def test_argument_errors_are_one_line(tmp_path, digits_onnx, cli):
    expect_cli_error(tmp_path, "export", SMALL, "--to", "coreml",
                     fragments=("unknown format 'coreml'", "--help"), run=cli)
    expect_cli_error(tmp_path, "predict", digits_onnx,
                     fragments=("required", "images"), run=cli)
    expect_cli_error(tmp_path, "predict", digits_onnx, "x.png", "--device", "tpu",
                     fragments=("invalid choice: 'tpu'",), run=cli)
    expect_cli_error(tmp_path, "bench", digits_onnx, "--batch", "one",
                     fragments=("invalid int value",), run=cli)


# -- 7. options a format does not take: refused, never ignored ----------------------------------------
REFUSED = {
    # (format, precision, export() keywords, what the message says: the option and its cause)
    "calib-without-int8": ("onnx", "fp32", {"calib": "digits"},
                           "--calib apply only to --int8 (this export is fp32)"),
    "calib-size-without-int8": ("tflite", "fp32", {"calib_size": 50},
                                "--calib-size apply only to --int8 (this export is fp32)"),
    "strict-without-int8": ("onnx", "fp16", {"strict": True},
                            "--strict apply only to --int8 (this export is fp16)"),
    "data-without-int8-onnx": ("onnx", "fp32", {"options": {"data": "digits"}},
                               "option(s) data apply only to --int8"),
    "data-without-int8-tflite": ("tflite", "fp32", {"options": {"data": "digits"}},
                                 "option(s) data apply only to --int8"),
    "data-without-int8-tensorrt": ("tensorrt", "fp16", {"options": {"data": "digits"}},
                                   "option(s) data apply only to --int8"),
    "max-drop-without-int8": ("onnx", "fp32", {"options": {"max_drop": 1.0}},
                              "option(s) max_drop apply only to --int8"),
    "strict-with-no-check": ("onnx", "int8", {"calib": "digits", "check": False, "strict": True},
                             "--strict makes the INT8 check fatal, and --no-check skips it"),
    "another-formats-option": ("onnx", "fp32", {"options": {"preset": "mixed"}},
                               "--to onnx does not take --preset"),
    "int8-io-without-int8": ("tflite", "fp32", {"options": {"int8_io": "int8"}},
                             "option(s) int8_io apply only to --int8"),
    "tensorrt-option-on-tflite": ("tflite", "fp32", {"options": {"workspace_gb": 2}},
                                  "--to tflite does not take --workspace-gb"),
    "int8-without-calibration": ("onnx", "int8", {}, "--int8 needs calibration images: --calib"),
    "precision-the-format-lacks": ("torch", "int8", {"calib": "digits"},
                                   "torch artifacts cannot be int8; choose from fp32"),
    "calib-size-zero": ("onnx", "int8", {"calib": "digits", "calib_size": 0},
                        "--calib-size must be a whole number >= 1, not 0"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_option_the_format_does_not_take(digits_model, tmp_path, case):
    from edgecls.exporting import export
    from edgecls.formats import get_format
    model, spec = digits_model
    fmt, precision, kwargs, says = REFUSED[case]
    out = tmp_path / "out" / f"d{get_format(fmt).suffixes[0]}"
    expect_error(lambda: export(model, to=fmt, out=out, spec=spec, precision=precision, **kwargs),
                 UnsupportedOptionError, says, folder=tmp_path)


def test_refused_options_cli(tmp_path, cli):
    expect_cli_error(tmp_path, "export", SMALL, "--weights", "none", "--to", "tflite",
                     "--data", "digits", "-o", tmp_path / "o.tflite",
                     fragments=("data", "--int8"), run=cli)
    expect_cli_error(tmp_path, "export", SMALL, "--weights", "none", "--calib-size", "10",
                     "-o", tmp_path / "o.onnx", fragments=("--calib-size", "--int8"), run=cli)


# -- 8. a missing optional dependency -----------------------------------------------------------------
def test_missing_backend_names_the_pip_extra(good, tmp_path):
    """As on a device without LiteRT: the runtime's import is blocked in a fresh process."""
    block = ("import sys\n"
             "for name in ('ai_edge_litert', 'tflite_runtime'):\n"
             "    sys.modules[name] = None\n"
             "from edgecls.cli import main\n"
             "raise SystemExit(main(sys.argv[1:]))\n")
    digit = _digit_png(tmp_path / "d.png")
    proc = subprocess.run([sys.executable, "-c", block, "predict", str(good[".tflite"]),
                           str(digit)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert_user_error(proc, "the tflite runtime", "pip install 'edgecls[tflite]'")
    from edgecls.backends.base import Format
    fmt = Format("fancy", (".fancy",), runtime="edgecls_absent.rt:S", requires=("edgecls_absent",),
                 extra="fancy", container="edgecls_absent.c")
    expect_error(fmt.load_runtime, MissingDependencyError, "pip install 'edgecls[fancy]'")


# -- 9. where the artifact goes -------------------------------------------------------------------------
def test_output_path_that_is_a_folder(digits_model, tmp_path):
    from edgecls.exporting import export
    model, spec = digits_model
    (tmp_path / "taken.onnx").mkdir()
    expect_error(lambda: export(model, to="onnx", out=tmp_path / "taken.onnx", spec=spec),
                 OutputError, "is a folder", "file name", folder=tmp_path)
    (tmp_path / "afile").write_text("x")
    expect_error(lambda: export(model, to="onnx", out=tmp_path / "afile" / "d.onnx", spec=spec),
                 OutputError, "is a file, not a folder", folder=tmp_path)


def run_cli_limited(setup: str, *args, cwd: Path, env: dict[str, str] | None = None):
    """`edgecls ARGS` in a process that first runs `setup` (Python) and then execs the CLI,
    so a limit set there holds for the CLI - without preexec_fn, which is unsafe to fork
    with once threaded libraries are loaded in this test process."""
    launcher = (f"import os, sys\n{setup}\n"
                "os.execv(sys.executable, [sys.executable, '-m', 'edgecls', *sys.argv[1:]])\n")
    return subprocess.run([sys.executable, "-c", launcher, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


# Without CAP_DAC_OVERRIDE even root obeys a folder's permissions: dropped from the bounding
# set, it is gone after the exec (PR_CAPBSET_DROP = 24; caps 1, 2: DAC_OVERRIDE, _READ_SEARCH)
DROP_ROOT_OVERRIDE = """
import ctypes
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    if any(libc.prctl(24, cap, 0, 0, 0) != 0 for cap in (1, 2)):
        sys.exit(99)
"""
# A 1 MB file-size limit stands in for a full disk; SIGXFSZ ignored, a write past the limit
# fails with EFBIG instead of killing the process
FILE_SIZE_LIMIT = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
"""


def test_read_only_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        proc = run_cli_limited(DROP_ROOT_OVERRIDE, "export", SMALL, "--weights", "none", "-o",
                               locked / "sub" / "m.onnx", cwd=tmp_path)
        if proc.returncode == 99:
            pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE here")
        assert_user_error(proc, "cannot write in", "locked", "choose another -o")
        assert _tree(locked) == []
    finally:
        locked.chmod(0o755)


def test_disk_full(tmp_path):
    """The 5 MB model cannot be written under a 1 MB file-size limit."""
    work = tmp_path / "tmp"
    work.mkdir()
    proc = run_cli_limited(FILE_SIZE_LIMIT, "export", "squeezenet1_1", "--weights", "none",
                           "-o", tmp_path / "out" / "sq.onnx", cwd=tmp_path,
                           env={"TMPDIR": str(work)})
    assert_user_error(proc, "cannot write", "File too large", "nothing was written",
                      only_line=False)           # the random-weights warning comes first
    assert not (tmp_path / "out").exists()
    assert not list(work.glob("edgecls-*")), list(work.iterdir())


#: `edgecls ARGS` with SIGINT sent to itself at a known point: once the export's temporary
#: artifact is written whole, before it is renamed into place
CTRL_C_AFTER_WRITING = """
import contextlib, os, signal, sys
from pathlib import Path
import edgecls.exporting as exporting
real = exporting.atomic_paths

@contextlib.contextmanager
def interrupted(*finals, **kwargs):
    with real(*finals, **kwargs) as temps:
        yield temps
        print("written:", *sorted(p.name for p in Path(temps[0]).parent.iterdir()), flush=True)
        os.kill(os.getpid(), signal.SIGINT)

exporting.atomic_paths = interrupted
sys.argv[0] = "edgecls"
from edgecls.cli import run
run()
"""


def test_ctrl_c_during_export(tmp_path):
    """SIGINT when the artifact is written but not yet in place: exit 130, nothing left
    behind (neither the temporary artifact nor the folder made for it)."""
    out, work = tmp_path / "out", tmp_path / "tmp"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", CTRL_C_AFTER_WRITING, "export", "squeezenet1_1",
                           "--weights", "none", "--fp16", "-o", str(out / "sq.onnx")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(work)})
    assert proc.returncode == 130, proc.stderr
    written = proc.stdout.split("written:")[1].split()
    assert len(written) == 1 and written[0].endswith(".onnx") and written[0] != "sq.onnx", written
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().endswith("edgecls: interrupted"), proc.stderr
    assert not out.exists(), _tree(out)
    assert not list(work.glob("edgecls-*")), list(work.iterdir())


# -- 10. odd but valid images: these must WORK -------------------------------------------------------
def _odd_one() -> np.ndarray:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[6:26, 14:18] = 255                                    # a "1"
    return rgb


def _odd_images(folder: Path) -> dict[str, object]:
    """A digit-like picture in every odd form a user may have it."""
    from PIL import Image
    rgb = _odd_one()
    made: dict[str, object] = {}
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    made["cmyk-jpeg"] = folder / "cmyk.jpg"
    cv2.imwrite(str(folder / "deep.png"), rgb.astype(np.uint16) * 257)
    made["16-bit-png"] = folder / "deep.png"
    cv2.imwrite(str(folder / "gray.png"), rgb[:, :, 0])
    made["grayscale-png"] = folder / "gray.png"
    Image.fromarray(np.dstack([rgb, np.full((32, 32), 128, np.uint8)]), "RGBA").save(
        folder / "alpha.png")
    made["alpha-png"] = folder / "alpha.png"
    exif = Image.Exif()
    exif[0x0112] = 6                                          # stored rotated: display turns it
    Image.fromarray(np.rot90(rgb, 1).copy()).save(folder / "rotated.jpg", quality=95,
                                                  exif=exif.tobytes())
    made["exif-rotated-jpeg"] = folder / "rotated.jpg"
    cv2.imwrite(str(folder / "dot.png"), np.full((1, 1, 3), 200, np.uint8))
    made["1x1-png"] = folder / "dot.png"
    made["very-wide-array"] = np.tile(rgb, (1, 400, 1))      # 32 x 12800
    made["very-tall-1px-array"] = np.full((20000, 1, 3), 255, np.uint8)
    made["pil-cmyk"] = Image.fromarray(rgb).convert("CMYK")
    return made


def test_odd_but_valid_images_work(digits_onnx, tmp_path):
    from edgecls.imaging.preprocess import load_rgb
    from edgecls.classifier import Classifier
    images = _odd_images(tmp_path)
    with Classifier(digits_onnx, topk=3) as clf:
        plain = clf.predict(_odd_one(), topk=1)[0]
        for name, image in images.items():
            preds = clf.predict(image)
            assert len(preds) == 3, name       # (what it answers: checked below)
            rgb = load_rgb(image)
            assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
        # the ones that are the same picture give the same answer as the plain one
        for name in ("16-bit-png", "grayscale-png", "alpha-png", "exif-rotated-jpeg",
                     "cmyk-jpeg", "pil-cmyk"):
            assert clf.predict(images[name], topk=1)[0].index == plain.index, name
        assert load_rgb(images["exif-rotated-jpeg"]).shape == (32, 32, 3)   # turned upright

