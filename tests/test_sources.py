"""Bring your own model: any input size and preprocessing, any torch model, existing ONNX
files (edgecls.sources, edgecls.imaging.options).

The model here is a small grayscale CNN (tests/graynet.py, importable as graynet:build like
a user's own factory) trained in the session on scikit-learn's real digits at 40x32 pixels
with mean 0.3 / std 0.4. Its weights, labels and image folders are written as files, and it
goes through the command line as a user would drive it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgecls.errors import (ArtifactError, DataError, SourceError, UnknownModelError,
                            UnsupportedOptionError)
from test_errors_cli import _Exploit, assert_user_error, run_cli

TESTS = Path(__file__).parent
LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
WIDTH = 8
EPOCHS = 6
# what the user says about the model: 40x32 (H x W), a plain resize (no crop), one channel,
# mean/std in 0-255 units (= 0.3 / 0.4)
PREPROCESSING = ["--input-size", "40x32", "--resize", "none", "--channels", "1",
                 "--mean", "76.5", "--std", "102"]
INT8_MAX_DROP = 2.0      # points; both CPU kinds (AVX2 and VNNI) stay well inside it here


def cli(capsys, *argv) -> tuple[int, str]:
    """The command line in this process (torch is imported once for all the exports)."""
    from edgecls.cli import main
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def cli_error(capsys, *argv) -> str:
    """Exit 2 and one `edgecls: error:` line, last, with no traceback."""
    code, err = cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("edgecls: error:")]
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    return errors[0]


def env_with_tests() -> dict[str, str]:
    """A subprocess that can import graynet, as a user's own module on PYTHONPATH."""
    return {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def gray(digits_data, tmp_path_factory):
    """GrayNet trained on the digits, and the files a user has: weights, labels, calib/val
    folders of grayscale PNGs (one folder per class)."""
    import cv2
    import torch

    from conftest import train
    from edgecls.imaging.preprocess import to_model_input
    from edgecls.spec import ModelSpec
    from graynet import INPUT_SIZE, build

    spec = ModelSpec("graynet_build", "graynet", 10, LABELS, input_size=INPUT_SIZE, resize=None,
                     mean=(0.3,), std=(0.4,), channels=1)
    _, calib, val, train_items = digits_data
    torch.manual_seed(0)
    model = train(build(WIDTH), train_items, spec, EPOCHS)
    folder = tmp_path_factory.mktemp("gray")
    weights = folder / "gray.pth"
    torch.save({"epoch": EPOCHS, "state_dict": model.state_dict()}, weights)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    for part, images in (("calib", calib), ("val", val)):
        for item in images.items:
            (folder / part / str(item.label)).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / part / str(item.label) / f"{item.key.split(':')[1]}.png"),
                        item.rgb()[:, :, 0])            # 8x8 grayscale files
    with torch.no_grad():
        crops = val.crops(spec)
        accuracy = float((model(torch.from_numpy(to_model_input(crops, spec))).argmax(1).numpy()
                          == val.labels()).mean())
    assert accuracy > 0.9, accuracy
    return SimpleNamespace(model=model, spec=spec, folder=folder, weights=weights, labels=labels,
                           calib=folder / "calib", val=folder / "val", accuracy=accuracy,
                           factory=["graynet:build", "--kwargs", json.dumps({"width": WIDTH}),
                                    "--weights", weights, "--labels", labels])


# -- preprocessing, on its own ---------------------------------------------------------------------
def test_grayscale_input_is_pil_luma(photo_files):
    """A 1-channel model gets ITU-R 601 luma, exactly as PIL's convert("L") (what torchvision's
    Grayscale gives), normalised with its one mean and std."""
    from PIL import Image

    from edgecls.imaging.preprocess import load_rgb, preprocess, resize_crop, to_model_input
    from edgecls.spec import ModelSpec
    spec = ModelSpec("g", "g", 10, LABELS, input_size=(48, 64), resize=None, mean=(0.3,),
                     std=(0.4,), channels=1)
    path = photo_files["chelsea"]
    crop = resize_crop(load_rgb(path), spec)
    assert crop.shape == (48, 64, 3)        # --resize none: a plain resize, no crop
    x = to_model_input(crop[None], spec)
    assert x.shape == (1, 1, 48, 64) and x.dtype == np.float32
    luma = np.asarray(Image.fromarray(crop).convert("L"), np.float32)
    want = (luma - 0.3 * 255) / (0.4 * 255)
    np.testing.assert_allclose(x[0, 0], want, atol=1e-5)
    # Classifier's path decodes this JPEG at half scale (64 px from 451 x 300): close, not equal
    fast = preprocess([path], spec)
    assert fast.shape == x.shape and np.abs(fast - x).mean() * 0.4 * 255 < 1.5


def test_preprocessing_values_units_and_channels():
    from edgecls.imaging.options import PreprocessingOptions
    from edgecls.spec import ModelSpec
    spec = ModelSpec("m", "m", 10, LABELS)                   # ImageNet defaults, 3 channels
    same = PreprocessingOptions.of(None).apply(spec)
    assert (same.input_size, same.resize, same.mean, same.std) == \
        (spec.input_size, spec.resize, spec.mean, spec.std)
    s = PreprocessingOptions.of({"input_size": "64x48", "resize": "none", "mean": ["127.5"],
                                 "std": ["127.5"], "interpolation": "bicubic",
                                 "channel_order": "bgr"}).apply(spec)
    assert s.input_size == (64, 48) and s.resize is None and s.channel_order == "BGR"
    assert s.mean == (0.5, 0.5, 0.5) and s.std == (0.5, 0.5, 0.5)    # 0-255 units, broadcast
    s = PreprocessingOptions.of({"input_size": (32, 24), "resize": 36, "mean": (0.5,),
                                 "std": 0.25, "channels": 1}).apply(spec)
    assert (s.input_size, s.resize, s.channels, s.mean, s.std) == ((32, 24), 36, 1, (0.5,), (0.25,))
    # units are decided over both flags: mean 127.5 with std 1 is x - 127.5, unscaled
    s = PreprocessingOptions.of({"mean": 127.5, "std": 1}).apply(spec)
    assert s.mean == (0.5,) * 3 and s.std == (1 / 255,) * 3
    # three equal values fit a grayscale model; ImageNet's three different ones do not
    gray = PreprocessingOptions.of({"channels": 1}).apply(spec.derive(mean=(0.5,) * 3,
                                                                      std=(0.5,) * 3))
    assert gray.mean == (0.5,) and gray.std == (0.5,)
    with pytest.raises(UnsupportedOptionError, match="1 input channel.*give --mean with 1"):
        PreprocessingOptions.of({"channels": 1}).apply(spec)


@pytest.mark.parametrize("values,words", [
    ({"input_size": "64x"}, "--input-size '64x'"),
    ({"input_size": 0}, "1 to 8192 pixels"),
    ({"input_size": "64.5"}, "--input-size"),
    ({"resize": "big"}, "--resize takes a whole number"),
    ({"resize": 10, "input_size": 64}, "smaller than the input size 64x64"),
    ({"mean": [0.5, 0.5]}, "--mean takes 1 or 3 value(s)"),
    ({"mean": ["a"]}, "--mean takes numbers"),
    ({"mean": [300]}, "outside the pixel range"),
    ({"std": [0]}, "must be above 0"),
    ({"mean": [0.5], "std": [127.5]}, "same units"),
    ({"interpolation": "cubic"}, "'cubic' is not one of bilinear"),
    ({"channel_order": "RGBA"}, "'RGBA' is not one of RGB, BGR"),
    ({"channels": 2}, "--channels 2 is not one of 1, 3"),
    ({"inputsize": 64}, "unknown preprocessing option(s) inputsize"),
])
def test_bad_preprocessing_values(values, words):
    from edgecls.imaging.options import PreprocessingOptions
    from edgecls.spec import ModelSpec
    with pytest.raises(UnsupportedOptionError) as e:
        PreprocessingOptions.of(values).apply(ModelSpec("m", "m", 10, LABELS))
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("flags,words", [
    (["--input-size", "64x"], "--input-size '64x': give H or HxW"),
    (["--mean", "0.5", "0.5"], "--mean takes 1 or 3 value(s)"),
    (["--std", "0"], "--std 0 0 0 must be above 0"),
    (["--resize", "10", "--input-size", "64"], "--resize 10 is smaller than the input size"),
    (["--interpolation", "cubic"], "--interpolation 'cubic' is not one of"),
    (["--channels", "two"], "--channels takes a whole number"),
    (["--channel-order", "RGBA"], "--channel-order 'RGBA'"),
])
def test_bad_values_on_the_command_line(flags, words, tmp_path, capsys):
    message = cli_error(capsys, "export", "mobilenet_v3_small", "--weights", "none", *flags,
                        "-o", tmp_path / "out" / "m.onnx")
    assert words in message
    assert not (tmp_path / "out").exists()


def test_a_bad_value_in_a_real_process(tmp_path):
    proc = run_cli("export", "mobilenet_v3_small", "--weights", "none", "--mean", "0.5", "0.5",
                   "-o", tmp_path / "out" / "m.onnx", cwd=tmp_path)
    assert_user_error(proc, "--mean takes 1 or 3 value(s)")
    assert not (tmp_path / "out").exists()


def test_zoo_defaults_stay_and_flags_override():
    from edgecls.imaging.options import PreprocessingOptions
    from edgecls.sources import SourceRequest, resolve
    plain = resolve("mobilenet_v3_small", SourceRequest(weights="none")).spec
    assert (plain.input_size, plain.resize, plain.interpolation) == ((224, 224), 256, "bilinear")
    assert plain.reference == {"kind": "zoo", "source": "mobilenet_v3_small", "weights": "none"}
    options = PreprocessingOptions.of({"input_size": 64, "resize": 64, "mean": 0.5, "std": 0.5,
                                       "interpolation": "bicubic"})
    small = resolve("mobilenet_v3_small", SourceRequest(weights="none", num_classes=10,
                                                        preprocessing=options)).spec
    assert (small.input_size, small.resize, small.interpolation, small.mean, small.num_classes) \
        == ((64, 64), 64, "bicubic", (0.5,) * 3, 10)
    with pytest.raises(SourceError, match=r"does not run on a 1x224x224 input.*--channels"):
        resolve("mobilenet_v3_small", SourceRequest(
            weights="none", preprocessing=PreprocessingOptions.of({"channels": 1, "mean": 0.5,
                                                                   "std": 0.5})))


# -- the grayscale CNN, through the command line, to every format ----------------------------------
def test_gray_cnn_through_the_cli_to_every_format(gray, tmp_path, capsys, digits_data):
    """A factory + weights + kwargs + labels + preprocessing flags, exported to ONNX, OpenVINO
    and TFLite in FP32 and INT8; each keeps the torch model's accuracy on the held-out
    images, and `edgecls parity` (naming the factory) says so."""
    from edgecls.classifier import Classifier
    from edgecls.formats import read_spec

    out = tmp_path / "out"
    plan = [("onnx", ".onnx"), ("openvino", ".xml"), ("tflite", ".tflite")]
    artifacts = []
    for fmt, suffix in plan:
        for int8 in (False, True):
            path = out / f"gray.{fmt}{'.int8' if int8 else ''}{suffix}"
            args = ["export", *gray.factory, *PREPROCESSING, "--to", fmt, "-o", path]
            if int8:
                args += ["--int8", "--calib", gray.calib, "--data", gray.val]
            if (fmt, int8) == ("onnx", False):    # one real process: the console script's way
                proc = run_cli(*args, cwd=tmp_path, env=env_with_tests())
                assert proc.returncode == 0, proc.stderr
            else:
                code, err = cli(capsys, *args)
                assert code == 0, err
            artifacts.append(path)
    for path in artifacts:
        spec = read_spec(path)
        assert (spec.input_size, spec.resize, spec.channels) == ((40, 32), None, 1), path
        np.testing.assert_allclose(spec.mean + spec.std, (0.3, 0.4))
        assert spec.labels == LABELS and spec.name == "graynet_build"
        assert spec.reference["kind"] == "factory" and spec.reference["kwargs"] == {"width": WIDTH}
        assert spec.reference["weights"] == str(gray.weights.resolve())
        assert len(spec.reference["weights_sha256"]) == 16

    # the reference is a factory: parity says how to name it, then runs
    message = cli_error(capsys, "parity", artifacts[0], "--data", gray.val)
    assert "--reference graynet:build" in message
    code, err = cli(capsys, "parity", *artifacts, "--data", gray.val, "--reference",
                    "graynet:build", "--max-drop", INT8_MAX_DROP, "-o", tmp_path / "report")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert code == 0, err
    assert report["reference"]["kind"] == "pytorch"
    assert report["reference"]["top1"] == pytest.approx(gray.accuracy)
    for result in report["results"]:
        assert result["n"] == 400
        if result["precision"] == "int8":
            assert result["top1_drop"] <= INT8_MAX_DROP, result
        else:
            assert result["agreement"] >= 0.995, result

    # and a Classifier reads each with nothing else: a grayscale PNG file in, its digit out
    _, _, val, _ = digits_data
    files = sorted((gray.val / "7").iterdir())[:5]
    for path in artifacts:
        with Classifier(path) as clf:
            assert [p[0].label for p in clf.predict(files)].count("seven") >= 4, path


def test_best_int8_through_the_cli(gray, tmp_path, capsys):
    """`edgecls export ... --to best --int8 --calib DIR --data DIR --no-search`: every
    installed INT8 backend (its target's recipe as it is) is raced on the calibration folder's images that did not calibrate (--calib-size
    100 of 200), the fastest that meets the tolerance is judged on --data and is the one file
    written, its record naming every candidate; the oracle for the winner is its accuracy in
    its own runtime against the torch model's on the held-out digits."""
    from edgecls.classifier import Classifier
    from edgecls.formats import read_spec
    from edgecls.imaging.datasets import load_part

    out = tmp_path / "out"
    code, err = cli(capsys, "export", *gray.factory, *PREPROCESSING, "--to", "best", "--int8",
                    "--calib", gray.calib, "--calib-size", "100", "--data", gray.val,
                    "--max-drop", INT8_MAX_DROP, "--no-search", "-o", out / "gray")
    assert code == 0, err
    assert "--to best: int8 artifacts ranked on the selection images" in err
    written = sorted(p.name for p in out.iterdir())
    assert len([n for n in written if not n.endswith(".bin")]) == 1, written   # the winner alone
    winner = next(p for p in out.iterdir() if p.suffix != ".bin")
    record = read_spec(winner).notes["best"]
    raced = [c["recipe"].split()[0] for c in record["candidates"]]
    assert {"onnx", "openvino", "tflite"} <= set(raced), raced
    assert all(c["recipe"].split()[1].startswith("int8") for c in record["candidates"])
    passing = [c for c in record["candidates"] if c["passed"]]
    assert record["chosen"] == min(passing, key=lambda c: c["latency_ms"])["recipe"]
    assert winner.suffix == {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite",
                             "executorch": ".pte"}[record["chosen"].split()[0]]
    assert record["verification"]["outcome"] == "pass"
    assert record["verification"]["images"].startswith("val")
    val = load_part(gray.val, gray.spec, "val")
    with Classifier(winner) as clf:
        accuracy = float((clf.probabilities(val.crops(clf.spec)).argmax(1) == val.labels()).mean())
    assert accuracy >= gray.accuracy - INT8_MAX_DROP / 100, accuracy


def test_int8_diagnostics_use_the_fp32_export_among_the_compared(gray, tmp_path, monkeypatch):
    """Parity's worst INT8 layers (SQNR against the FP32 model) come from an FP32 ONNX export
    of the same model when one is among the compared artifacts, instead of exporting the
    reference again; the oracle is the same diagnosis against the reference's own export."""
    from edgecls.exporting import export
    from edgecls.verification import Reference, parity
    common = dict(weights=str(gray.weights), labels=LABELS, model_kwargs={"width": WIDTH},
                  preprocessing={"input_size": "40x32", "resize": "none", "channels": 1,
                                 "mean": [76.5], "std": [102]})
    fp32 = export("graynet:build", out=tmp_path / "g.onnx", **common)
    int8 = export("graynet:build", out=tmp_path / "g.int8.onnx", precision="int8",
                  calib=gray.calib, options={"no_search": True}, check=False, **common)
    alone = parity([int8], data=gray.val, reference=["graynet:build"], limit=40,
                   progress=False).results[-1]
    monkeypatch.setattr(Reference, "fp32_onnx",
                        lambda self, work: pytest.fail("exported the reference again"))
    both = parity([fp32, int8], data=gray.val, reference=["graynet:build"], limit=40,
                  progress=False).results[-1]
    assert both.worst_layers and both.worst_layers_note == alone.worst_layers_note
    assert [(w["module"], round(w["sqnr_db"], 3)) for w in both.worst_layers] == \
        [(w["module"], round(w["sqnr_db"], 3)) for w in alone.worst_layers]


def test_qat_through_the_cli_to_two_formats_then_resumed(gray, tmp_path, capsys):
    """`edgecls export ... --qat --to onnx,openvino --train DIR`: ONNX and OpenVINO are one
    family (the same x86 quantizer), so ONE supervised student is trained and written as
    both artifacts; each keeps the torch model's accuracy on held-out images in its own
    runtime; `--resume --epochs 2` continues the checkpoint for one more epoch instead of
    starting again, and refuses to overwrite the artifacts without --force. --no-check: the
    student's own artifacts are written (with the check, the closer of QAT and its PTQ twin
    is: tests/test_qat.py)."""
    from edgecls.classifier import Classifier
    from edgecls.formats import read_spec
    from edgecls.imaging.datasets import load_part

    out = tmp_path / "out"
    # one learning rate (without --lr each of LEARNING_RATES trains: tests/test_qat.py)
    args = ["export", *gray.factory, *PREPROCESSING, "--to", "onnx,openvino", "--qat",
            "--train", gray.calib, "--no-check", "--lr", "5e-6", "-o", out]
    code, err = cli(capsys, *args, "--epochs", "1")
    assert code == 0, err
    artifacts = sorted(p for p in out.iterdir() if p.suffix in (".onnx", ".xml"))
    assert [p.suffix for p in artifacts] == [".onnx", ".xml"], sorted(out.iterdir())
    assert len(list(out.glob("*.pt"))) == 1                  # one student, one checkpoint
    first = {p.suffix: read_spec(p).quantization for p in artifacts}
    val = load_part(gray.val, gray.spec, "val")
    for path in artifacts:
        q = first[path.suffix]
        assert q["method"] == "qat" and q["mode"] == "supervised" and q["family"] == "cpu", q
        assert [h["epoch"] for h in q["history"]] == [0, 1]   # 0: the PTQ starting point
        with Classifier(path) as clf:
            accuracy = float((clf.probabilities(val.crops(clf.spec)).argmax(1)
                              == val.labels()).mean())
        assert accuracy >= gray.accuracy - INT8_MAX_DROP / 100, (path.name, accuracy)
    assert first[".onnx"]["history"] == first[".xml"]["history"]

    message = cli_error(capsys, *args, "--epochs", "2", "--resume")
    assert "--force" in message and "exists" in message
    code, err = cli(capsys, *args, "--epochs", "2", "--resume", "--force")
    assert code == 0, err
    for path in artifacts:
        history = read_spec(path).quantization["history"]
        assert [h["epoch"] for h in history] == [0, 1, 2], path
        assert history[:2] == first[path.suffix]["history"], path     # continued, not redone


def test_the_factory_and_its_options_fail_in_one_line(gray, tmp_path, capsys):
    out = tmp_path / "out"
    kw = json.dumps({"width": WIDTH})
    assert "cannot import nosuchpkg" in cli_error(capsys, "export", "nosuchpkg.models:build",
                                                  "-o", out / "x.onnx")
    assert "graynet has no function nothing" in cli_error(capsys, "export", "graynet:nothing")
    assert "TypeError" in cli_error(capsys, "export", "graynet:build", "--kwargs",
                                    '{"depth": 3}')
    assert "--kwargs is not valid JSON" in cli_error(capsys, "export", "graynet:build",
                                                     "--kwargs", "{width: 8}")
    assert "must be a JSON object" in cli_error(capsys, "export", "graynet:build", "--kwargs",
                                                "[8]")
    assert "--kwargs applies to module:function" in cli_error(capsys, "export", "resnet18",
                                                              "--kwargs", kw)
    # its weights with another width: load_state_dict's mismatch, in one line
    assert "does not fit this model" in cli_error(capsys, "export", "graynet:build", "--kwargs",
                                                  '{"width": 4}', "--weights", gray.weights)
    # the flags that contradict the model it builds
    assert "outputs 10 classes, not --num-classes 7" in cli_error(
        capsys, "export", *gray.factory, *PREPROCESSING, "--num-classes", "7")
    assert "does not run on a 1x64x64 input" in cli_error(
        capsys, "export", *gray.factory, "--input-size", "64", "--channels", "1", "--mean", "0.5",
        "--std", "0.5")
    assert not out.exists() or not list(out.iterdir())


# -- timm and torchvision names outside the zoo ----------------------------------------------------
def test_timm_and_torchvision_names_outside_the_zoo(tmp_path, capsys, caplog):
    """A timm model with its own (160 px, bicubic) preprocessing and a fine-tuned checkpoint;
    a torchvision classifier with random weights. parity rebuilds both from their specs, and
    warns when the checkpoint changed since."""
    from edgecls import zoo
    from edgecls.formats import read_spec
    from edgecls.zoo.torchvision_shim import import_torchvision
    import_torchvision()                       # before timm, which imports torchvision itself

    import timm
    import torch
    assert not any(e.source == "timm" and e.builder.startswith("test_efficientnet")
                   for e in zoo.list_models())
    torch.manual_seed(3)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)       # not what a fresh build gives
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    out = tmp_path / "out"
    code, err = cli(capsys, "export", "timm:test_efficientnet", "--weights", ckpt,
                    "--num-classes", "10", "--to", "openvino", "-o", out / "te.xml")
    assert code == 0, err
    spec = read_spec(out / "te.xml")
    cfg = model.pretrained_cfg
    assert spec.input_size == tuple(cfg["input_size"][1:]) == (160, 160)
    assert spec.interpolation == cfg["interpolation"] == "bicubic"
    assert spec.resize == int(160 / cfg["crop_pct"]) and spec.num_classes == 10
    assert spec.reference["source"] == "timm:test_efficientnet"
    code, err = cli(capsys, "parity", out / "te.xml", "--data", "photos", "--limit", "12",
                    "-o", tmp_path / "r1")
    assert code == 0, err
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert report["results"][0]["agreement"] == 1.0 and "warnings" not in report["reference"]

    with torch.no_grad():
        model.conv_stem.weight.mul_(-1)              # the checkpoint changes after the export
    torch.save({"model": model.state_dict()}, ckpt)
    caplog.clear()
    cli(capsys, "parity", out / "te.xml", "--data", "photos", "--limit", "12", "-o",
        tmp_path / "r2")
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert any("has changed since test_efficientnet was exported" in w
               for w in report["reference"]["warnings"])
    assert any("has changed since" in r.getMessage() for r in caplog.records)

    code, err = cli(capsys, "export", "torchvision:regnet_y_400mf", "--weights", "none",
                    "--to", "onnx", "-o", out / "regnet.onnx")
    assert code == 0, err
    spec = read_spec(out / "regnet.onnx")
    assert spec.architecture == "torchvision.regnet_y_400mf" and spec.resize == 232
    assert not spec.trained
    code, err = cli(capsys, "parity", out / "regnet.onnx", "--data", "photos", "--limit", "8")
    assert code == 0, err

    assert "did you mean timm:test_efficientnet" in cli_error(capsys, "export",
                                                              "timm:test_eficientnet")
    assert "not an image classifier" in cli_error(capsys, "export",
                                                  "torchvision:fasterrcnn_resnet50_fpn")
    with pytest.raises(UnknownModelError, match="torchvision:regnet_y_400mf"):
        from edgecls.sources import resolve
        resolve("torchvision:regnet_y_400m")


# -- an ONNX file made by someone else -------------------------------------------------------------
@pytest.fixture(scope="module")
def foreign_onnx(gray, tmp_path_factory):
    """The trained network as torch's TorchScript-based exporter writes it for another team:
    channels-last input, a fixed batch of 1, its own tensor names, no edgecls spec."""
    import warnings

    import torch

    from graynet import ChannelsLast
    path = tmp_path_factory.mktemp("foreign") / "their_model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ChannelsLast(gray.model).eval(), (torch.zeros(1, 40, 32, 1),), str(path),
                          dynamo=False, input_names=["pixels"], output_names=["scores"])
    gray.model.eval()        # the exporter put the wrapper (and so the model) back in train()
    return path


def test_foreign_onnx_to_openvino_int8_and_parity(gray, foreign_onnx, tmp_path, capsys):
    import onnx

    from edgecls.formats import read_spec
    graph = onnx.load(str(foreign_onnx)).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 40, 32, 1]
    assert not onnx.load(str(foreign_onnx)).metadata_props
    out = tmp_path / "out"
    flags = ["--labels", gray.labels, "--resize", "none", "--mean", "76.5", "--std", "102",
             "--calib", gray.calib, "--data", gray.val, "--int8"]
    for fmt, name in (("openvino", "their.int8.xml"), ("onnx", "their.int8.onnx")):
        code, err = cli(capsys, "export", foreign_onnx, "--to", fmt, *flags, "-o", out / name)
        assert code == 0, err
        spec = read_spec(out / name)
        assert spec.reference == {"kind": "onnx", "source": str(foreign_onnx.resolve()),
                                  "sha256": spec.reference["sha256"]}
        assert (spec.input_size, spec.channels, spec.layout, spec.precision) == \
            ((40, 32), 1, "NCHW", "int8")
    # parity builds the reference from the spec: the ONNX file itself, in ONNX Runtime
    code, err = cli(capsys, "parity", out / "their.int8.xml", out / "their.int8.onnx", "--data",
                    gray.val, "--max-drop", INT8_MAX_DROP, "-o", tmp_path / "report")
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["reference"]["kind"] == "onnxruntime"
    assert report["reference"]["origin"] == str(foreign_onnx.resolve())
    assert report["reference"]["top1"] == pytest.approx(gray.accuracy, abs=0.0051)
    assert all(r["top1_drop"] <= INT8_MAX_DROP for r in report["results"])
    onnx_int8 = next(r for r in report["results"] if r["format"] == "onnx")
    assert onnx_int8["worst_layers"], "SQNR diagnostics run against the ONNX parent"

    # TFLite needs the torch model; the message says what to do
    message = cli_error(capsys, "export", foreign_onnx, "--to", "tflite", "-o", out / "t.tflite")
    assert "--to tflite needs a torch model" in message and "onnx, openvino, tensorrt" in message
    # the file moves: parity says what to pass, and takes it
    moved = tmp_path / "moved.onnx"
    moved.write_bytes(foreign_onnx.read_bytes())
    code, err = cli(capsys, "export", moved, "--to", "onnx", "--labels", gray.labels,
                    "--resize", "none", "--mean", "0.3", "--std", "0.4", "-o", out / "m.onnx")
    assert code == 0, err
    moved.rename(tmp_path / "moved_again.onnx")
    assert "is gone (moved or deleted): pass --reference with its new path" in cli_error(
        capsys, "parity", out / "m.onnx", "--data", gray.val)
    code, err = cli(capsys, "parity", out / "m.onnx", "--data", gray.val, "--reference",
                    tmp_path / "moved_again.onnx")
    assert code == 0 and "has changed" not in err, err
    assert not list(out.glob(".*tmp*")) and not (out / "t.tflite").exists()


def test_onnx_source_reference_for_the_recipe_search(gray, foreign_onnx, tmp_path, digits_data):
    """What issue 8's search uses: ExportSource.reference_logits runs the ONNX file in ONNX
    Runtime (channels-last, batch 1, as it was written), here without torch involved."""
    import onnxruntime as ort

    from edgecls.imaging.preprocess import to_model_input
    from edgecls.imaging.options import PreprocessingOptions
    from edgecls.sources import SourceRequest, resolve
    request = SourceRequest(labels=LABELS, preprocessing=PreprocessingOptions.of(
        {"resize": "none", "mean": 0.3, "std": 0.4}))
    resolved = resolve(str(foreign_onnx), request)
    source = resolved.source(tmp_path)
    assert source.model is None and source.reference == source.onnx()
    _, _, val, _ = digits_data
    crops = val.crops(resolved.spec)[:20]
    got = source.reference_logits(crops)
    session = ort.InferenceSession(str(foreign_onnx), providers=["CPUExecutionProvider"])
    x = to_model_input(crops, resolved.spec).transpose(0, 2, 3, 1)          # NHWC, one by one
    want = np.concatenate([session.run(None, {"pixels": x[i:i + 1]})[0] for i in range(len(x))])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (got.argmax(1) == val.labels()[:20]).mean() >= 0.9
    with pytest.raises(UnsupportedOptionError, match="opset"):
        source.onnx(opset=11)


def test_tensorrt_builds_from_the_onnx_file(gray, foreign_onnx, tmp_path):
    """TensorRT parses what the ONNX source gives: the parent itself (FP32), its FP16 form and
    its symmetric QDQ INT8 form; all three still run in ONNX Runtime (no GPU needed here)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgecls.backends.tensorrt.export import _onnx_to_parse, build_plan
    from edgecls.imaging.datasets import CalibrationSet
    from edgecls.imaging.options import PreprocessingOptions
    from edgecls.sources import SourceRequest, resolve
    resolved = resolve(str(foreign_onnx), SourceRequest(preprocessing=PreprocessingOptions.of(
        {"resize": "none", "mean": 0.3, "std": 0.4})))
    source, spec = resolved.source(tmp_path), resolved.spec
    calibration = CalibrationSet.from_source(gray.calib, spec, size=64)
    x = next(calibration.batches(spec, 16))
    want = ort.InferenceSession(str(source.onnx())).run(None, {"input": x})[0]
    for precision in ("fp32", "fp16", "int8"):
        out_spec = spec.derive(format="tensorrt", precision=precision, tools=dict(spec.tools))
        path = _onnx_to_parse(build_plan(precision, None), source, out_spec, calibration,
                              tmp_path)
        got = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9, precision
    zero_points = [i for i in onnx.load(str(path)).graph.initializer if "zero_point" in i.name]
    assert zero_points and not any(numpy_helper.to_array(z).any() for z in zero_points)
    assert out_spec.quantization["target"] == "tensorrt"


def test_onnx_files_edgecls_cannot_feed(gray, foreign_onnx, digits_onnx, tmp_path, capsys):
    import warnings

    import torch

    from edgecls.exporting import export
    from edgecls.imaging.options import PreprocessingOptions
    from edgecls.sources import SourceRequest, resolve

    class FixedView(torch.nn.Module):          # reshapes with the batch of 1 built in
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.reshape(1, -1))

    class TwoInputs(torch.nn.Module):
        def forward(self, a, b):
            return (a + b).mean((2, 3))

    fixed, two = tmp_path / "fixed.onnx", tmp_path / "two.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(FixedView(), (torch.zeros(1, 1, 8, 8),), str(fixed), dynamo=False)
        torch.onnx.export(TwoInputs(), (torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)),
                          str(two), dynamo=False)
    gray_flags = {"mean": 0.5, "std": 0.5, "resize": "none"}
    with pytest.raises(SourceError, match=r"fixed batch of 1 and its graph depends on it.*"
                                          r"dynamic_axes=\{'onnx::Reshape_0'"):
        export(str(fixed), out=tmp_path / "x.onnx", preprocessing=gray_flags)
    with pytest.raises(SourceError, match=r"2 input\(s\) .* edgecls exports classifiers with one"):
        export(str(two), out=tmp_path / "x.onnx")
    int8 = export(digits_onnx.parent / "digits.onnx", out=tmp_path / "d.int8.onnx",
                  precision="int8", calib="digits", calib_size=32, check=False)
    with pytest.raises(SourceError, match="already quantized.*FP32 parent"):
        resolve(str(int8))
    with pytest.raises(SourceError, match="takes 40x32 inputs, not --input-size 64x64"):
        export(str(foreign_onnx), out=tmp_path / "x.onnx",
               preprocessing={**gray_flags, "input_size": 64})
    with pytest.raises(UnsupportedOptionError, match="--weights does not apply"):
        export(str(foreign_onnx), weights=str(gray.weights), out=tmp_path / "x.onnx")
    with pytest.raises(SourceError, match="outputs 10 classes, not --num-classes 5"):
        resolve(str(foreign_onnx), SourceRequest(
            num_classes=5, preprocessing=PreprocessingOptions.of(gray_flags)))
    with pytest.raises(UnsupportedOptionError, match="the ONNX file is opset"):
        export(str(foreign_onnx), out=tmp_path / "x.onnx", options={"opset": 11},
               preprocessing=gray_flags)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.int8.onnx", "fixed.onnx", "two.onnx"]
    # an edgecls FP32 artifact is a source too: its spec brings preprocessing and labels
    again = export(str(digits_onnx), to="openvino", out=tmp_path / "again.xml")
    from edgecls.formats import read_spec
    assert read_spec(again).input_size == (32, 32) and read_spec(again).mean == (0.5,) * 3
    assert "no such file" in cli_error(capsys, "export", tmp_path / "absent.onnx")


# -- torch.export programs -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gray_pt2(gray, tmp_path_factory):
    """The trained network saved by torch.export.save (dynamic batch, no edgecls spec)."""
    import torch
    path = tmp_path_factory.mktemp("pt2") / "gray.pt2"
    program = torch.export.export(gray.model.eval(), (torch.zeros(2, 1, 40, 32),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path


def test_pt2_round_trip(gray, gray_pt2, tmp_path, capsys):
    """A user's .pt2 -> ONNX (shape read from the program, parity rebuilt from the spec);
    -> an edgecls .pt2 -> TFLite with no flags at all: the spec travels."""
    import torch

    from edgecls.formats import read_spec
    out = tmp_path / "out"
    flags = ["--labels", gray.labels, "--resize", "none", "--mean", "0.3", "--std", "0.4"]
    code, err = cli(capsys, "export", gray_pt2, "--to", "onnx", *flags, "-o", out / "p.onnx")
    assert code == 0, err
    spec = read_spec(out / "p.onnx")
    assert (spec.input_size, spec.channels, spec.name) == ((40, 32), 1, "gray")
    assert spec.reference["kind"] == "program"
    assert spec.reference["source"] == str(gray_pt2.resolve())
    code, err = cli(capsys, "parity", out / "p.onnx", "--data", gray.val, "-o", tmp_path / "r")
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["results"][0]["agreement"] == 1.0
    assert report["reference"]["top1"] == pytest.approx(gray.accuracy)

    code, err = cli(capsys, "export", gray_pt2, "--to", "torch", *flags, "-o", out / "e.pt2")
    assert code == 0, err
    code, err = cli(capsys, "export", out / "e.pt2", "--to", "tflite", "-o", out / "e.tflite")
    assert code == 0, err
    spec = read_spec(out / "e.tflite")
    assert (spec.input_size, spec.channels, spec.resize, spec.labels) == ((40, 32), 1, None, LABELS)
    np.testing.assert_allclose(spec.mean + spec.std, (0.3, 0.4))

    static = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(gray.model.eval(), (torch.zeros(1, 1, 40, 32),)),
                      str(static))
    assert "fixed batch of 1" in cli_error(capsys, "export", static, "--to", "onnx")
    assert "--weights does not apply" in cli_error(capsys, "export", gray_pt2, "--weights",
                                                   gray.weights)


def _rewrite_archive(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as archive:
        files = {n: archive.read(n) for n in archive.namelist()}
    edit(files)
    with zipfile.ZipFile(dst, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return dst


def test_pt2_files_that_would_run_code_are_refused(gray_pt2, tmp_path, capsys):
    """torch.export.load unpickles pickled constants and weights; edgecls loads tensors only."""
    import torch

    def opaque_object(files):      # a constant restored by pickle.loads
        name = next(n for n in files if n.endswith("model_constants_config.json"))
        config = json.loads(files[name])
        config["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False,
                                    "use_pickle": True, "tensor_meta": None}
        files[name] = json.dumps(config).encode()
        files[name.rsplit("/", 1)[0] + "/opaque_obj_0"] = pickle.dumps(_Exploit(markers[0]))

    def pickled_weight(files):     # a weight restored by torch.load(weights_only=False)
        name = next(n for n in files if n.endswith("model_weights_config.json"))
        config = json.loads(files[name])
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        files[name] = json.dumps(config).encode()
        buffer = io.BytesIO()
        torch.save(_Exploit(markers[1]), buffer)
        files[name.rsplit("/", 1)[0] + "/" + first["path_name"]] = buffer.getvalue()

    markers = [tmp_path / "opaque.txt", tmp_path / "weight.txt"]
    evil = [_rewrite_archive(gray_pt2, tmp_path / "opaque.pt2", opaque_object),
            _rewrite_archive(gray_pt2, tmp_path / "weight.pt2", pickled_weight)]
    assert "holds pickled Python objects (evil)" in cli_error(capsys, "export", evil[0])
    assert "pickle of more than tensors" in cli_error(capsys, "export", evil[1])
    assert not any(m.exists() for m in markers)
    for path in evil:                # the files really do run code when loaded unsafely
        with contextlib.suppress(Exception):   # whether torch then fails does not matter
            torch.export.load(str(path))
    assert all(m.read_text() == "pwned" for m in markers)


# -- files that are pickles ------------------------------------------------------------------------
def test_pickled_and_torchscript_modules(gray, tmp_path, capsys):
    import torch

    from edgecls.formats import read_spec
    whole = tmp_path / "whole.pt"
    torch.save(gray.model, whole)
    marker = tmp_path / "marker.txt"
    trap = tmp_path / "trap.pt"
    torch.save({"model": gray.model, "hook": _Exploit(marker)}, trap)
    script = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(gray.model.eval(), torch.zeros(1, 1, 40, 32)), str(script))

    message = cli_error(capsys, "export", whole, "-o", tmp_path / "out" / "w.onnx")
    assert "pickled module" in message and "runs code from the file" in message
    assert "--trust-remote-code" in message
    assert "pickled module" in cli_error(capsys, "export", trap)
    assert not marker.exists()
    assert "is a TorchScript module" in cli_error(capsys, "export", script)
    assert "holds weights (a state_dict), not a model" in cli_error(capsys, "export",
                                                                   gray.weights)
    assert not (tmp_path / "out").exists()

    code, err = cli(capsys, "export", whole, "--trust-remote-code", *PREPROCESSING, "--labels",
                    gray.labels, "-o", tmp_path / "out" / "w.onnx")
    assert code == 0, err
    spec = read_spec(tmp_path / "out" / "w.onnx")
    assert spec.reference["kind"] == "module-file" and spec.labels == LABELS
    # parity does not unpickle it on the spec's word
    message = cli_error(capsys, "parity", tmp_path / "out" / "w.onnx", "--data", gray.val)
    assert f"pass --reference {whole.resolve()} --trust-remote-code" in message
    code, err = cli(capsys, "parity", tmp_path / "out" / "w.onnx", "--data", gray.val,
                    "--reference", whole, "--trust-remote-code")
    assert code == 0, err


def test_parity_reference_names_other_weights(gray, tmp_path, capsys):
    """`edgecls parity ART --reference FACTORY --reference WEIGHTS`: the reference is built
    from the weights file named, not the one the spec records: the artifact's own weights,
    moved elsewhere, give the torch model's accuracy and full agreement; the same network
    with its last layer's weights negated (the oracle's own edit) makes the FP32 artifact
    fail, as it no longer is that model."""
    import shutil

    import torch

    from edgecls.exporting import export
    art = export("graynet:build", out=tmp_path / "g.onnx", weights=str(gray.weights),
                 labels=LABELS, model_kwargs={"width": WIDTH},
                 preprocessing={"input_size": "40x32", "resize": "none", "channels": 1,
                                "mean": [76.5], "std": [102]})
    moved = shutil.copyfile(gray.weights, tmp_path / "moved.pth")
    saved = torch.load(gray.weights)
    last = [k for k in saved["state_dict"] if k.endswith("weight")][-1]
    saved["state_dict"][last] = -saved["state_dict"][last]
    torch.save(saved, tmp_path / "other.pth")
    outcomes = {}
    for weights in (moved, tmp_path / "other.pth"):
        report = tmp_path / weights.stem
        code, err = cli(capsys, "parity", art, "--data", gray.val, "--reference",
                        "graynet:build", "--reference", weights, "-o", report)
        data = json.loads((report / "report.json").read_text())
        outcomes[weights.stem] = (code, data["reference"], data["results"][0])
    code, reference, result = outcomes["moved"]
    assert code == 0 and result["outcome"] == "pass" and result["agreement"] == 1.0
    assert reference["top1"] == pytest.approx(gray.accuracy)
    code, reference, result = outcomes["other"]
    assert code == 1 and result["outcome"] == "fail" and result["agreement"] < 0.5, result


def test_parity_reference_errors_say_what_to_pass(gray, digits_onnx, tmp_path, capsys):
    """Specs whose reference cannot be rebuilt (an in-memory module, or a spec written before
    references were recorded) and a weights file for a reference that carries its own."""
    import shutil

    from edgecls.backends.onnx.container import write_spec
    from edgecls.exporting import export
    from edgecls.formats import read_spec
    path = export(gray.model, to="onnx", out=tmp_path / "mem.onnx", spec=gray.spec)
    assert read_spec(path).reference == {"kind": "module"}
    message = cli_error(capsys, "parity", path, "--data", gray.val, "--limit", "8")
    assert "exported from a torch module in memory" in message
    older = shutil.copyfile(digits_onnx, tmp_path / "older.onnx")
    write_spec(older, read_spec(digits_onnx).derive(reference=None))
    assert "is not a zoo model" in cli_error(capsys, "parity", older, "--data", "digits",
                                             "--limit", "8")
    with pytest.raises(DataError, match="carries its own weights"):
        from edgecls.verification import parity
        parity([path], data=gray.val, reference=[str(digits_onnx), str(gray.weights)])
    with pytest.raises(ArtifactError, match="no such file"):
        from edgecls.verification import parity
        parity([tmp_path / "absent.onnx"])
