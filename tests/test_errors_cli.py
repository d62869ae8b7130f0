"""User errors: one line, exit status 2, no traceback (unless --debug); nothing half-written.
And the command line's happy paths: models, info, predict --json, export --weights PATH."""
from __future__ import annotations

import itertools
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, offline_env, run_cli

from edgecls import errors
from edgecls.errors import (ArtifactError, DeviceUnavailableError, EdgeclsError,
                            ExportMismatchError, ImageReadError, MissingDependencyError,
                            UnknownFormatError, UnknownModelError, UnsupportedOptionError,
                            WeightsError)

SMALL = "shufflenet_v2_x0_5"     # a small zoo model (1.4 M parameters)


# -- artifacts to break ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_artifacts(digits_onnx, tmp_path_factory):
    import onnx
    folder = tmp_path_factory.mktemp("bad")
    text = folder / "notes.onnx"
    text.write_text("this is not a model\n")
    truncated = folder / "truncated.onnx"
    data = digits_onnx.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    png = folder / "picture.onnx"
    import cv2
    png.write_bytes(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    proto = onnx.load(str(digits_onnx))
    del proto.metadata_props[:]
    nospec = folder / "nospec.onnx"
    onnx.save_model(proto, str(nospec))
    badjson = folder / "badjson.onnx"
    onnx.helper.set_model_props(proto, {"edgecls.spec": "{not json"})
    onnx.save_model(proto, str(badjson))
    incomplete = folder / "incomplete.onnx"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {"edgecls.spec": json.dumps({"name": "x"})})
    onnx.save_model(proto, str(incomplete))
    return {"text": text, "truncated": truncated, "png": png, "nospec": nospec,
            "badjson": badjson, "incomplete": incomplete}


@pytest.fixture(scope="module")
def digit_png(digits_data, tmp_path_factory):
    import cv2
    _, _, val, _ = digits_data
    path = tmp_path_factory.mktemp("img") / "digit.png"
    cv2.imwrite(str(path), cv2.cvtColor(val.items[0].rgb(), cv2.COLOR_RGB2BGR))
    return path, val.items[0].label


# -- the error classes ----------------------------------------------------------------------------
def test_every_error_is_a_user_error_with_exit_2():
    for cls in (UnknownModelError, UnknownFormatError, DeviceUnavailableError,
                MissingDependencyError, ImageReadError, ArtifactError, WeightsError,
                errors.DataError, UnsupportedOptionError, ExportMismatchError):
        assert issubclass(cls, EdgeclsError) and cls.exit_code == 2


def test_unknown_model_suggests_close_names():
    from edgecls import zoo
    with pytest.raises(UnknownModelError, match=r"did you mean .*resnet18"):
        zoo.get_entry("resnet19")
    with pytest.raises(UnknownModelError, match="did you mean .*mobilenet_v3_large"):
        zoo.build("mobilenet_v3_larg", weights="none")
    with pytest.raises(UnknownModelError, match="`edgecls models` lists them"):
        zoo.get_entry("qwertyuiop")
    assert zoo.get_entry("MobileNet_V3").name == "mobilenet_v3_large"   # alias, any case
    assert zoo.get_entry("ResNet18").name == "resnet18"


def test_unknown_format_and_suffix():
    from edgecls.formats import FORMATS, format_for_path, get_format
    with pytest.raises(UnknownFormatError, match="coreml.*onnx, openvino, tflite"):
        get_format("coreml")
    assert get_format("ONNX") is FORMATS["onnx"]
    with pytest.raises(UnknownFormatError, match=r"'\.pb'.*\.onnx"):
        format_for_path("model.pb")
    with pytest.raises(UnknownFormatError, match="no suffix"):
        format_for_path("model")
    assert format_for_path("a/b/M.ENGINE").name == "tensorrt"
    assert format_for_path("m.plan").name == "tensorrt"
    from edgecls.backends.base import Format
    runtime_only = Format("runonly", (".ro",), runtime="x:y", requires=(), extra="x",
                          container="x")
    with pytest.raises(UnknownFormatError, match="cannot export to runonly"):
        runtime_only.load_exporter()                 # a format without an exporter


def test_unknown_and_absent_devices(digits_onnx):
    import onnxruntime

    from edgecls.classifier import Classifier
    with pytest.raises(DeviceUnavailableError, match="unknown device 'tpu'"):
        Classifier(digits_onnx, device="tpu")
    gpu_eps = {"CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider",
               "MIGraphXExecutionProvider", "CoreMLExecutionProvider", "WebGpuExecutionProvider"}
    if gpu_eps & set(onnxruntime.get_available_providers()):
        pytest.skip("this onnxruntime has a GPU execution provider")
    with pytest.raises(DeviceUnavailableError, match="--fallback"):
        Classifier(digits_onnx, device="gpu")
    with Classifier(digits_onnx, device="gpu", fallback=True) as clf:  # asked for: reported
        assert clf.session.device_used == "cpu"
        assert clf.session.describe()["providers"] == ["CPUExecutionProvider"]
    with Classifier(digits_onnx, device="auto") as clf:
        assert clf.session.device_used == "cpu"


def test_unknown_runtime_option_is_refused(digits_onnx):
    from edgecls.classifier import Classifier
    with pytest.raises(UnsupportedOptionError, match="delegate"):
        Classifier(digits_onnx, delegate="libedgetpu.so")


def test_missing_dependency_names_the_pip_extra():
    from edgecls.backends.base import Format
    fmt = Format("fancy", (".fancy",), runtime="edgecls_no_such_module.rt:Session",
                 requires=("edgecls_no_such_module",), extra="fancy",
                 container="edgecls_no_such_module.container",
                 exporter="edgecls_no_such_module.ex:export",
                 export_requires=("numpy", "edgecls_no_such_exporter_dep"))
    assert not fmt.available()
    with pytest.raises(MissingDependencyError) as info:
        fmt.load_runtime()
    msg = str(info.value)
    assert "edgecls_no_such_module" in msg and "pip install 'edgecls[fancy]'" in msg
    assert info.value.extra == "fancy"
    with pytest.raises(MissingDependencyError, match=r"exporter.*edgecls_no_such_exporter_dep.*edgecls\[fancy\]"):
        fmt.load_exporter()
    alt = Format("alt", (".alt",), runtime="x:y", requires=("edgecls_nope_a|edgecls_nope_b",),
                 extra="alt", container="x")
    with pytest.raises(MissingDependencyError, match="edgecls_nope_a or edgecls_nope_b"):
        alt.load_runtime()
    ok = Format("ok", (".ok",), runtime="edgecls.classifier:Classifier", requires=("numpy|nothing_x",),
                extra="ok", container="x")
    assert ok.available()
    from edgecls.classifier import Classifier
    assert ok.load_runtime() is Classifier


def test_unreadable_images(digits_onnx, tmp_path):
    from edgecls.classifier import Classifier
    fake = tmp_path / "fake.jpg"
    fake.write_text("not a jpeg")
    with Classifier(digits_onnx) as clf:
        with pytest.raises(ImageReadError, match="fake.jpg"):
            clf.predict(fake)
        with pytest.raises(ImageReadError, match="missing.jpg"):
            clf.predict(tmp_path / "missing.jpg")
        with pytest.raises(ImageReadError, match="cannot decode image bytes: .*truncated one"):
            clf.predict(b"\xff\xd8\xff\xe0 truncated")
        # a truncated real JPEG
        import cv2
        ok, buf = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
        cut = tmp_path / "cut.jpg"
        cut.write_bytes(buf.tobytes()[:40])
        with pytest.raises(ImageReadError, match="cut.jpg"):
            clf.predict(cut)


@pytest.mark.parametrize("kind,pattern", [
    ("text", "ONNX Runtime cannot load it"),
    ("truncated", "ONNX Runtime cannot load it"),
    ("png", "ONNX Runtime cannot load it"),
    ("nospec", "without an edgecls spec"),
    ("badjson", "not valid JSON"),
    ("incomplete", "incomplete"),
])
def test_corrupt_or_foreign_artifacts(bad_artifacts, kind, pattern):
    from edgecls.classifier import Classifier
    from edgecls.formats import read_spec
    path = bad_artifacts[kind]
    with pytest.raises(ArtifactError, match=pattern):
        Classifier(path)
    with pytest.raises(ArtifactError, match=pattern):
        read_spec(path)


def test_missing_artifact(tmp_path):
    from edgecls.classifier import Classifier
    from edgecls.formats import read_spec
    with pytest.raises(ArtifactError, match="no such file"):
        Classifier(tmp_path / "absent.onnx")
    with pytest.raises(ArtifactError, match="no such file"):
        read_spec(tmp_path / "absent.onnx")
    with pytest.raises(UnknownFormatError, match=r"absent.pb: unknown artifact type '\.pb'"):
        Classifier(tmp_path / "absent.pb")


# -- weights --------------------------------------------------------------------------------------
def test_pretrained_weights_unavailable_offline(tmp_path, monkeypatch):
    from edgecls import zoo
    for key, value in offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(WeightsError, match=r"resnet18.*--weights PATH or --weights none"):
        zoo.build("resnet18")
    with pytest.raises(WeightsError, match="--weights PATH"):
        zoo.build("shufflenet_v1")                      # no public weights at all
    with pytest.raises(WeightsError, match="--num-classes needs --weights PATH"):
        zoo.build(SMALL, num_classes=10)


@pytest.fixture(scope="module")
def small_state(tmp_path_factory):
    """A trained-looking state_dict for SMALL (random, but not the default init) and files."""
    import torch

    from edgecls import zoo
    torch.manual_seed(123)
    model, _ = zoo.build(SMALL, weights="none")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    state = model.state_dict()
    folder = tmp_path_factory.mktemp("weights")
    plain = folder / "plain.pt"
    torch.save(state, plain)
    wrapped = folder / "checkpoint.pth"
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"lr": 0.1}}, wrapped)
    return state, plain, wrapped


def _same_weights(model, state) -> bool:
    import torch
    got = model.state_dict()
    return set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)


def test_weights_path_loads_state_dict_and_checkpoint(small_state):
    from edgecls import zoo
    state, plain, wrapped = small_state
    for path in (plain, wrapped):
        model, spec = zoo.build(SMALL, weights=str(path))
        assert _same_weights(model, state), path
        assert spec.weights.startswith("file:") and spec.weights.endswith(path.name)
        assert spec.trained
        assert not model.training


def test_weights_path_with_fine_tuned_head(tmp_path):
    import torch

    from edgecls import zoo
    model, _ = zoo.build(SMALL, weights="none", num_classes=3)
    with torch.no_grad():        # unlike what a fresh build gives
        model.fc.weight.add_(1.0)
    path = tmp_path / "ft.pt"
    torch.save({"model": model.state_dict()}, path)
    labels = ["cat", "dog", "cow"]
    built, spec = zoo.build(SMALL, weights=str(path), num_classes=3, labels=labels)
    assert _same_weights(built, model.state_dict())
    assert spec.num_classes == 3 and spec.labels == labels
    # the same checkpoint without --num-classes does not fit the 1000-class head
    with pytest.raises(WeightsError, match="does not fit this model.*--num-classes"):
        zoo.build(SMALL, weights=str(path))
    with pytest.raises(WeightsError, match="2 labels given for a model with 3 classes"):
        zoo.build(SMALL, weights=str(path), num_classes=3, labels=["a", "b"])


def test_mismatched_and_bad_checkpoints(small_state, tmp_path):
    import torch

    from edgecls import zoo
    state, plain, _ = small_state
    with pytest.raises(WeightsError, match="does not fit this model"):
        zoo.build("squeezenet1_1", weights=str(plain))        # another architecture's weights
    with pytest.raises(WeightsError, match="no such file"):
        zoo.build(SMALL, weights=str(tmp_path / "nothing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01 definitely not a checkpoint")
    with pytest.raises(WeightsError, match="not a loadable state_dict"):
        zoo.build(SMALL, weights=str(junk))
    listing = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], listing)
    with pytest.raises(WeightsError, match="expected a state_dict"):
        zoo.build(SMALL, weights=str(listing))


class _Exploit:
    """A pickle that runs code when loaded unsafely."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_weights_are_loaded_safely(small_state, tmp_path):
    import torch

    from edgecls import zoo
    state, _, _ = small_state
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": dict(state), "hook": _Exploit(marker)}, evil)
    with pytest.raises(WeightsError, match="not a loadable state_dict"):
        zoo.build(SMALL, weights=str(evil))
    assert not marker.exists()
    # the same object really does run code when unpickled unsafely (the test is not vacuous)
    pickle.loads(pickle.dumps(_Exploit(marker)))
    assert marker.read_text() == "pwned"


# -- export failures leave nothing behind ---------------------------------------------------------
class _Drift:
    """Builds a module whose logits are scaled by how often it has been called: what the
    exporter traced is not what runs afterwards, so the exported graph cannot match."""

    @staticmethod
    def make():
        import torch

        class Drift(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.counter = itertools.count(1)
                self.fc = torch.nn.Linear(3, 4)

            def forward(self, x):
                return self.fc(x.mean((2, 3))) * float(next(self.counter))

        return Drift()


def _tiny_spec(name="tiny"):
    from edgecls.spec import ModelSpec
    return ModelSpec(name, "tests.tiny", 4, list("abcd"), input_size=(16, 16), resize=16)


def test_failed_export_check_writes_nothing(tmp_path):
    from edgecls.exporting import export
    out_dir = tmp_path / "out"
    with pytest.raises(ExportMismatchError, match="export check failed.*nothing was written"):
        export(_Drift.make(), to="onnx", out=out_dir / "drift.onnx", spec=_tiny_spec("drift"))
    assert not out_dir.exists()          # the folder export() made went too


def test_failed_exporter_writes_nothing(tmp_path):
    import torch

    from edgecls.exporting import export

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:          # control flow on values: torch.export refuses it
                return x.mean((2, 3)).repeat(1, 2)[:, :4]
            return x.amax((2, 3)).repeat(1, 2)[:, :4]

    out_dir = tmp_path / "out"
    # not a user error: torch's own exporter error, with its advice, keeps its traceback
    with pytest.raises(torch.onnx.OnnxExporterError, match="torch.export"):
        export(DataDependent(), to="onnx", out=out_dir / "dd.onnx", spec=_tiny_spec())
    assert not out_dir.exists()


def test_export_refuses_bad_options(tmp_path, digits_model):
    from edgecls.exporting import export
    model, spec = digits_model
    with pytest.raises(UnknownFormatError, match="unknown format 'coreml'; choose one of"):
        export(model, to="coreml", out=tmp_path / "x.onnx", spec=spec)
    with pytest.raises(UnsupportedOptionError, match="--preset"):
        export(model, to="onnx", out=tmp_path / "x.onnx", spec=spec, options={"preset": "mixed"})
    with pytest.raises(UnsupportedOptionError, match="must end in .onnx"):
        export(model, to="onnx", out=tmp_path / "x.tflite", spec=spec)
    with pytest.raises(UnsupportedOptionError, match="apply only to --int8"):
        export(model, to="onnx", out=tmp_path / "x.onnx", spec=spec,
               options={"calib_method": "entropy"})
    with pytest.raises(UnsupportedOptionError, match="--calib"):
        export(model, to="onnx", out=tmp_path / "x.onnx", spec=spec, precision="int8")
    with pytest.raises(TypeError, match="needs spec"):
        export(model, to="onnx", out=tmp_path / "x.onnx")
    assert not list(tmp_path.rglob("*.onnx")) and not list(tmp_path.rglob(".*tmp*"))


def test_atomic_paths_cleans_up_on_failure(tmp_path):
    from edgecls.io import atomic_paths
    final = tmp_path / "a" / "m.xml"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_paths(final, final.with_suffix(".bin")) as temps:
            assert temps[0].exists()  # reserved; companions share its stem (x.tmp.bin)
            assert temps[1] == temps[0].with_suffix(".bin")
            for t in temps:
                assert t.parent == final.parent
                t.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []      # the folder it made for the pair went too
    with atomic_paths(final, final.with_suffix(".bin")) as temps:
        temps[0].write_text("xml")
        temps[1].write_text("bin")
    assert sorted(p.name for p in final.parent.iterdir()) == ["m.bin", "m.xml"]
    assert final.read_text() == "xml"


# -- the command line -----------------------------------------------------------------------------
def test_cli_unknown_model(tmp_path, cli):
    proc = cli("export", "resnt18", "-o", tmp_path / "out" / "x.onnx", cwd=tmp_path)
    assert_user_error(proc, "unknown model 'resnt18'", "did you mean", "resnet18")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_cli_artifact_errors(tmp_path, bad_artifacts, digits_onnx, digit_png, cli):
    img, _ = digit_png
    pb = tmp_path / "model.pb"
    pb.write_bytes(b"x")
    assert_user_error(cli("predict", pb, img, cwd=tmp_path), "unknown artifact type '.pb'")
    assert_user_error(cli("predict", bad_artifacts["text"], img, cwd=tmp_path),
                      "notes.onnx", "cannot load")
    assert_user_error(cli("predict", bad_artifacts["truncated"], img, cwd=tmp_path),
                      "truncated.onnx")
    assert_user_error(cli("info", bad_artifacts["nospec"], cwd=tmp_path),
                      "without an edgecls spec")
    assert_user_error(cli("info", tmp_path / "absent.onnx", cwd=tmp_path), "no such file")
    assert_user_error(cli("predict", digits_onnx, tmp_path / "nope.jpg", cwd=tmp_path),
                      "cannot read image", "nope.jpg")


def test_cli_device_unavailable(tmp_path, digits_onnx, digit_png, cli):
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("a GPU execution provider is present")
    img, label = digit_png
    assert_user_error(cli("predict", digits_onnx, img, "--device", "gpu", cwd=tmp_path),
                      "device 'gpu'", "--fallback")
    proc = run_cli("predict", digits_onnx, img, "--device", "gpu", "--fallback", "--json",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[str(img)][0]["index"] == label


def test_cli_debug_shows_traceback(tmp_path, digit_png):
    img, _ = digit_png
    pb = tmp_path / "model.pb"
    pb.write_bytes(b"x")
    proc = run_cli("--debug", "predict", pb, img, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "UnknownFormatError" in proc.stderr
    assert "edgecls: error:" not in proc.stderr


def test_cli_pretrained_weights_unavailable(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("export", "resnet18", "-o", out / "r18.onnx", cwd=tmp_path,
                   env=offline_env(tmp_path))
    # torch.hub announces the download attempt on stderr before failing; the error is last
    assert_user_error(proc, "resnet18", "--weights PATH", only_line=False)
    assert not out.exists() or list(out.iterdir()) == []


def test_offline_hub_weights_fail_without_trying_the_network(tmp_path):
    """mobilenet_v1's weights come from the Hugging Face Hub, whose client retries for ~50 s
    when offline. edgecls decides before torch is even imported (the child says whether it
    was). Every connection the child opens is recorded and refused: with HF_HUB_OFFLINE it
    opens none; behind a proxy that drops every packet (TEST-NET-1) it opens exactly one,
    the probe, to the proxy and with the probe's sub-second timeout - no download client's
    retries. What the verdict costs is then bounded by construction, not by a stopwatch."""
    from edgecls.zoo.offline import PROBE_SECONDS
    cli = ("import json, socket, sys\n"
           "tried = []\n"
           "def refuse(self, address, *rest):\n"
           "    tried.append([list(address)[:2], self.gettimeout()])\n"
           "    raise OSError('test: no network')\n"
           "socket.socket.connect = socket.socket.connect_ex = refuse\n"
           "from edgecls.cli import main\ncode = main(sys.argv[1:])\n"
           "print(json.dumps({'torch': 'torch' in sys.modules, 'connections': tried}))\n"
           "raise SystemExit(code)\n")

    def run(**extra: str) -> tuple[subprocess.CompletedProcess, dict]:
        env = {**os.environ, **offline_env(tmp_path), **extra}
        proc = subprocess.run([sys.executable, "-c", cli, "export", "mobilenet_v1", "-o",
                               str(tmp_path / "out" / "m.onnx")], env=env,
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        return proc, json.loads(proc.stdout.strip().splitlines()[-1])

    proc, seen = run(HF_HUB_OFFLINE="1")
    assert_user_error(proc, "pretrained weights for mobilenet_v1 cannot be had",
                      "HF_HUB_OFFLINE is set", "--weights PATH or --weights none")
    assert seen == {"torch": False, "connections": []}

    black_hole = "http://192.0.2.1:3128"
    proc, seen = run(HF_HUB_OFFLINE="", https_proxy=black_hole, HTTPS_PROXY=black_hole)
    assert_user_error(proc, "pretrained weights for mobilenet_v1 cannot be had",
                      "through the proxy 192.0.2.1:3128", "--weights PATH or --weights none")
    assert seen == {"torch": False, "connections": [[["192.0.2.1", 3128], PROBE_SECONDS]]}
    assert PROBE_SECONDS <= 1.0
    assert not (tmp_path / "out").exists()


def test_cli_mismatched_weights_leave_nothing(tmp_path, small_state, cli):
    _, plain, _ = small_state
    out = tmp_path / "out"
    proc = cli("export", "squeezenet1_1", "--weights", plain, "-o", out / "sq.onnx",
               cwd=tmp_path)
    assert_user_error(proc, "does not fit this model", only_line=False)
    assert not out.exists() or list(out.iterdir()) == []


def test_cli_models_lists_every_name(tmp_path, cli):
    from edgecls.zoo import list_models
    proc = cli("models", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for entry in list_models():
        assert entry.name in proc.stdout, entry.name
    assert "Traceback" not in proc.stderr


def test_cli_export_info_predict(tmp_path, small_state, digits_onnx, digit_png, photo_files):
    """export --weights CHECKPOINT, then info and predict --json on the artifact."""
    from edgecls.classifier import Classifier
    _, _, wrapped = small_state
    out = tmp_path / "out" / "small.onnx"
    proc = run_cli("export", SMALL, "--weights", wrapped, "-o", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["small.onnx"]   # no temp files

    proc = run_cli("info", out, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout)
    assert spec["name"] == SMALL and spec["format"] == "onnx" and spec["precision"] == "fp32"
    assert spec["weights"].startswith("file:") and spec["weights"].endswith("checkpoint.pth")
    assert spec["num_classes"] == 1000 and spec["trained"]
    assert spec["input_size"] == [224, 224]

    proc = run_cli("info", out, digits_onnx, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert SMALL in proc.stdout and "digits_cnn" in proc.stdout and "1000 labels" in proc.stdout

    images = [photo_files["chelsea"], photo_files["coffee"]]
    proc = run_cli("predict", out, *images, "--json", "--topk", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert list(result) == [str(i) for i in images]
    with Classifier(out) as clf:
        expected = clf.predict(images, topk=3)
    for img, preds in zip(images, expected):
        got = result[str(img)]
        assert [g["index"] for g in got] == [p.index for p in preds]
        assert [g["label"] for g in got] == [p.label for p in preds]
        np.testing.assert_allclose([g["score"] for g in got], [p.score for p in preds], rtol=1e-5)

    img, label = digit_png
    proc = run_cli("predict", digits_onnx, img, cwd=tmp_path)       # the table form
    assert proc.returncode == 0, proc.stderr
    assert str(label) in proc.stdout and "score" in proc.stdout


def test_cli_main_in_process(capsys, tmp_path, digits_onnx, digit_png):
    from edgecls.cli import main
    img, label = digit_png
    assert main(["predict", str(digits_onnx), str(img), "--json", "--topk", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[str(img)][0]["index"] == label and len(out[str(img)]) == 2
    assert main(["predict", str(tmp_path / "x.pb"), str(img)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgecls: error:") and "Traceback" not in err
    with pytest.raises(UnknownFormatError, match=r"x.pb: unknown artifact type '\.pb'"):
        main(["--debug", "predict", str(tmp_path / "x.pb"), str(img)])
