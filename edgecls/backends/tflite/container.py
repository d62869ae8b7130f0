"""How a TFLite artifact carries its spec: a metadata entry named SPEC_KEY whose buffer holds
the JSON.

Read with a small flatbuffer reader of our own rather than ai_edge_litert.schema_py_generated:
the older devices the runtime also serves have only tflite_runtime, which ships no schema
module, and `edgecls info` must work there too. Written (on the exporting side) with
ai-edge-litert's flatbuffer tools.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from edgecls.errors import REEXPORT, ArtifactError
from edgecls.io import read_artifact
from edgecls.spec import MAX_SPEC_BYTES, SPEC_KEY, ModelSpec

FILE_IDENTIFIER = b"TFL3"
#: the most metadata entries read (a model has a handful: edgecls' spec, TFLite's own)
MAX_METADATA = 1024


# -- a minimal flatbuffer reader for the TFLite schema (Model -> metadata, buffers) ---------
class _Flat:
    """Just enough of the flatbuffer wire format to read tables, vectors and strings, with
    bounds checks so that a truncated or foreign file is an ArtifactError, not a crash."""

    def __init__(self, buf: bytes, source: str):
        self.buf, self.source = buf, source

    def _bad(self, why: str) -> ArtifactError:
        return ArtifactError(f"{self.source}: not a valid TFLite flatbuffer ({why}); {REEXPORT}")

    def u32(self, pos: int) -> int:
        if pos < 0 or pos + 4 > len(self.buf):
            raise self._bad("truncated")
        return struct.unpack_from("<I", self.buf, pos)[0]

    def u64(self, pos: int) -> int:
        if pos < 0 or pos + 8 > len(self.buf):
            raise self._bad("truncated")
        return struct.unpack_from("<Q", self.buf, pos)[0]

    def u16(self, pos: int) -> int:
        if pos < 0 or pos + 2 > len(self.buf):
            raise self._bad("truncated")
        return struct.unpack_from("<H", self.buf, pos)[0]

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field `index` of the table at `table`, or None if absent."""
        vtable = table - struct.unpack_from("<i", self.buf, table)[0] \
            if 0 <= table and table + 4 <= len(self.buf) else -1
        vsize = self.u16(vtable)
        if 4 + 2 * index >= vsize:
            return None
        off = self.u16(vtable + 4 + 2 * index)
        return table + off if off else None

    def deref(self, pos: int) -> int:
        return pos + self.u32(pos)

    def vector(self, table: int, index: int) -> tuple[int, int]:
        """(start, length) of a vector field; (0, 0) when absent."""
        pos = self.field(table, index)
        if pos is None:
            return 0, 0
        vec = self.deref(pos)
        n = self.u32(vec)
        return vec + 4, n

    def table_at(self, vector_start: int, i: int) -> int:
        return self.deref(vector_start + 4 * i)

    def bytes_field(self, table: int, index: int, limit: int = MAX_SPEC_BYTES) -> bytes:
        """The bytes of a [ubyte] or string field, at most `limit` of them (more is refused
        before anything is copied)."""
        start, n = self.vector(table, index)
        if start + n > len(self.buf):
            raise self._bad("truncated")
        if n > limit:
            raise self._bad(f"a field of {n} bytes where at most {limit} are read")
        return bytes(self.buf[start:start + n])

    def equals(self, table: int, index: int, value: bytes) -> bool:
        """Whether a [ubyte] or string field holds `value`: its length is compared first,
        so a long field costs nothing (the reader stays linear in the file's size)."""
        start, n = self.vector(table, index)
        if start + n > len(self.buf):
            raise self._bad("truncated")
        return n == len(value) and self.buf[start:start + n] == value


def read_metadata(buf: bytes, source: str, key: str = SPEC_KEY) -> bytes | None:
    """The bytes of the metadata entry `key` of a TFLite model (None if it has none).

    Schema: Model{0 version, 1 operator_codes, 2 subgraphs, 3 description, 4 buffers,
    5 metadata_buffer, 6 metadata, ...}; Metadata{0 name, 1 buffer}; Buffer{0 data,
    1 offset, 2 size} (offset/size for models over 2 GB that keep data after the flatbuffer).
    Linear in the file's size and capped: at most MAX_METADATA entries, and an entry of
    more than MAX_SPEC_BYTES is refused.
    """
    fb = _Flat(buf, source)
    if len(buf) < 8 or buf[4:8] != FILE_IDENTIFIER:
        raise ArtifactError(f"{source}: not a TFLite flatbuffer (no TFL3 identifier: truncated, "
                            f"or another kind of file); {REEXPORT}")
    model = fb.deref(0)
    meta_start, meta_n = fb.vector(model, 6)
    buffers_start, buffers_n = fb.vector(model, 4)
    if meta_n > MAX_METADATA:
        raise fb._bad(f"{meta_n} metadata entries, at most {MAX_METADATA} are read")
    wanted = key.encode("utf-8")
    for i in range(meta_n):
        entry = fb.table_at(meta_start, i)
        if not fb.equals(entry, 0, wanted):
            continue
        pos = fb.field(entry, 1)
        index = fb.u32(pos) if pos is not None else 0
        if index >= buffers_n:
            raise fb._bad(f"metadata buffer {index} out of range")
        buffer = fb.table_at(buffers_start, index)
        data = fb.bytes_field(buffer, 0)
        if not data:
            off, size = fb.field(buffer, 1), fb.field(buffer, 2)
            if off is not None and size is not None:
                start, n = fb.u64(off), fb.u64(size)
                if start + n > len(buf):
                    raise fb._bad("truncated")
                if n > MAX_SPEC_BYTES:
                    raise fb._bad(f"a metadata entry of {n} bytes, at most {MAX_SPEC_BYTES} "
                                  "are read")
                data = bytes(buf[start:start + n])
        return data
    return None



def spec_of(model: bytes, path: Path) -> ModelSpec:
    """The spec in a TFLite model's bytes."""
    data = read_metadata(model, str(path))
    if data is None:
        raise ArtifactError(f"{path}: a TFLite model without an edgecls spec; export it with "
                            "`edgecls export --to tflite`")
    return ModelSpec.from_json(data.decode("utf-8", "replace"), str(path))


def read_spec(path: Path) -> ModelSpec:
    return spec_of(read_artifact(path), path)


def embed_spec(model: bytes, spec: ModelSpec, key: str = SPEC_KEY) -> bytes:
    """Add (or replace) the metadata entry `key` -> a new buffer with the spec's JSON."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as S
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    obj.metadata = [m for m in (obj.metadata or []) if _name(m.name) != key]
    buffer = S.BufferT()
    buffer.data = np.frombuffer(spec.to_json().encode("utf-8"), dtype=np.uint8)
    obj.buffers.append(buffer)
    entry = S.MetadataT()
    entry.name = key
    entry.buffer = len(obj.buffers) - 1
    obj.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


#: copy_with_spec can give an artifact a new spec (edgecls.backends.base.Container)
REWRITES_SPEC = True


def copy_with_spec(src: Path, dst: Path, spec: ModelSpec) -> None:
    """The model `src` written to `dst`, carrying `spec` instead of its own."""
    Path(dst).write_bytes(embed_spec(read_artifact(Path(src)), spec))


def _name(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)
