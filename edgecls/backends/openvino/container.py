"""How an OpenVINO IR carries its spec: the model's rt_info under SPEC_KEY (saved in the .xml)."""
from __future__ import annotations

from pathlib import Path

from edgecls.errors import ArtifactError, first_line
from edgecls.spec import SPEC_KEY, ModelSpec


def write_spec(model, spec: ModelSpec) -> None:
    model.set_rt_info(spec.to_json(), SPEC_KEY)


def copy_with_spec(src: Path, dst: Path, spec: ModelSpec) -> None:
    """The IR `src` (.xml + .bin) written to `dst` (and its .bin), carrying `spec`."""
    import openvino as ov
    model = read_model(ov.Core(), Path(src))
    write_spec(model, spec)
    ov.save_model(model, str(dst), compress_to_fp16=False)   # weights keep their types


def read_model(core, path: Path):
    """ov.Model from an .xml whose .bin sits next to it; every failure is an ArtifactError."""
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise ArtifactError(f"{path}: its weights file {weights.name} is missing (an OpenVINO "
                            "IR is an .xml plus a .bin; copy both)")
    try:
        return core.read_model(str(path), str(weights))
    except Exception as e:  # OpenVINO raises RuntimeError with a multi-line C++ trace
        raise ArtifactError(f"{path}: OpenVINO cannot read it ({first_line(e)})") from None


def spec_of(model, path: Path) -> ModelSpec:
    if not model.has_rt_info(SPEC_KEY):
        raise ArtifactError(f"{path}: an OpenVINO IR without an edgecls spec; export it with "
                            "`edgecls export --to openvino`")
    return ModelSpec.from_json(model.get_rt_info(SPEC_KEY).astype(str), str(path))


def read_spec(path: Path) -> ModelSpec:
    import openvino as ov
    return spec_of(read_model(ov.Core(), path), path)
