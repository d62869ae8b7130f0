"""How an OpenVINO IR carries its spec: the model's rt_info under SPEC_KEY (saved in the .xml).

The .xml also records a digest of its .bin (BIN_KEY): a .bin from another export of the same
architecture has the same size and loads without a word from OpenVINO, with wrong weights.
"""
from __future__ import annotations

from pathlib import Path

from edgecls.errors import REEXPORT, ArtifactError, first_line
from edgecls.io import sha256
from edgecls.spec import SPEC_KEY, ModelSpec

BIN_KEY = "edgecls.bin_sha256"
BIN_DIGEST_CHARS = 16


def write_spec(model, spec: ModelSpec) -> None:
    model.set_rt_info(spec.to_json(), SPEC_KEY)


def save(model, xml: Path, **options) -> None:
    """ov.save_model, then again with the .bin's digest in the .xml (saving is deterministic:
    the second .bin is the first, byte for byte)."""
    import openvino as ov
    ov.save_model(model, str(xml), **options)
    model.set_rt_info(sha256(xml.with_suffix(".bin"), BIN_DIGEST_CHARS), BIN_KEY)
    ov.save_model(model, str(xml), **options)


def _check_weights(model, path: Path, weights: Path) -> None:
    if not model.has_rt_info(BIN_KEY):     # an IR made elsewhere: nothing to check against
        return
    if sha256(weights, BIN_DIGEST_CHARS) != model.get_rt_info(BIN_KEY).astype(str):
        raise ArtifactError(f"{path}: {weights.name} is not its weights file (another export's, "
                            "or damaged); copy the .xml and the .bin of one export together")


#: copy_with_spec can give an artifact a new spec (edgecls.backends.base.Container)
REWRITES_SPEC = True


def copy_with_spec(src: Path, dst: Path, spec: ModelSpec) -> None:
    """The IR `src` (.xml + .bin) written to `dst` (and its .bin), carrying `spec`."""
    import openvino as ov
    model = read_model(ov.Core(), Path(src))
    write_spec(model, spec)
    save(model, Path(dst), compress_to_fp16=False)   # weights keep their types


def read_model(core, path: Path):
    """ov.Model from an .xml whose .bin sits next to it; every failure is an ArtifactError."""
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise ArtifactError(f"{path}: its weights file {weights.name} is missing (an OpenVINO "
                            "IR is an .xml plus a .bin; copy both)")
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not head.startswith(b"<"):   # OpenVINO would read an ONNX file given any name
        raise ArtifactError(f"{path}: not an OpenVINO IR (an .xml file holds XML); {REEXPORT}")
    try:
        model = core.read_model(str(path), str(weights))
    except Exception as e:  # OpenVINO raises RuntimeError with a multi-line C++ trace
        raise ArtifactError(f"{path}: OpenVINO cannot read it ({first_line(e)}); {REEXPORT}") \
            from None
    _check_weights(model, path, weights)
    return model


def spec_of(model, path: Path) -> ModelSpec:
    if not model.has_rt_info(SPEC_KEY):
        raise ArtifactError(f"{path}: an OpenVINO IR without an edgecls spec; export it with "
                            "`edgecls export --to openvino`")
    return ModelSpec.from_json(model.get_rt_info(SPEC_KEY).astype(str), str(path))


def read_spec(path: Path) -> ModelSpec:
    import openvino as ov
    return spec_of(read_model(ov.Core(), path), path)
