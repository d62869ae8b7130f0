"""Issue 19, findings 1, 2 and 5: an artifact from someone else cannot choose what code runs,
cannot make edgecls write outside its output folder, and cannot exhaust time, memory or the
stack with a small file. Every case goes through the command line a user would type and
asserts the safe outcome: exit status 2, one `edgecls: error:` line, no traceback, nothing
run (a marker file a payload would create stays absent) and nothing written.

The artifacts are real ONNX models (a 3x3 convolution, pooled to 4 logits: built in
milliseconds, no training) carrying an edgecls spec that a hostile sender edited.
"""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgecls.spec import MAX_SIDE, MAX_SPEC_BYTES, ModelSpec

LABELS = list("abcd")


# -- building hostile artifacts ------------------------------------------------------------------
def _base_spec() -> dict:
    return json.loads(ModelSpec("tiny", "tests.tiny", 4, LABELS, input_size=(8, 8), resize=8,
                                format="onnx").to_json())


def tiny_onnx(path: Path, spec: dict | str | None = None, external: str | None = None) -> Path:
    """An FP32 ONNX classifier (N x 3 x 8 x 8 -> N x 4) at `path`, carrying `spec` (a dict is
    written as JSON, a str as it is); with `external`, its weight lives in that external-data
    location (relative to the model's folder) instead."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    values = np.full((4, 3, 3, 3), 0.1, np.float32)
    weight = numpy_helper.from_array(values, "w")
    if external is not None:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"),
                           ("length", str(values.nbytes))):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
         helper.make_node("Flatten", ["p"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if spec is not None:
        helper.set_model_props(model, {"edgecls.spec": spec if isinstance(spec, str)
                                       else json.dumps(spec)})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def artifact(tmp_path: Path, **changes) -> Path:
    """The tiny ONNX artifact with these spec fields changed."""
    return tiny_onnx(tmp_path / "their_model.onnx", {**_base_spec(), **changes})


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((24, 32, 3), 60 * i, np.uint8))
    return folder


def cli_error(capsys, *argv) -> str:
    """`edgecls ARGV` in this process: exit 2, one `edgecls: error:` line, no traceback."""
    from edgecls.cli import main
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("edgecls: error:"), (code, err)
    assert "Traceback" not in err
    return lines[0]


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


class _Payload:
    """A pickle that creates a file when it is unpickled."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


# -- 1. nothing from an artifact decides what code runs ---------------------------------------------
@pytest.mark.parametrize("kind, source, flags", [
    ("zoo", "os:system", []),                       # kind says zoo, the text looks like a function
    ("zoo", "subprocess:getoutput", []),
    ("zoo", "os:system", ["--trust-remote-code"]),
    ("timm", "timm:os:system", []),
    ("factory", "os:system", []),                   # a function: only the user may name one
    ("factory", "os:system", ["--trust-remote-code"]),
    ("module-file", "PAYLOAD", ["--trust-remote-code"]),   # a pickle: only one the user names
    ("onnx", "os:system", []),
])
def test_parity_runs_nothing_a_spec_names(tmp_path, images, capsys, kind, source, flags):
    marker = tmp_path / "MARKER"
    if source == "PAYLOAD":
        source = str(tmp_path / "payload.pt")
        Path(source).write_bytes(pickle.dumps(_Payload(marker)))
    # the keyword each function takes: os.system(command=...), subprocess.getoutput(cmd=...)
    keyword = "cmd" if source.startswith("subprocess") else "command"
    art = artifact(tmp_path, reference={"kind": kind, "source": source,
                                        "kwargs": {keyword: f"touch {marker}"}})
    line = cli_error(capsys, "parity", art, "--data", images, *flags)
    assert not marker.exists(), line
    assert "--reference" in line       # what to do: name the reference yourself


def test_trust_remote_code_applies_only_to_a_reference_the_user_names(tmp_path, images, capsys,
                                                                     monkeypatch):
    """A spec recording a .pt2 program cannot have it loaded with --trust-remote-code (which
    lets torch unpickle Python objects): only a file named on the command line is trusted."""
    import edgecls.backends.torch.program as program
    trusted = []

    def load_program(file, path, trust_remote_code=False):
        trusted.append(trust_remote_code)
        from edgecls.errors import ArtifactError
        raise ArtifactError(f"{path}: stop here")
    monkeypatch.setattr(program, "load_program", load_program)
    pt2 = tmp_path / "somewhere.pt2"
    with zipfile.ZipFile(pt2, "w") as archive:
        archive.writestr("somewhere/data.pkl", b"")
    art = artifact(tmp_path, reference={"kind": "program", "source": str(pt2)})
    line = cli_error(capsys, "parity", art, "--data", images, "--trust-remote-code")
    assert trusted == [False], trusted
    assert f"--reference {pt2} --trust-remote-code" in line
    cli_error(capsys, "parity", art, "--data", images, "--reference", pt2, "--trust-remote-code")
    assert trusted == [False, True]     # named by the user: trusted as the user said


@pytest.mark.parametrize("reference, fragment", [
    ({"kind": "plugin", "source": "x"}, "unknown kind 'plugin'"),
    ({"kind": "zoo"}, "without its source"),
    ({"kind": "zoo", "source": ""}, "without its source"),
    ({"source": "mobilenet_v3_small"}, "unknown kind"),
    ({"kind": "zoo", "source": "no_such_model"}, "is not one"),
    ({"kind": "torchvision", "source": "torchvision:../../x"}, "is not one"),
    ({"kind": "onnx", "source": "model.pt"}, "is not one"),
    ({"kind": "zoo", "source": 3}, "reference.source is int"),
    ({"kind": "zoo", "source": "resnet18", "kwargs": "x"}, "reference.kwargs is str"),
])
def test_broken_reference_records_are_one_line(tmp_path, images, capsys, reference, fragment):
    line = cli_error(capsys, "parity", artifact(tmp_path, reference=reference), "--data", images)
    assert fragment in line, line


# -- 2. a spec's name cannot leave the output folder -------------------------------------------------
@pytest.mark.parametrize("name", ["../elsewhere/escaped", "/tmp/escaped", "..", ".hidden",
                                  "a\nb", "x" * 200, "sub\\escaped"])
def test_a_spec_name_cannot_leave_the_output_folder(tmp_path, capsys, name):
    source = tiny_onnx(tmp_path / "in" / "their.onnx", {**_base_spec(), "name": name})
    out = tmp_path / "in" / "out"
    out.mkdir()
    before = tree(tmp_path)
    line = cli_error(capsys, "export", source, "-o", f"{out}/")
    assert "name" in line and "plain file name" in line, line
    assert tree(tmp_path) == before
    assert not Path("/tmp/escaped.onnx").exists()


def test_names_made_from_a_file_name_are_plain(tmp_path, capsys):
    """A spec-less ONNX file names its exports after its stem, made a plain file name."""
    from edgecls.cli import main
    from edgecls.formats import read_spec
    source = tiny_onnx(tmp_path / ".odd name..onnx")
    out = tmp_path / "out"
    out.mkdir()
    code = main(["export", str(source), "--mean", "0.5", "--std", "0.5", "-o", f"{out}/"])
    assert code == 0, capsys.readouterr().err
    made = tree(out)
    assert made == ["odd_name.onnx"], made
    assert read_spec(out / made[0]).name == "odd_name"


def test_every_spec_has_a_plain_name():
    from edgecls.qat_training.families import FAMILIES
    from edgecls.qat_training.training import default_checkpoint
    from edgecls.spec import safe_name
    with pytest.raises(ValueError, match="not a plain file name"):
        ModelSpec("../x", "a", 1, ["a"])
    spec = ModelSpec("ok", "a", 1, ["a"])
    spec.name = "../../escaped"          # a spec changed after it was made
    path = default_checkpoint(spec, FAMILIES[0], Path("out"))
    assert path.parent == Path("out") and "/" not in path.name and not path.name.startswith(".")
    for text in ["../x", "a b", "", "...", "\x00", "é" * 300, "timm:resnet50"]:
        assert ModelSpec(safe_name(text), "a", 1, ["a"]).name


# -- 5. small files cannot exhaust time, memory or the stack ---------------------------------------------
def _crafted_tflite(entries: int, name_length: int) -> bytes:
    """A TFL3 flatbuffer whose metadata vector holds `entries` entries, all the same table,
    whose name is `name_length` bytes: a reader that copies each name is quadratic in it."""
    out = bytearray(struct.pack("<I", 28) + b"TFL3")            # the root table is at 28
    out += struct.pack("<HH7H", 4 + 2 * 7, 8, 0, 0, 0, 0, 0, 0, 4) + b"\0\0"   # Model's vtable
    out += struct.pack("<iI", 28 - 8, 4)                          # Model: field 6 -> vector at 36
    vector = len(out)
    entry = vector + 4 + 4 * entries + 8
    out += struct.pack("<I", entries)
    out += b"".join(struct.pack("<I", entry - (vector + 4 + 4 * i)) for i in range(entries))
    out += struct.pack("<HHHH", 8, 8, 4, 0)                       # Metadata's vtable: name at +4
    out += struct.pack("<iI", 8, 4) + struct.pack("<I", name_length) + b"x" * name_length
    return bytes(out)


@pytest.mark.timeout(60)
def test_tflite_metadata_reader_is_linear(tmp_path, capsys):
    """2 MB: 262144 entries of a 1 MB name (the old reader copied 250 GB); and within the
    entry cap, 1024 entries of 1 MB names."""
    path = tmp_path / "vendor.tflite"
    path.write_bytes(_crafted_tflite(1 << 18, 1 << 20))
    assert "metadata entries" in cli_error(capsys, "info", path)
    path.write_bytes(_crafted_tflite(1024, 1 << 20))
    assert "without an edgecls spec" in cli_error(capsys, "info", path)


def _zip(path: Path, member: str, size: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, b" " * size)
    return path


@pytest.mark.timeout(60)
def test_pt2_members_are_read_capped(tmp_path, capsys):
    """A 17 MB spec member deflates to a few KB: refused before it is inflated; so is a
    constants config that inflates past the cap (read before torch loads the program)."""
    bomb = _zip(tmp_path / "bomb.pt2", "bomb/extra/edgecls.spec", MAX_SPEC_BYTES + 1)
    assert bomb.stat().st_size < 100_000
    assert "more than" in cli_error(capsys, "info", bomb)
    config = _zip(tmp_path / "config.pt2", "config/data/constants/config.json", MAX_SPEC_BYTES + 1)
    assert "more than" in cli_error(capsys, "export", config, "-o", f"{tmp_path}/")
    assert tree(tmp_path) == ["bomb.pt2", "config.pt2"]


def test_tensorrt_header_is_read_capped(tmp_path, capsys):
    from edgecls.backends.tensorrt.container import HEADER_VERSION, MAGIC
    path = tmp_path / "vendor.engine"
    n = MAX_SPEC_BYTES + 1
    path.write_bytes(MAGIC + struct.pack("<IQ", HEADER_VERSION, n) + b" " * (n + 16))
    assert "more than" in cli_error(capsys, "info", path)


def _deep(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("changes, fragment", [
    ({"resize": 60000}, "resize must be a whole number within 1..8192"),
    ({"input_size": [MAX_SIDE + 1, 8]}, "input_size"),
    ({"num_classes": 10 ** 7}, "num_classes"),
    ({"notes": _deep(900)}, "nested deeper than 32"),
    ({"quantization": {"search": [[[[]]]] + [_deep(40)]}}, "quantization"),
    ({"tools": {"onnx": 1}}, "tools"),
    ({"labels": ["x" * 100_000]}, "characters long"),
    ({"quantization": {"calibration_ids": [[1]]}}, "calibration_ids"),
    ({"quantization": {"target": 3}}, "quantization.target is int"),
    ({"notes": {"static_batch": 10 ** 9}}, "static_batch"),
    ({"reference": {"kind": "zoo", "source": ["x"]}}, "reference.source"),
])
def test_spec_fields_are_bounded(tmp_path, images, capsys, changes, fragment):
    """Each would have been a traceback, an allocation of gigabytes or a crash later; now it
    is one line from every command that reads the spec."""
    art = artifact(tmp_path, **changes)
    for argv in (["info", art], ["predict", art, images / "1.png"]):
        line = cli_error(capsys, *argv)
        assert "spec is invalid" in line and fragment in line, line


def test_the_largest_resize_allowed_is_usable(tmp_path):
    """resize = MAX_SIDE on an 8x8 input: the centre strip keeps the work in bounds."""
    from edgecls.imaging.preprocess import preprocess
    spec = ModelSpec.from_json(json.dumps({**_base_spec(), "resize": MAX_SIDE}))
    batch = preprocess([np.zeros((480, 640, 3), np.uint8)], spec)
    assert batch.shape == (1, 3, 8, 8)


def test_spec_text_is_capped():
    from edgecls.errors import ArtifactError
    with pytest.raises(ArtifactError, match="bytes long"):
        ModelSpec.from_json(" " * (MAX_SPEC_BYTES + 1))


def test_onnx_external_data_outside_its_folder_on_export(tmp_path, capsys):
    """predict refused it already (ONNX Runtime does); export read it through onnx.load."""
    values = np.ones((4, 3, 3, 3), np.float32)
    (tmp_path / "secret.bin").write_bytes(values.tobytes())
    source = tiny_onnx(tmp_path / "model" / "their.onnx", _base_spec(), external="../secret.bin")
    out = tmp_path / "model" / "out"
    out.mkdir()
    before = tree(tmp_path)
    line = cli_error(capsys, "export", source, "-o", f"{out}/")
    assert "outside the model's folder" in line, line
    for location in ("/etc/passwd", "missing.bin"):
        tiny_onnx(source, _base_spec(), external=location)
        assert "external data" in cli_error(capsys, "export", source, "-o", f"{out}/")
    assert tree(tmp_path) == before
