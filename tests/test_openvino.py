"""OpenVINO backend: IR export (FP32/FP16/INT8, static batch, baked preprocessing), the spec in
rt_info, the session (devices, precision hint, throughput, threads) and bad artifacts.

Real models and data only: the digits CNN trained in the session and the real
EfficientNet-Lite0 on the bundled photos. Most IRs are made by the OpenVINO exporter from
the session's ONNX file (what edgecls.exporting does, minus re-exporting the ONNX each time);
the edgecls.exporting.export path itself is tested for the atomic write and its failures.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_concurrently

# dev dependencies, imported for real: a broken install fails here, loudly, instead of
# skipping the module
import nncf  # noqa: F401
import openvino  # noqa: F401

from edgecls.errors import ArtifactError, DeviceUnavailableError, UnsupportedOptionError  # noqa: E402
from edgecls.spec import SPEC_KEY  # noqa: E402


# -- helpers -------------------------------------------------------------------------------
def make_ir(model, spec, onnx_path: Path, out: Path, precision="fp32", calib=None, **options):
    """The OpenVINO exporter on a source whose FP32 ONNX file already exists; an INT8
    export's Tuner is run by the recipe search, as export() does."""
    from edgecls.search import export_int8
    tuner, source, calibration, parsed = exporter(model, spec, onnx_path, out, precision,
                                                  calib, **options)
    if tuner is not None:
        export_int8(tuner, source, calibration, out, search=not parsed.no_search)
    return out


def exporter(model, spec, onnx_path: Path, out: Path, precision="fp32", calib=None, **options):
    """(what the OpenVINO exporter returns - an INT8 export's Tuner, else None -, the
    source, the CalibrationSet, the parsed options)."""
    from edgecls.backends.onnx import DEFAULT_OPSET
    from edgecls.backends.openvino import OpenVINOOptions
    from edgecls.backends.openvino.export import export
    from edgecls.imaging.datasets import CalibrationSet
    from edgecls.sources.export_source import ExportSource

    source = ExportSource(model, spec, out.parent, onnx_opset=DEFAULT_OPSET, _onnx=onnx_path)
    calibration = CalibrationSet.from_source(calib, spec) if calib is not None else None
    derived = spec.derive(format="openvino", precision=precision, tools=dict(spec.tools),
                          notes=dict(spec.notes))
    parsed = OpenVINOOptions.parse(options, precision, "openvino")
    tuner = export(source, derived, out, precision=precision, calibration=calibration,
                   options=parsed)
    return tuner, source, calibration, parsed


def logits(path, crops, **kwargs):
    from edgecls.imaging.preprocess import to_model_input
    from edgecls.formats import open_session
    with open_session(path, **kwargs) as s:
        return s.run(to_model_input(crops, s.spec))


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_val(digits_model, digits_data):
    """Validation crops, labels and the torch model's logits on them."""
    import torch

    from edgecls.imaging.preprocess import to_model_input
    model, spec = digits_model
    _, _, val, _ = digits_data
    crops = val.crops(spec)
    with torch.no_grad():
        ref = model(torch.from_numpy(to_model_input(crops, spec))).numpy()
    return crops, val.labels(), ref


@pytest.fixture(scope="module")
def irs(digits_model, digits_onnx, digits_data, tmp_path_factory):
    """The digits IRs: fp32, fp16, int8, baked fp32, static-batch fp32."""
    model, spec = digits_model
    _, calib, _, _ = digits_data
    folder = tmp_path_factory.mktemp("ov")
    return {
        "fp32": make_ir(model, spec, digits_onnx, folder / "fp32.xml"),
        "fp16": make_ir(model, spec, digits_onnx, folder / "fp16.xml", "fp16"),
        "int8": make_ir(model, spec, digits_onnx, folder / "int8.xml", "int8", calib=calib),
        # NNCF alone: --preset names it (else the search may choose ONNX Runtime's QDQ model)
        "int8-nncf": make_ir(model, spec, digits_onnx, folder / "int8-nncf.xml", "int8",
                             calib=calib, preset="performance"),
        "baked": make_ir(model, spec, digits_onnx, folder / "baked.xml", bake_preprocessing=True),
        "static": make_ir(model, spec, digits_onnx, folder / "static.xml", static_batch=4),
    }


def accuracy(scores, labels) -> float:
    return float((scores.argmax(1) == labels).mean())


# -- accuracy ------------------------------------------------------------------------------
def test_fp32_fp16_int8_keep_the_torch_accuracy(irs, digits_val):
    crops, labels, ref = digits_val
    torch_acc = accuracy(ref, labels)
    got = {p: logits(irs[p], crops) for p in ("fp32", "fp16", "int8")}
    acc = {p: accuracy(v, labels) for p, v in got.items()}
    assert torch_acc > 0.9
    assert abs(acc["fp32"] - torch_acc) <= 0.0025, (acc, torch_acc)
    assert np.abs(got["fp32"] - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max())
    assert abs(acc["fp16"] - torch_acc) <= 0.005, (acc, torch_acc)
    assert acc["fp32"] - acc["int8"] <= 0.01, acc


def test_int8_is_really_quantized_and_recorded(irs):
    import openvino as ov

    from edgecls.formats import read_spec
    spec = read_spec(irs["int8-nncf"])
    q = spec.quantization
    assert spec.precision == "int8" and q["method"] == "nncf-ptq" and q["preset"] == "performance"
    assert q["calibration_source"] == "digits" and q["calibration_size"] == 200
    assert len(q["calibration_hash"]) == 16
    # the default recipe keeps the first convolution and the classifier in float, and the
    # graph analysis finds exactly those two unquantized
    assert len(q["ignored_scope"]) == 2 and sorted(q["kept_in_float"]) == sorted(q["ignored_scope"])
    types = {op.get_type_name() for op in ov.Core().read_model(str(irs["int8-nncf"])).get_ops()}
    assert "FakeQuantize" in types


def test_onnx_runtime_qdq_models_run_in_openvino_as_in_onnx_runtime(
        digits_model, digits_onnx, digits_data, digits_val, tmp_path):
    """For a target that never saturates the search also converts ONNX Runtime's QDQ models
    (from the FP32 and the adaptively rounded start). The oracle: ONNX Runtime running the
    very QDQ file OpenVINO converted (with its exact int8 kernels), and the torch model."""
    import openvino as ov

    from edgecls.backends.onnx.runtime import OnnxRuntimeSession
    from edgecls.formats import read_spec
    from edgecls.imaging.preprocess import to_model_input
    model, spec = digits_model
    _, calib, _, _ = digits_data
    crops, labels, ref = digits_val
    tuner, *_ = exporter(model, spec, digits_onnx, tmp_path / "x.xml", "int8", calib=calib,
                         target="x86-vnni")
    recipes = [r for r in tuner.bases() if r.settings.get("quantizer") == "onnxruntime"]
    # each start with each activation range (backends/ranges.py)
    assert [(r.settings["start"], r.settings["ranges"]) for r in recipes] == [
        (start, ranges) for start in (0, 1) for ranges in ("minmax", "p90", "p75")]
    assert all(("adaptive rounding" in r.label) == (r.settings["start"] == 1) for r in recipes)
    for recipe in recipes[:1] + recipes[-1:]:          # nearest min/max; rounded p75
        name = f"qdq{recipe.settings['start']}-{recipe.settings['ranges']}"
        out = tmp_path / f"{name}.xml"
        tuner.build(recipe, out)
        q = read_spec(out).quantization
        assert q["format"] == "QDQ" and q["converted_by"] == "openvino" and q["recipe"] == recipe.label
        assert ("rounding" in q) == (recipe.settings["start"] == 1)
        types = {op.get_type_name() for op in ov.Core().read_model(str(out)).get_ops()}
        assert "FakeQuantize" in types
        qdq = tmp_path / f"{name}.onnx"
        tuner.qdq[recipe.settings["start"]].quantize(recipe.settings, qdq)
        with OnnxRuntimeSession(qdq, precise_int8=True) as session:
            by_ort = session.run(to_model_input(crops, spec))
        by_openvino = logits(out, crops)
        assert np.mean(by_openvino.argmax(1) == by_ort.argmax(1)) >= 0.99
        assert accuracy(ref, labels) - accuracy(by_openvino, labels) <= 0.005


def test_the_rounded_start_gives_layers_kept_in_float_their_fp32_weights(
        digits_model, digits_onnx, digits_data, tmp_path):
    """NNCF from the adaptively rounded model: the layers it keeps in float (the first
    convolution and the classifier) hold the FP32 model's weights, not the rounded ones."""
    import openvino as ov

    from edgecls.formats import read_spec
    model, spec = digits_model
    _, calib, _, _ = digits_data
    tuner, *_ = exporter(model, spec, digits_onnx, tmp_path / "x.xml", "int8", calib=calib,
                         target="x86-vnni")
    rounded = next(r for r in tuner.bases()
                   if r.settings.get("start") == 1 and "quantizer" not in r.settings)
    out = tmp_path / "rounded.xml"
    tuner.build(rounded, out)
    kept = read_spec(out).quantization["kept_in_float"]
    assert len(kept) == 2 and read_spec(out).quantization["rounding"]["layers"] >= 3

    def weights(m) -> dict[str, np.ndarray]:
        return {op.get_friendly_name(): op.input_value(1).get_node().get_data()
                for op in m.get_ops() if op.get_friendly_name() in kept
                and op.input_value(1).get_node().get_type_name() == "Constant"}

    fp32 = weights(ov.convert_model(str(digits_onnx)))
    written = weights(ov.Core().read_model(str(out)))
    rounded_start = weights(tuner.starts[1].model)
    assert sorted(fp32) == sorted(written) == sorted(kept)
    for name in kept:
        assert np.array_equal(written[name], fp32[name]), name
        assert not np.array_equal(rounded_start[name], fp32[name]), name   # it can fail


def test_fp16_weights_are_compressed(irs):
    assert irs["fp16"].with_suffix(".bin").stat().st_size < \
        0.6 * irs["fp32"].with_suffix(".bin").stat().st_size


def test_efficientnet_lite0_ir_agrees_with_torch_on_photos(effl0_onnx, photo_files, tmp_path):
    import torch

    from edgecls import zoo
    from edgecls.imaging.preprocess import crop_batch, to_model_input
    model, spec = zoo.build("efficientnet_lite0", "pretrained", None, None)
    xml = make_ir(model, spec, effl0_onnx, tmp_path / "effl0.xml")
    crops = crop_batch(list(photo_files.values()), spec)
    with torch.no_grad():
        ref = model(torch.from_numpy(to_model_input(crops, spec))).numpy()
    got = logits(xml, crops)
    onnx = logits(effl0_onnx, crops)
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert (got.argmax(1) == onnx.argmax(1)).all()
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()
    from edgecls.classifier import Classifier
    with Classifier(xml) as clf:  # decoding + preprocessing through the public API
        top = [preds[0].index for preds in clf.predict(list(photo_files.values()))]
    assert top == list(ref.argmax(1))


# -- accuracy control, ignored scope, options --------------------------------------------
def test_ignored_scope_and_preset_are_recorded(digits_model, digits_onnx, digits_data, tmp_path):
    import openvino as ov

    from edgecls.formats import read_spec
    model, spec = digits_model
    _, calib, _, _ = digits_data
    fp32 = ov.convert_model(str(digits_onnx))
    conv = next(op.get_friendly_name() for op in fp32.get_ordered_ops()
                if op.get_type_name() == "Convolution")
    xml = make_ir(model, spec, digits_onnx, tmp_path / "scope.xml", "int8", calib=calib,
                  ignored_scope=[conv], preset="mixed")
    q = read_spec(xml).quantization
    assert q["preset"] == "mixed" and q["ignored_scope"] == [conv]
    assert conv in q["kept_in_float"]


def test_options_that_make_no_sense_are_refused(digits_model, tmp_path):
    """Each case is refused for the option under test: FP32/FP16 cases get no --calib (which
    FP32/FP16 would refuse on its own), INT8 cases get a valid one, and each message must
    name the option (and, for a bad value, the value)."""
    from edgecls.exporting import export
    model, spec = digits_model
    cases = (("fp32", {"preset": "mixed"}, None, r"option\(s\) preset apply only to --int8"),
             ("fp16", {"ignored_scope": ["x"]}, None,
              r"option\(s\) ignored_scope apply only to --int8"),
             ("fp32", {"data": "digits"}, None, r"option\(s\) data apply only to --int8"),
             ("int8", {"preset": "fastest"}, "digits", r"unknown --preset 'fastest'"),
             ("int8", {"calib_method": "entropy"}, "digits", r"--calib-method .*not 'entropy'"))
    for precision, options, calib, match in cases:
        calibration = {"calib": calib, "calib_size": 32} if calib else {}
        with pytest.raises(UnsupportedOptionError, match=match):
            export(model, to="openvino", out=tmp_path / "x.xml", spec=spec, precision=precision,
                   options=options, **calibration)
    # and --calib itself is refused on an FP32 export, naming --calib
    with pytest.raises(UnsupportedOptionError, match=r"--calib, --calib-size apply only to --int8"):
        export(model, to="openvino", out=tmp_path / "x.xml", spec=spec, precision="fp32",
               calib="digits", calib_size=32)
    assert list(tmp_path.iterdir()) == []


# -- exporting.export: atomic pair, nothing left behind -----------------------------------
def test_export_writes_the_pair_or_nothing(digits_model, digits_val, tmp_path):
    from edgecls.exporting import export
    from edgecls.formats import read_spec
    model, spec = digits_model
    # fails after conversion, before saving
    with pytest.raises(UnsupportedOptionError, match="ignored_scope: no operation named no-such-op"):
        export(model, to="openvino", out=tmp_path / "bad.int8.xml", spec=spec, precision="int8",
               calib="digits", calib_size=32, options={"ignored_scope": ["no-such-op"]})
    assert list(tmp_path.iterdir()) == []
    out = export(model, to="openvino", out=tmp_path / "d.xml", spec=spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin", "d.xml"]
    assert read_spec(out).exported_from == "onnx"
    crops, labels, ref = digits_val
    assert (logits(out, crops).argmax(1) == ref.argmax(1)).all()


# -- rt_info, baked preprocessing, static batch ------------------------------------------
def test_spec_round_trips_through_rt_info(irs, digits_model):
    import openvino as ov

    from edgecls.formats import read_spec
    _, spec = digits_model
    raw = ov.Core().read_model(str(irs["fp32"])).get_rt_info(SPEC_KEY).astype(str)
    got = read_spec(irs["fp32"])
    assert json.loads(raw) == json.loads(got.to_json())
    assert got.derive(format="torch", tools={}, exported_from=None) == spec.derive(tools={})
    assert got.format == "openvino" and got.tools["openvino"]


def test_baked_preprocessing_matches_the_plain_ir(irs, digits_val):
    from edgecls.imaging.preprocess import to_model_input
    from edgecls.formats import open_session, read_spec
    crops, _, _ = digits_val
    spec = read_spec(irs["baked"])
    assert (spec.normalization_in_graph, spec.layout, spec.input_dtype) == (True, "NHWC", "uint8")
    assert to_model_input(crops[:2], spec).dtype == np.uint8
    baked, plain = logits(irs["baked"], crops), logits(irs["fp32"], crops)
    assert (baked.argmax(1) == plain.argmax(1)).all()
    assert np.abs(baked - plain).max() < 1e-4 * max(1.0, np.abs(plain).max())
    with open_session(irs["baked"]) as s, pytest.raises(ValueError, match="uint8"):
        s.run(to_model_input(crops[:2], spec).astype(np.float32))


def test_static_batch_runs_any_batch_size(irs, digits_val):
    from edgecls.formats import read_spec
    crops, _, _ = digits_val
    assert read_spec(irs["static"]).notes["static_batch"] == 4
    np.testing.assert_allclose(logits(irs["static"], crops[:7]), logits(irs["fp32"], crops[:7]),
                               atol=1e-4)


# -- the session ---------------------------------------------------------------------------
def test_precision_hint(irs):
    import openvino as ov

    from edgecls.formats import open_session
    with open_session(irs["fp32"]) as s:
        assert s.precision_used == "fp32"
    default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    with open_session(irs["fp32"], inference_precision="auto") as s:
        assert s.precision_used == {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(default, default)
    with open_session(irs["int8"]) as s:    # its float layers in f32, even where bf16 is the default
        assert s.precision_used == "int8+fp32"
    with open_session(irs["int8"], inference_precision="auto") as s:
        assert s.precision_used == "int8+" + {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(default, default)
    with pytest.raises(UnsupportedOptionError, match="inference_precision must be one of .*'int4'"):
        open_session(irs["fp32"], inference_precision="int4")


def test_absent_devices_are_errors_that_list_what_is_present(irs, digits_val):
    import openvino as ov

    from edgecls.formats import open_session
    present = ov.Core().available_devices
    for device in ("gpu", "npu"):
        if any(d.startswith(device.upper()) for d in present):
            continue
        with pytest.raises(DeviceUnavailableError, match="present: .*CPU"):
            open_session(irs["fp32"], device=device)
        with open_session(irs["fp32"], device=device, fallback=True) as s:
            assert s.device_used == "cpu"
    # "auto" runs somewhere, and what it runs is the digits CNN: torch's decisions (a GPU's
    # FP16 may round one near-tie of 64 the other way)
    crops, _, ref = digits_val
    got = logits(irs["fp32"], crops[:64], device="auto")
    assert (got.argmax(1) != ref[:64].argmax(1)).sum() <= 1


def test_throughput_hint_threads_and_concurrency(irs, digits_val):
    from edgecls.imaging.preprocess import to_model_input
    from edgecls.formats import open_session
    crops, _, _ = digits_val
    base = logits(irs["fp32"], crops[:16])
    with open_session(irs["fp32"], hint="throughput", threads=2) as s:
        np.testing.assert_allclose(s.run(to_model_input(crops[:16], s.spec)), base, atol=1e-5)

        def work(i):
            return s.run(to_model_input(crops[i * 4:i * 4 + 4], s.spec))

        results = run_concurrently(work, 4)
    np.testing.assert_allclose(np.concatenate(results), base, atol=1e-5)


# -- bad artifacts and the CLI ------------------------------------------------------------
@pytest.fixture
def bad_irs(irs, tmp_path):
    xml, bin_ = irs["fp32"].read_bytes(), irs["fp32"].with_suffix(".bin").read_bytes()
    cases = {"truncated_xml": (xml[:len(xml) // 2], bin_), "truncated_bin": (xml, bin_[:len(bin_) // 2]),
             "missing_bin": (xml, None), "not_an_ir": (b"hello, not xml", bin_),
             "no_spec": (xml.replace(SPEC_KEY.encode(), b"other.key"), bin_)}
    for name, (x, b) in cases.items():
        (tmp_path / f"{name}.xml").write_bytes(x)
        if b is not None:
            (tmp_path / f"{name}.bin").write_bytes(b)
    return [tmp_path / f"{name}.xml" for name in cases]


def test_corrupt_artifacts_are_one_line_artifact_errors(bad_irs, capsys):
    from edgecls.cli import main
    from edgecls.formats import open_session, read_spec
    for path in bad_irs:
        with pytest.raises(ArtifactError) as e:
            read_spec(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value)
        with pytest.raises(ArtifactError, match=re.escape(str(path))):
            open_session(path)
        assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("edgecls: error:") == len(bad_irs)


def test_cli_info_and_predict(irs, photo_files, capsys):
    from edgecls.cli import main
    assert main(["info", "--json", str(irs["int8"])]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "int8"
    assert main(["predict", str(irs["baked"]), str(photo_files["chelsea"]), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert len(next(iter(preds.values()))) == 5
