"""TensorRT backend.

Runs everywhere: the .engine header (round trip and every malformed file, pure Python), the
errors a user without TensorRT (or with a broken one) gets, export options, the build plans
(typing, flags), the logger's per-operation errors, and the symmetric s8 QDQ ONNX that the
INT8 export hands to TensorRT (checked node by node and run here with ONNX Runtime). No
stand-in for TensorRT anywhere.

Marked needs_tensorrt (skipped, with the reason shown, where TensorRT is absent): FP32 / FP16
/ INT8 engines of the digits model built on the GPU and checked against torch.
"""
from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_concurrently

from edgecls.errors import ArtifactError, MissingDependencyError, UnsupportedOptionError
from edgecls.backends.tensorrt.container import (HEADER_SIZE, MAGIC, engine_digest, pack,
                                                 read_engine, read_spec, wrap_engine,
                                                 write_engine)

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
# Stands in for a serialized engine wherever TensorRT itself is not involved.
FAKE_PLAN = bytes(range(256)) * 64


@pytest.fixture(scope="module")
def engine_spec(digits_onnx):
    """The real spec of the real exported digits ONNX, as the TensorRT exporter derives it."""
    from edgecls.formats import read_spec as read_any
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


def test_spec_is_read_without_tensorrt(engine_file):
    """The runtime module imports without TensorRT; the row reads the spec in pure Python."""
    import edgecls.backends.tensorrt.runtime  # noqa: F401
    from edgecls.formats import get_format
    assert get_format("tensorrt").read_spec(engine_file).name == "digits_cnn"


def test_wrap_a_raw_engine(engine_spec, tmp_path):
    raw = tmp_path / "trtexec.plan"
    raw.write_bytes(FAKE_PLAN)
    _expect(raw, "without an edgecls header", "edgecls export --to tensorrt", "wrap_engine")
    out = wrap_engine(raw, engine_spec, tmp_path / "wrapped.engine", tensorrt_version="10.3.0")
    spec, plan = read_engine(out)
    assert plan == FAKE_PLAN and spec.tools["tensorrt"] == "10.3.0"
    with pytest.raises(ArtifactError, match="already an edgecls engine"):
        wrap_engine(out, engine_spec, tmp_path / "twice.engine")
    # written atomically, so even onto the raw file itself
    wrap_engine(raw, engine_spec, raw)
    assert read_engine(raw)[1] == FAKE_PLAN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trtexec.plan", "wrapped.engine"]


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
    from edgecls.backends.tensorrt.runtime import TensorRTSession
    with pytest.raises(MissingDependencyError, match=r"edgecls\[tensorrt\]"):
        TensorRTSession(engine_file, device="gpu")


def test_a_broken_tensorrt_install_names_the_extra(monkeypatch):
    """tensorrt's wheel present but libnvinfer not loadable: OSError on import."""
    from edgecls.backends.tensorrt.cuda import import_cudart
    from edgecls.backends.tensorrt.library import import_tensorrt

    class BrokenLibraries:
        def find_spec(self, name, path=None, target=None):
            if name in ("tensorrt", "cuda"):
                raise OSError(f"lib for {name}.so: cannot open shared object file")

    monkeypatch.setattr(sys, "meta_path", [BrokenLibraries()] + sys.meta_path)
    for name in ("tensorrt", "cuda", "cuda.bindings"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    for load in (import_tensorrt, import_cudart):
        with pytest.raises(MissingDependencyError, match="cannot open shared object") as e:
            load()
        assert e.value.extra == "tensorrt"


def test_export_options_are_checked_before_tensorrt(digits_model, digits_data, tmp_path):
    from edgecls.backends.tensorrt import TensorRTOptions
    from edgecls.exporting import export
    assert TensorRTOptions.parse({"workspace_gb": "2"}, "fp16", "tensorrt") == \
        TensorRTOptions(workspace_gb=2.0)
    assert TensorRTOptions.parse({"dla_core": 1}, "fp16", "tensorrt").dla_core == 1
    for options, precision, words in [({"opset": 17}, "fp32", "does not take --opset"),
                                      ({"dla_core": 0}, "fp32", "FP16 and INT8 only"),
                                      ({"dla_core": 0}, "int8", "no explicit .*INT8"),
                                      ({"dla_core": -1}, "fp16", "0 or more"),
                                      ({"workspace_gb": 0}, "fp32", "positive"),
                                      ({"workspace_gb": "lots"}, "fp32", "a number")]:
        with pytest.raises(UnsupportedOptionError, match=words):
            TensorRTOptions.parse(options, precision, "tensorrt")
    # through export(): refused before TensorRT, a GPU or the model are needed
    model, spec = digits_model
    _, calib, _, _ = digits_data
    with pytest.raises(UnsupportedOptionError, match="no explicit .*INT8"):
        export(model, to="tensorrt", out=tmp_path / "d.engine", spec=spec, precision="int8",
               calib=calib, options={"dla_core": 0})


def test_build_plans():
    """GPU engines are strongly typed (the ONNX decides the precision; no deprecated FP16 /
    INT8 flag) and FP32 is FP32, not TF32; DLA engines are FP16 with GPU fallback."""
    from edgecls.backends.tensorrt.export import BuildPlan, build_plan
    assert build_plan("fp32", None) == BuildPlan("fp32", strongly_typed=True, clear_flags=("TF32",))
    assert build_plan("fp16", None) == BuildPlan("fp16", strongly_typed=True)
    assert build_plan("int8", None) == BuildPlan("int8-qdq", strongly_typed=True)
    assert build_plan("fp16", 0) == BuildPlan("fp32", strongly_typed=False,
                                              set_flags=("FP16", "GPU_FALLBACK"))


def test_each_operation_reports_its_own_tensorrt_errors():
    """TensorRT has one logger per process; a failure reports its own errors, not old ones."""
    from edgecls.backends.tensorrt.library import ErrorLog
    errors_of = ErrorLog()
    errors_of.add("logged outside any operation")
    with errors_of.capture() as errors:
        errors_of.add("parse failed:\n  node 3 (Conv)")
        assert errors() == "parse failed: node 3 (Conv)"
    with errors_of.capture() as errors:
        assert errors() == "no message from TensorRT"
        errors_of.add("out of memory")
        with errors_of.capture() as inner:
            errors_of.add("bad shape")
            assert inner() == "bad shape"
        assert errors("?") == "out of memory; bad shape"


# -- the INT8 ONNX that TensorRT parses -----------------------------------------------------------
@pytest.fixture(scope="module")
def int8_for_tensorrt(digits_model, digits_data, tmp_path_factory):
    """The QDQ ONNX an INT8 engine is built from, and the spec it filled in."""
    from edgecls.backends.tensorrt.quantize import qdq_onnx
    from edgecls.imaging.datasets import CalibrationSet
    from edgecls.sources.export_source import ExportSource
    model, spec = digits_model
    _, calib, _, _ = digits_data
    work = tmp_path_factory.mktemp("trt-int8")
    out_spec = spec.derive(format="tensorrt", precision="int8", tools=dict(spec.tools))
    path = qdq_onnx(ExportSource(model, spec, work).onnx(), out_spec,
                    CalibrationSet.from_source(calib, spec), work)
    return path, out_spec


def test_int8_onnx_is_what_tensorrt_takes(int8_for_tensorrt):
    """Symmetric s8 Q/DQ (zero points 0), float biases (no int32 bias DequantizeLinear, which
    TensorRT's parser rejects), Conv weights quantized per output channel (axis 0)."""
    import onnx
    from onnx import TensorProto, numpy_helper
    path, spec = int8_for_tensorrt
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    producers = {out: n for n in model.graph.node for out in n.output}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len([n for n in qdq if n.op_type == "QuantizeLinear"]) >= 4, "activations"
    for node in qdq:
        assert len(node.input) == 3 and node.input[2] in inits, f"{node.name}: no zero point"
        zero = inits[node.input[2]]
        assert zero.data_type == TensorProto.INT8, f"{node.name}: zero point is not int8"
        assert not numpy_helper.to_array(zero).any(), f"{node.name}: asymmetric"
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            assert inits[node.input[0]].data_type == TensorProto.INT8, \
                f"{node.name}: an int32 (bias) DequantizeLinear"
    quantized_convs = biased = 0
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        if len(conv.input) > 2:     # a bias: a float initializer, not an int32 DequantizeLinear
            assert conv.input[2] in inits, f"{conv.name}: its bias is computed, not float"
            assert inits[conv.input[2]].data_type == TensorProto.FLOAT, f"{conv.name}: bias"
            biased += 1
        weight = producers.get(conv.input[1])
        if weight is None or weight.op_type != "DequantizeLinear":
            continue                  # a conv kept in float (the first one)
        quantized_convs += 1
        axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
        scales = numpy_helper.to_array(inits[weight.input[1]])
        assert axis == 0 and scales.shape == (inits[weight.input[0]].dims[0],), conv.name
    assert quantized_convs >= 2
    assert biased >= 4     # the digits CNN's convs all have biases (BatchNorm folded in): checked
    q = spec.quantization
    assert q["target"] == "tensorrt" and q["activations"] == "s8 symmetric"
    assert q["format"] == "QDQ" and q["calibration_size"] > 0
    assert q["applied_by"] == "tensorrt (explicit Q/DQ)" and spec.tools["onnxruntime"]


def test_int8_onnx_still_classifies(int8_for_tensorrt, digits_model, digits_data):
    """The ONNX handed to TensorRT is the quantized model: within 2 points of torch's
    accuracy on held-out digits, run here with ONNX Runtime."""
    import onnxruntime as ort
    import torch

    from edgecls.imaging.preprocess import to_model_input
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
    from edgecls.imaging.preprocess import to_model_input
    from edgecls.formats import open_session
    crops, labels, ref = digits_val
    torch_acc = float((ref.argmax(1) == labels).mean())
    scale = max(1.0, float(np.abs(ref).max()))
    for precision, max_rel, min_agree, max_drop in [("fp32", 1e-3, 1.0, 0.0),
                                                    ("fp16", 2e-2, 0.99, 0.005),
                                                    ("int8", None, 0.95, 0.02)]:
        with open_session(digits_engines[precision], device="gpu") as s:
            got = s.run(to_model_input(crops, s.spec))      # 400 images: slices of 32
            assert s.device_used == "gpu" and s.describe()["tensorrt"]
            assert s.run(to_model_input(crops[:0], s.spec)).shape == (0, 10)
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
    from edgecls.formats import read_spec as read_any
    crops, labels, _ = digits_val
    for precision, path in digits_engines.items():
        spec = read_any(path)
        assert spec.format == "tensorrt" and spec.precision == precision
        assert spec.exported_from == "onnx" and spec.tools["tensorrt"] == trt.__version__
        assert spec.notes["engine_built_on"]["compute_capability"]
    assert read_any(digits_engines["int8"]).quantization["activations"] == "s8 symmetric"
    builds = {p: read_any(path).notes["tensorrt_build"] for p, path in digits_engines.items()}
    assert all(b["typing"] == "strong" and not b["flags"] for b in builds.values())
    assert builds["fp32"]["flags_cleared"] == ["TF32"]
    with Classifier(digits_engines["fp32"], device="auto", batch_size=7) as clf:
        top = clf.predict(list(crops[:20]))
    assert sum(p[0].index == y for p, y in zip(top, labels[:20])) >= 18
    assert top[0][0].label == str(top[0][0].index)      # labels come from the spec


@pytest.mark.needs_tensorrt
def test_portability_is_checked(digits_engines, tmp_path):
    from edgecls.errors import DeviceUnavailableError
    from edgecls.backends.tensorrt.runtime import TensorRTSession
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
    with pytest.raises(DeviceUnavailableError, match="tensorrt artifacts run on .*, not cpu"):
        TensorRTSession(digits_engines["fp32"], device="cpu")


@pytest.mark.needs_tensorrt
def test_threads_share_one_session(digits_engines, digits_val):
    from edgecls.imaging.preprocess import to_model_input
    from edgecls.formats import open_session
    crops, _, _ = digits_val
    with open_session(digits_engines["fp16"], device="gpu") as s:
        x = to_model_input(crops[:48], s.spec)
        expected = s.run(x)

        def work(i):
            part = slice(i * 3, i * 3 + 5)
            return np.abs(s.run(x[part]) - expected[part]).max()

        results = run_concurrently(work, 12)
    assert max(results) < 1e-2
