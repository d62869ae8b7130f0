"""The torch backend: a .pt2 program (torch.export) and an in-memory module run through the
same Session / Classifier as every artifact; parity's PyTorch reference is such a session."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from edgecls.errors import ArtifactError, DeviceUnavailableError, UnsupportedOptionError


def test_pt2_runs_like_the_module(digits_pt2, digits_model, digits_val):
    from edgecls.backends.torch.runtime import TorchSession
    from edgecls.imaging.preprocess import to_model_input
    from edgecls.classifier import Classifier
    from edgecls.formats import open_session, read_spec
    model, spec = digits_model
    crops, labels, ref = digits_val
    assert read_spec(digits_pt2).format == "torch" and read_spec(digits_pt2).exported_from == "torch"
    with open_session(digits_pt2) as s:
        assert s.backend == "torch" and s.device_used == "cpu" and s.describe()["torch"]
        np.testing.assert_allclose(s.run(to_model_input(crops[:64], s.spec)), ref[:64],
                                   rtol=1e-5, atol=1e-5)
    # the reference parity uses, given the spec of an artifact with baked preprocessing
    # (NHWC uint8 pixels in, normalization in the graph): it must still feed the module what
    # it was trained on, NCHW float normalized by the spec's mean and std
    baked = spec.derive(format="openvino", layout="NHWC", normalization_in_graph=True,
                        input_dtype="uint8")
    with TorchSession.of_module(model, baked) as s:
        x = to_model_input(crops[:64], s.spec)
        assert x.dtype == np.float32 and x.shape == (64, 3, 32, 32)
        np.testing.assert_allclose(x, (crops[:64].transpose(0, 3, 1, 2) / 255 - 0.5) / 0.5,
                                   atol=1e-6)
        np.testing.assert_array_equal(s.run(x), ref[:64])
    with Classifier(digits_pt2) as clf:
        assert float((clf.probabilities(list(crops)).argmax(1) == labels).mean()) > 0.9


def test_parity_of_a_pt2_against_its_reference(digits_pt2, digits_model, digits_data):
    from edgecls.verification import parity
    model, _ = digits_model
    _, _, val, _ = digits_data
    report = parity([digits_pt2], data=val, reference=model, progress=False)
    assert report and report.results[0].agreement == 1.0
    assert report.results[0].backend == "torch" and report.reference["kind"] == "pytorch"


def test_devices_and_options(digits_pt2, digits_model):
    import torch

    from edgecls.backends.torch.runtime import TorchSession
    from edgecls.exporting import export
    from edgecls.formats import open_session
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="no CUDA GPU"):
            open_session(digits_pt2, device="gpu")
        with open_session(digits_pt2, device="gpu", fallback=True) as s:
            assert s.device_used == "cpu"
    with pytest.raises(DeviceUnavailableError, match="not npu"):
        open_session(digits_pt2, device="npu")
    with pytest.raises(UnsupportedOptionError, match="delegate"):
        TorchSession(digits_pt2, delegate="x")
    model, spec = digits_model
    with pytest.raises(UnsupportedOptionError, match="cannot be int8"):
        export(model, to="torch", out="never.pt2", spec=spec, precision="int8", calib="digits")
    with pytest.raises(UnsupportedOptionError, match="does not take --opset"):
        export(model, to="torch", out="never.pt2", spec=spec, options={"opset": 17})


def test_bad_pt2_files_are_one_line_errors(digits_pt2, tmp_path):
    from edgecls.formats import open_session, read_spec
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip at all" * 10)
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(digits_pt2.read_bytes()[:5000])
    nospec = tmp_path / "nospec.pt2"
    with zipfile.ZipFile(digits_pt2) as src, zipfile.ZipFile(nospec, "w") as dst:
        for item in src.infolist():
            if not item.filename.endswith("/extra/edgecls.spec"):
                dst.writestr(item, src.read(item.filename))
    for path, words in ((junk, "not a .pt2 archive"), (truncated, "not a .pt2 archive"),
                        (nospec, "without an edgecls spec")):
        for read in (read_spec, open_session):
            with pytest.raises(ArtifactError, match=words) as e:
                read(path)
            assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_the_spec_of_a_pt2_is_read_without_torch(digits_pt2):
    code = textwrap.dedent("""
        import sys
        for name in ("torch", "torchvision", "timm", "functorch"):
            sys.modules[name] = None
        from edgecls import read_spec
        print(read_spec(sys.argv[1]).name)
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(digits_pt2)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "digits_cnn"
