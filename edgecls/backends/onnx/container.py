"""How an ONNX artifact carries its spec: one metadata_props entry (SPEC_KEY -> the JSON).

Written with the onnx package (the exporting side), read with ONNX Runtime (the device side,
which has no onnx package): from a session's model metadata, so opening reads the file once.
"""
from __future__ import annotations

from pathlib import Path

from edgecls.errors import REEXPORT, ArtifactError, first_line
from edgecls.spec import SPEC_KEY, ModelSpec

_TWO_GB = 2 * 1024 ** 3


def write_spec(path: Path, spec: ModelSpec) -> None:
    """Embed the spec, check the model and save it as one file."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {SPEC_KEY: spec.to_json()})
    if proto.ByteSize() > _TWO_GB:
        raise ArtifactError(f"{spec.name}: the ONNX model is over 2 GB, which one protobuf file "
                            "cannot hold")
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))


#: copy_with_spec can give an artifact a new spec (edgecls.backends.base.Container)
REWRITES_SPEC = True


def copy_with_spec(src: Path, dst: Path, spec: ModelSpec) -> None:
    """The artifact `src` written to `dst`, carrying `spec` instead of its own."""
    import shutil
    shutil.copyfile(src, dst)
    write_spec(dst, spec)


def inference_session(path: Path, options, providers: list[str]):
    """ort.InferenceSession; every load failure is an ArtifactError."""
    import onnxruntime as ort
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... classes
        raise ArtifactError(f"{path}: ONNX Runtime cannot load it ({first_line(e)}); "
                            f"{REEXPORT}") from None


def spec_of(session, path: Path) -> ModelSpec:
    """The spec in a loaded InferenceSession's metadata."""
    meta = session.get_modelmeta().custom_metadata_map
    if SPEC_KEY not in meta:
        raise ArtifactError(f"{path}: an ONNX model without an edgecls spec; export it with "
                            "`edgecls export`")
    return ModelSpec.from_json(meta[SPEC_KEY], str(path))


def read_spec(path: Path) -> ModelSpec:
    import onnxruntime as ort
    # only the metadata is wanted: skip graph optimisation, the costly part of a load
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return spec_of(inference_session(path, options, ["CPUExecutionProvider"]), path)
