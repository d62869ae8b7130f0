"""How a TensorRT artifact carries its spec: one .engine file = a small header + the engine.

    offset 0   12 bytes  MAGIC  b"EDGECLS-TRT\\x00"
    offset 12   4 bytes  header version, uint32 little-endian (HEADER_VERSION)
    offset 16   8 bytes  n = length of the spec, uint64 little-endian
    offset 24   n bytes  the ModelSpec as UTF-8 JSON (ModelSpec.to_json())
    offset 24+n          the serialized TensorRT engine, to the end of the file

A TensorRT plan has no metadata slot, so the spec travels in front of it and
`Classifier("model.engine")` needs nothing else. The spec records the engine's size and a
short sha256 (notes["engine_size"], notes["engine_sha256"]), so a truncated copy is caught
here, in pure Python, before TensorRT sees it.

Pure Python (no TensorRT, no numpy): `edgecls info` / `read_spec` work on any machine.
"""
from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import IO

from edgecls.errors import REEXPORT, ArtifactError, first_line
from edgecls.io import atomic_paths
from edgecls.spec import MAX_SPEC_BYTES, ModelSpec

MAGIC = b"EDGECLS-TRT\x00"
HEADER_VERSION = 1
_FIXED = struct.Struct("<IQ")           # version, spec length
HEADER_SIZE = len(MAGIC) + _FIXED.size  # 24 bytes before the spec JSON
SHA_CHARS = 16


def engine_digest(engine: bytes | memoryview) -> str:
    return hashlib.sha256(engine).hexdigest()[:SHA_CHARS]


def pack(spec: ModelSpec, engine: bytes | memoryview) -> bytes:
    """Header + engine. Records the engine's size and digest in the spec first."""
    if not len(engine):
        raise ArtifactError(f"{spec.name}: TensorRT produced an empty engine")
    spec.notes["engine_size"] = len(engine)
    spec.notes["engine_sha256"] = engine_digest(engine)
    text = spec.to_json().encode("utf-8")
    return MAGIC + _FIXED.pack(HEADER_VERSION, len(text)) + text + bytes(engine)


def write_engine(path: str | Path, spec: ModelSpec, engine: bytes | memoryview) -> Path:
    path = Path(path)
    path.write_bytes(pack(spec, engine))
    return path


def wrap_engine(raw: str | Path, spec: ModelSpec, out: str | Path,
                tensorrt_version: str | None = None) -> Path:
    """Give a raw TensorRT engine built elsewhere (trtexec, Polygraphy) an edgecls spec, in
    a new file written atomically (`out` may be `raw` itself).

    The spec must describe the engine's input (size, layout, normalisation). Pass the
    TensorRT version it was built with so the runtime can say so when it does not match."""
    data = Path(raw).read_bytes()
    if data.startswith(MAGIC):
        raise ArtifactError(f"{raw}: already an edgecls engine (it has a spec)")
    spec = spec.derive(format="tensorrt", tools=dict(spec.tools), notes=dict(spec.notes))
    if tensorrt_version:
        spec.tools["tensorrt"] = tensorrt_version
    spec.notes.setdefault("engine_origin", f"wrapped raw engine {Path(raw).name}")
    out = Path(out)
    with atomic_paths(out) as (tmp,):
        write_engine(tmp, spec, data)
    return out


def _read(path: Path, with_engine: bool) -> tuple[ModelSpec, bytes | None]:
    """The spec (and the engine bytes) in one pass over the file; every malformed case is an
    ArtifactError."""
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            spec = spec_of(f, path)
            engine = f.read() if with_engine else None
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read it ({e.strerror or e})") from None
    return spec, engine


def spec_of(engine_file: IO[bytes], path: Path) -> ModelSpec:
    """The spec in the header of an open .engine file (read from its start), checked against
    the file's size; the file is left at the engine's first byte, for the runtime to read."""
    size = engine_file.seek(0, os.SEEK_END)
    engine_file.seek(0)
    head = engine_file.read(HEADER_SIZE)
    if head[:len(MAGIC)] != MAGIC:
        if len(head) < len(MAGIC) and MAGIC.startswith(head):
            raise ArtifactError(f"{path}: truncated ({size} bytes, not even an edgecls "
                                f"TensorRT header); {REEXPORT}")
        raise ArtifactError(
            f"{path}: a TensorRT engine without an edgecls header (built elsewhere?), "
            "so its preprocessing and labels are unknown; export it with `edgecls "
            "export --to tensorrt`, or give it a spec with "
            "edgecls.backends.tensorrt.container.wrap_engine(path, spec, out)")
    if len(head) < HEADER_SIZE:
        raise ArtifactError(f"{path}: truncated inside the edgecls TensorRT header "
                            f"({size} of {HEADER_SIZE} bytes); {REEXPORT}")
    version, n = _FIXED.unpack(head[len(MAGIC):])
    if version > HEADER_VERSION:
        raise ArtifactError(f"{path}: written by a newer edgecls (TensorRT header version "
                            f"{version}, this one reads {HEADER_VERSION}); upgrade edgecls")
    if version < 1:
        raise ArtifactError(f"{path}: invalid edgecls TensorRT header (version {version})")
    if n > MAX_SPEC_BYTES:
        raise ArtifactError(f"{path}: the header announces a {n}-byte spec, more than "
                            f"the {MAX_SPEC_BYTES} edgecls reads; {REEXPORT}")
    if HEADER_SIZE + n > size:
        raise ArtifactError(f"{path}: truncated: the header announces a {n}-byte spec but "
                            f"only {size - HEADER_SIZE} bytes follow it; {REEXPORT}")
    spec = _parse_spec(engine_file.read(n), path)
    _check_engine_size(spec, size - HEADER_SIZE - n, path)
    return spec


def _parse_spec(raw: bytes, path: Path) -> ModelSpec:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path}: its edgecls spec is not valid JSON "
                            f"({first_line(e, 200)})") from None
    return ModelSpec.from_json(text, str(path))     # checks the JSON, its type and fields


def _check_engine_size(spec: ModelSpec, size: int, path: Path) -> None:
    expected = spec.notes.get("engine_size")
    if size == 0:
        raise ArtifactError(f"{path}: truncated: the spec is there but the engine is missing; "
                            f"{REEXPORT}")
    if isinstance(expected, int) and size != expected:
        what = "truncated" if size < expected else "corrupt (trailing bytes)"
        raise ArtifactError(f"{path}: {what}: the engine should be {expected} bytes, "
                            f"the file holds {size}; {REEXPORT}")


def read_spec(path: str | Path) -> ModelSpec:
    """The ModelSpec of an edgecls .engine file, without TensorRT."""
    return _read(Path(path), with_engine=False)[0]


def read_engine(path: str | Path) -> tuple[ModelSpec, bytes]:
    """The spec and the serialized engine bytes, checked against the recorded digest."""
    spec, engine = _read(Path(path), with_engine=True)
    digest = spec.notes.get("engine_sha256")
    if digest and engine_digest(engine) != digest:
        raise ArtifactError(f"{path}: corrupt: the engine bytes do not match the digest in its "
                            "spec")
    return spec, engine


#: copy_with_spec can give an engine a new spec (edgecls.backends.base.Container)
REWRITES_SPEC = True


def copy_with_spec(src: str | Path, dst: str | Path, spec: ModelSpec) -> None:
    """The engine of `src` written to `dst` behind `spec` (its digest kept)."""
    _, engine = read_engine(src)
    write_engine(dst, spec, engine)


__all__ = ["copy_with_spec", "MAGIC", "HEADER_VERSION", "HEADER_SIZE", "REWRITES_SPEC", "pack",
           "write_engine", "wrap_engine", "read_spec", "read_engine", "spec_of", "engine_digest"]
