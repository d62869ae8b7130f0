"""TensorRT backend.

Runs everywhere: the .engine header (round trip and every malformed file, pure Python), the
errors a user without TensorRT gets, export options, and the symmetric s8 QDQ ONNX that the
INT8 export hands to TensorRT (built and run here with ONNX Runtime).

Marked needs_tensorrt (skipped, with the reason shown, where TensorRT is absent): FP32 / FP16
/ INT8 engines of the digits model built on the GPU and checked against torch.
"""
from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import run_concurrently

from edgecls.errors import ArtifactError, MissingDependencyError, UnsupportedOptionError
from edgecls.tensorrt_header import (HEADER_SIZE, MAGIC, engine_digest, pack, read_engine,
                                     read_spec, wrap_engine, write_engine)

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
# Stands in for a serialized engine wherever TensorRT itself is not involved.
FAKE_PLAN = bytes(range(256)) * 64


@pytest.fixture(scope="module")
def engine_spec(digits_onnx):
    """The real spec of the real exported digits ONNX, as the TensorRT exporter derives it."""
    from edgecls.runtimes.base import read_spec as read_any
    spec = read_any(digits_onnx)
    return spec.derive(format="tensorrt", exported_from="onnx", tools={**spec.tools,
                       "tensorrt": "10.9.0.34"}, notes={**spec.notes, "engine_built_on": {
                       "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}})


@pytest.fixture
def engine_file(engine_spec, tmp_path) -> Path:
    return write_engine(tmp_path / "digits.engine", engine_spec.derive(notes=dict(engine_spec.notes)),
                        FAKE_PLAN)


def _expect(path: Path, *words: str) -> str:
    with pytest.raises(ArtifactError) as e:
        read_spec(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, message
    return message


# -- the header ---------------------------------------------------------------------------------
def test_header_round_trip(engine_spec, engine_file):
    data = engine_file.read_bytes()
    assert data.startswith(MAGIC)
    version, n = struct.unpack_from("<IQ", data, len(MAGIC))
    assert version == 1 and HEADER_SIZE + n + len(FAKE_PLAN) == len(data)
    assert data.endswith(FAKE_PLAN)
    json.loads(data[HEADER_SIZE:HEADER_SIZE + n].decode("utf-8"))

    spec = read_spec(engine_file)
    assert spec.labels == engine_spec.labels and spec.input_size == engine_spec.input_size
    assert spec.mean == engine_spec.mean and spec.format == "tensorrt"
    assert spec.tools["tensorrt"] == "10.9.0.34"
    assert spec.notes["engine_size"] == len(FAKE_PLAN)
    assert spec.notes["engine_sha256"] == engine_digest(FAKE_PLAN)
    spec2, plan = read_engine(engine_file)
    assert plan == FAKE_PLAN and spec2 == spec


def test_runtime_reads_the_spec_without_tensorrt(engine_file):
    """The runtime module imports without TensorRT; its read_spec is the pure-Python one."""
    from edgecls.runtimes.tensorrt import TensorRTSession
    assert TensorRTSession.read_spec(engine_file).name == "digits_cnn"


def test_wrap_a_raw_engine(engine_spec, tmp_path):
    raw = tmp_path / "trtexec.plan"
    raw.write_bytes(FAKE_PLAN)
    _expect(raw, "without an edgecls header", "edgecls export --to tensorrt", "wrap_engine")
    out = wrap_engine(raw, engine_spec, tmp_path / "wrapped.engine", tensorrt_version="10.3.0")
    spec, plan = read_engine(out)
    assert plan == FAKE_PLAN and spec.tools["tensorrt"] == "10.3.0"
    with pytest.raises(ArtifactError, match="already an edgecls engine"):
        wrap_engine(out, engine_spec, tmp_path / "twice.engine")


def test_missing_header(tmp_path):
    raw = tmp_path / "elsewhere.engine"
    raw.write_bytes(b"ftrt" + FAKE_PLAN)        # what a raw TensorRT plan looks like to us
    _expect(raw, "without an edgecls header", "edgecls export --to tensorrt")


def test_missing_and_empty_files(tmp_path):
    _expect(tmp_path / "absent.engine", "no such file")
    empty = tmp_path / "empty.engine"
    empty.write_bytes(b"")
    _expect(empty, "truncated")


@pytest.mark.parametrize("cut", ["magic", "fixed", "spec", "engine_gone", "engine_short"])
def test_truncated(engine_file, tmp_path, cut):
    data = engine_file.read_bytes()
    n = struct.unpack_from("<IQ", data, len(MAGIC))[1]
    end = {"magic": 5, "fixed": len(MAGIC) + 6, "spec": HEADER_SIZE + n // 2,
           "engine_gone": HEADER_SIZE + n, "engine_short": len(data) - 100}[cut]
    bad = tmp_path / f"cut-{cut}.engine"
    bad.write_bytes(data[:end])
    _expect(bad, "truncated")


def test_trailing_bytes_and_bad_digest(engine_file, tmp_path):
    data = engine_file.read_bytes()
    longer = tmp_path / "longer.engine"
    longer.write_bytes(data + b"junk")
    _expect(longer, "corrupt")
    flipped = tmp_path / "flipped.engine"
    flipped.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    read_spec(flipped)                        # the spec is fine ...
    with pytest.raises(ArtifactError, match="do not match the digest"):
        read_engine(flipped)                  # ... the engine is not


def _with_spec_bytes(tmp_path: Path, name: str, text: bytes, version: int = 1) -> Path:
    path = tmp_path / name
    path.write_bytes(MAGIC + struct.pack("<IQ", version, len(text)) + text + FAKE_PLAN)
    return path


def test_bad_json(tmp_path, engine_spec):
    _expect(_with_spec_bytes(tmp_path, "a.engine", b'{"name": "x", '), "not valid JSON")
    _expect(_with_spec_bytes(tmp_path, "b.engine", b"\xff\xfe not utf-8"), "not valid JSON")
    _expect(_with_spec_bytes(tmp_path, "c.engine", b"[1, 2, 3]"), "not a JSON object")
    _expect(_with_spec_bytes(tmp_path, "d.engine", b'{"name": "x"}'), "incomplete")
    good = engine_spec.to_json().encode()
    _expect(_with_spec_bytes(tmp_path, "e.engine", good, version=7), "newer edgecls")


def test_pack_refuses_an_empty_engine(engine_spec):
    with pytest.raises(ArtifactError, match="empty engine"):
        pack(engine_spec.derive(notes={}), b"")


# -- without TensorRT installed -------------------------------------------------------------------
@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here")
def test_classifier_without_tensorrt_names_the_extra(engine_file):
    from edgecls.classifier import Classifier
    with pytest.raises(MissingDependencyError) as e:
        Classifier(engine_file, device="gpu")
    assert e.value.extra == "tensorrt" and "edgecls[tensorrt]" in str(e.value)


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here")
def test_export_without_tensorrt_names_the_extra(digits_model, tmp_path):
    from edgecls.exporting import export
    model, spec = digits_model
    with pytest.raises(MissingDependencyError) as e:
        export(model, to="tensorrt", out=tmp_path / "digits.engine", spec=spec)
    assert e.value.extra == "tensorrt" and "edgecls[tensorrt]" in str(e.value)
    assert not list(tmp_path.iterdir())     # nothing left behind


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here")
def test_session_without_tensorrt_names_the_extra(engine_file):
    from edgecls.runtimes.tensorrt import TensorRTSession
    with pytest.raises(MissingDependencyError, match=r"edgecls\[tensorrt\]"):
        TensorRTSession(engine_file, device="gpu")


def test_export_options_are_checked_before_tensorrt():
    from edgecls.exporters.tensorrt import parse_options
    assert parse_options({"workspace_gb": "2"}, "fp16") == {"workspace_gb": 2.0, "dla_core": None}
    assert parse_options({"dla_core": 1}, "int8")["dla_core"] == 1
    for options, precision, words in [({"opset": 17}, "fp32", "does not take opset"),
                                      ({"dla_core": 0}, "fp32", "FP16 and INT8 only"),
                                      ({"dla_core": -1}, "fp16", "0 or more"),
                                      ({"workspace_gb": 0}, "fp32", "positive"),
                                      ({"workspace_gb": "lots"}, "fp32", "a number")]:
        with pytest.raises(UnsupportedOptionError, match=words):
            parse_options(options, precision)


# -- the INT8 ONNX that TensorRT would parse --------------------------------------------------------
@pytest.fixture(scope="module")
def int8_for_tensorrt(digits_model, digits_data, tmp_path_factory):
    """prepare_onnx's INT8 output (what build_engine parses) and the spec it filled in."""
    from edgecls.calibration.datasets import CalibrationSet
    from edgecls.exporters.tensorrt import prepare_onnx
    from edgecls.exporting import ExportSource
    model, spec = digits_model
    _, calib, _, _ = digits_data
    work = tmp_path_factory.mktemp("trt-int8")
    out_spec = spec.derive(format="tensorrt", precision="int8", tools=dict(spec.tools))
    path = prepare_onnx(ExportSource(model, spec, work), out_spec, "int8",
                        CalibrationSet.from_source(calib, spec), work)
    return path, out_spec


def test_int8_onnx_is_symmetric_s8_qdq(int8_for_tensorrt):
    import onnx
    from onnx import TensorProto, numpy_helper
    path, spec = int8_for_tensorrt
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    quantizers = [n for n in qdq if n.op_type == "QuantizeLinear"]
    assert len(quantizers) >= 4, "activations are quantized"
    assert any(n.op_type == "DequantizeLinear" and n.input[0] in inits for n in qdq), \
        "weights are quantized"
    for node in qdq:
        assert len(node.input) == 3 and node.input[2] in inits, f"{node.name}: no zero point"
        zero = inits[node.input[2]]
        assert zero.data_type == TensorProto.INT8, f"{node.name}: zero point is not int8"
        assert not numpy_helper.to_array(zero).any(), f"{node.name}: asymmetric"
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            assert inits[node.input[0]].data_type == TensorProto.INT8, \
                f"{node.name}: TensorRT's parser takes int8 Q/DQ only"
    q = spec.quantization
    assert q["target"] == "tensorrt" and q["activations"] == "s8 symmetric"
    assert q["format"] == "QDQ" and q["calibration_size"] > 0
    assert spec.tools["onnxruntime"]


def test_int8_onnx_still_classifies(int8_for_tensorrt, digits_model, digits_data):
    """The ONNX handed to TensorRT (int32 biases folded to float) is the quantized model:
    within 2 points of torch's accuracy on held-out digits, run here with ONNX Runtime."""
    import onnxruntime as ort
    import torch

    from edgecls.calibration.preprocess import to_model_input
    path, _ = int8_for_tensorrt
    model, spec = digits_model
    _, _, val, _ = digits_data
    x = to_model_input(val.crops(spec), spec)
    labels = val.labels()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    torch_acc = float((ref.argmax(1) == labels).mean())
    int8_acc = float((got.argmax(1) == labels).mean())
    assert torch_acc > 0.9 and int8_acc >= torch_acc - 0.02, (int8_acc, torch_acc)


def test_folding_int32_bias_changes_nothing(digits_model, digits_data, tmp_path):
    """fold_int32_bias on ORT's own QDQ output: same graph function, no int32 DQ left."""
    import onnx
    import onnxruntime as ort

    from edgecls.calibration.datasets import CalibrationSet
    from edgecls.calibration.preprocess import to_model_input
    from edgecls.exporters.tensorrt import fold_int32_bias
    from edgecls.exporting import ExportSource
    from edgecls.quantization.onnx import quantize_onnx
    model, spec = digits_model
    _, calib, val, _ = digits_data
    fp32 = ExportSource(model, spec, tmp_path).onnx()
    before = tmp_path / "before.onnx"
    quantize_onnx(fp32, spec.derive(tools=dict(spec.tools)), before,
                  CalibrationSet.from_source(calib, spec), target="tensorrt")
    after = tmp_path / "after.onnx"
    after.write_bytes(before.read_bytes())
    folded = fold_int32_bias(after)
    int32_dq = [n for n in onnx.load(str(after)).graph.node if n.op_type == "DequantizeLinear"
                and any(i.name == n.input[0] and i.data_type == onnx.TensorProto.INT32
                        for i in onnx.load(str(after)).graph.initializer)]
    assert not int32_dq
    x = to_model_input(val.crops(spec)[:64], spec)
    outs = []
    for path in (before, after):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    scale = max(1.0, float(np.abs(outs[0]).max()))
    assert np.abs(outs[0] - outs[1]).max() <= 1e-3 * scale, f"folded {folded}"
    assert (outs[0].argmax(1) == outs[1].argmax(1)).all()


# -- on a GPU with TensorRT ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_engines(digits_model, digits_data, tmp_path_factory) -> dict[str, Path]:
    from edgecls.exporting import export
    model, spec = digits_model
    _, calib, _, _ = digits_data
    folder = tmp_path_factory.mktemp("tensorrt")
    return {p: export(model, to="tensorrt", out=folder / f"digits.{p}.engine", spec=spec,
                      precision=p, calib=calib if p == "int8" else None, check=False,
                      options={"workspace_gb": 1})
            for p in ("fp32", "fp16", "int8")}



@pytest.mark.needs_tensorrt
def test_engines_match_torch(digits_engines, digits_val):
    from edgecls.calibration.preprocess import to_model_input
    from edgecls.runtimes.base import open_session
    crops, labels, ref = digits_val
    torch_acc = float((ref.argmax(1) == labels).mean())
    scale = max(1.0, float(np.abs(ref).max()))
    for precision, max_rel, min_agree, max_drop in [("fp32", 1e-3, 1.0, 0.0),
                                                    ("fp16", 2e-2, 0.99, 0.005),
                                                    ("int8", None, 0.95, 0.02)]:
        with open_session(digits_engines[precision], device="gpu") as s:
            got = s.run(to_model_input(crops, s.spec))      # 400 images: slices of 32
            assert s.device_used == "gpu" and s.describe()["tensorrt"]
        agree = float((got.argmax(1) == ref.argmax(1)).mean())
        acc = float((got.argmax(1) == labels).mean())
        assert agree >= min_agree, f"{precision}: top-1 agreement {agree:.3f}"
        assert acc >= torch_acc - max_drop, f"{precision}: {acc:.4f} vs torch {torch_acc:.4f}"
        if max_rel is not None:
            rel = float(np.abs(got - ref).max()) / scale
            assert rel <= max_rel, f"{precision}: relative max-abs error {rel:.2e}"


@pytest.mark.needs_tensorrt
def test_classifier_and_spec(digits_engines, digits_val):
    import tensorrt as trt

    from edgecls.classifier import Classifier
    from edgecls.runtimes.base import read_spec as read_any
    crops, labels, _ = digits_val
    for precision, path in digits_engines.items():
        spec = read_any(path)
        assert spec.format == "tensorrt" and spec.precision == precision
        assert spec.exported_from == "onnx" and spec.tools["tensorrt"] == trt.__version__
        assert spec.notes["engine_built_on"]["compute_capability"]
    assert read_any(digits_engines["int8"]).quantization["activations"] == "s8 symmetric"
    with Classifier(digits_engines["fp32"], device="auto", batch_size=7) as clf:
        top = clf.predict(list(crops[:20]))
    assert sum(p[0].index == y for p, y in zip(top, labels[:20])) >= 18
    assert top[0][0].label == str(top[0][0].index)      # labels come from the spec


@pytest.mark.needs_tensorrt
def test_portability_is_checked(digits_engines, tmp_path):
    from edgecls.errors import DeviceUnavailableError
    from edgecls.runtimes.tensorrt import TensorRTSession
    spec, plan = read_engine(digits_engines["fp32"])
    other = write_engine(tmp_path / "old.engine", spec.derive(
        tools={**spec.tools, "tensorrt": "8.6.1"}, notes=dict(spec.notes)), plan)
    with pytest.raises(ArtifactError, match="not portable across TensorRT versions"):
        TensorRTSession(other, device="gpu")
    arch = write_engine(tmp_path / "arch.engine", spec.derive(notes={
        **spec.notes, "engine_built_on": {"gpu": "Tesla T4", "compute_capability": "7.5"}}), plan) \
        if spec.notes["engine_built_on"]["compute_capability"] != "7.5" else None
    if arch is not None:
        with pytest.raises(ArtifactError, match="GPU architectures"):
            TensorRTSession(arch, device="gpu")
    with pytest.raises(DeviceUnavailableError, match="GPU engine"):
        TensorRTSession(digits_engines["fp32"], device="npu")
    with pytest.raises(DeviceUnavailableError):
        TensorRTSession(digits_engines["fp32"], device="cpu")


@pytest.mark.needs_tensorrt
def test_threads_share_one_session(digits_engines, digits_val):
    from edgecls.calibration.preprocess import to_model_input
    from edgecls.runtimes.base import open_session
    crops, _, _ = digits_val
    with open_session(digits_engines["fp16"], device="gpu") as s:
        x = to_model_input(crops[:48], s.spec)
        expected = s.run(x)

        def work(i):
            part = slice(i * 3, i * 3 + 5)
            return np.abs(s.run(x[part]) - expected[part]).max()

        results = run_concurrently(work, 12)
    assert max(results) < 1e-2
