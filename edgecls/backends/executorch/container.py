"""How a .pte carries its spec: a constant method named SPEC_METHOD whose one output is the
spec's JSON string (to_edge_transform_and_lower(..., constant_methods=...)).

Why a constant method and not a sidecar or a trailer: it is part of the program itself,
so the file is one self-describing artifact that any ExecuTorch runtime loads unchanged
(a device app can read it with `program.load_method("edgecls_spec").execute([])`), and
ExecuTorch's own serializer keeps it when a program is rewritten. The named-data map
(NamedDataStore) would also hold bytes, but it is meant for weights shared with
delegates and lives in segments after the flatbuffer, which makes it harder to read.

Read with a small flatbuffer reader of our own (the ExecuTorch schema, program.fbs):
`edgecls info` then needs neither torch nor executorch, and every offset is bounds-checked
so that a zero-byte, truncated or foreign file is an ArtifactError, never a crash. Written
by the exporter (export.py) and rewritten (copy_with_spec) with ExecuTorch's serializer.

    Program       {0 version, 1 execution_plan: [ExecutionPlan], ...}
    ExecutionPlan {0 name, 1 container_meta_type, 2 values: [EValue], 3 inputs, 4 outputs, ...}
    EValue        {val: KernelTypes}   (a union: field 0 its type, field 1 the table)
    String        {0 string_val}       (KernelTypes.String = 6)
"""
from __future__ import annotations

import struct
from pathlib import Path

from edgecls.errors import REEXPORT, ArtifactError, MissingDependencyError
from edgecls.io import read_artifact
from edgecls.spec import ModelSpec

FILE_IDENTIFIER = b"ET12"
#: the constant method holding the spec's JSON ("." is not allowed in method names)
SPEC_METHOD = "edgecls_spec"
#: ExecuTorch's extended header, right after the flatbuffer's root offset and identifier
_EXTENDED_MAGIC = b"eh00"
_KERNEL_TYPE_STRING = 6
#: most execution plans / values a reader walks before it calls the file damaged
_MAX_ITEMS = 1 << 20


class _Reader:
    """The flatbuffer wire format, just enough for tables, vectors, strings and unions,
    every read bounds-checked."""

    def __init__(self, buf: bytes, source: str):
        self.buf, self.source = buf, source

    def bad(self, why: str) -> ArtifactError:
        return ArtifactError(f"{self.source}: not a valid ExecuTorch program ({why}); {REEXPORT}")

    def _unpack(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.buf):
            raise self.bad("truncated")
        return struct.unpack_from(fmt, self.buf, pos)[0]

    def u8(self, pos: int) -> int:
        return self._unpack("<B", pos)

    def u16(self, pos: int) -> int:
        return self._unpack("<H", pos)

    def u32(self, pos: int) -> int:
        return self._unpack("<I", pos)

    def i32(self, pos: int) -> int:
        return self._unpack("<i", pos)

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field `index` of the table at `table` (None: absent)."""
        vtable = table - self.i32(table)
        vsize = self.u16(vtable)
        if 4 + 2 * index + 2 > vsize:
            return None
        off = self.u16(vtable + 4 + 2 * index)
        return table + off if off else None

    def deref(self, pos: int) -> int:
        return pos + self.u32(pos)

    def vector(self, table: int, index: int, item: int = 4) -> tuple[int, int]:
        """(start, length) of a vector field; (0, 0) when absent."""
        pos = self.field(table, index)
        if pos is None:
            return 0, 0
        vec = self.deref(pos)
        n = self.u32(vec)
        if n > _MAX_ITEMS or vec + 4 + n * item > len(self.buf):
            raise self.bad("a vector runs past the end of the file")
        return vec + 4, n

    def table_at(self, vector_start: int, i: int) -> int:
        return self.deref(vector_start + 4 * i)

    def string(self, table: int, index: int) -> str | None:
        start, n = self.vector(table, index, item=1)
        if not start:
            return None
        return self.buf[start:start + n].decode("utf-8", "replace")


def check_header(buf: bytes, source: str) -> None:
    """The file is an ExecuTorch flatbuffer, whole: its identifier, and (when it has one) an
    extended header whose segments end inside the file."""
    if len(buf) < 8 or buf[4:8] != FILE_IDENTIFIER:
        raise ArtifactError(f"{source}: not an ExecuTorch program (no {FILE_IDENTIFIER.decode()} "
                            f"identifier: empty, truncated, or another kind of file); {REEXPORT}")
    if buf[8:12] == _EXTENDED_MAGIC:
        r = _Reader(buf, source)
        length = r.u32(12)
        program_size = r._unpack("<Q", 16)
        base = r._unpack("<Q", 24)
        data_size = r._unpack("<Q", 32) if length > 24 else 0
        if program_size > len(buf) or (base and base + data_size > len(buf)):
            raise r.bad(f"truncated: {len(buf)} bytes where its header says "
                        f"{max(program_size, base + data_size)}")


def spec_text(buf: bytes, source: str, method: str = SPEC_METHOD) -> str | None:
    """The string the constant method `method` returns (None when the program has none)."""
    check_header(buf, source)
    r = _Reader(buf, source)
    program = r.deref(0)
    plans, n = r.vector(program, 1)
    for i in range(n):
        plan = r.table_at(plans, i)
        if r.string(plan, 0) != method:
            continue
        values, n_values = r.vector(plan, 2)
        outputs, n_outputs = r.vector(plan, 4)
        if n_outputs != 1:
            raise r.bad(f"its {method} method has {n_outputs} outputs, not 1")
        index = r.i32(outputs)
        if not 0 <= index < n_values:
            raise r.bad(f"its {method} output {index} is out of range")
        value = r.table_at(values, index)
        kind_pos, val_pos = r.field(value, 0), r.field(value, 1)
        if kind_pos is None or val_pos is None or r.u8(kind_pos) != _KERNEL_TYPE_STRING:
            raise r.bad(f"its {method} method does not return a string")
        text = r.string(r.deref(val_pos), 0)
        return text if text is not None else ""
    return None


def spec_of(buf: bytes, path: Path) -> ModelSpec:
    """The spec in a .pte's bytes."""
    text = spec_text(buf, str(path))
    if text is None:
        raise ArtifactError(f"{path}: an ExecuTorch program without an edgecls spec; export "
                            "it with `edgecls export --to executorch`")
    return ModelSpec.from_json(text, str(path))


def read_spec(path: Path) -> ModelSpec:
    return spec_of(read_artifact(path), path)


def with_spec(buf: bytes, spec: ModelSpec, source: str = "program") -> bytes:
    """The program `buf` with its spec method returning `spec` (ExecuTorch's serializer:
    delegate segments and named data are kept, aligned as to_executorch() aligns them)."""
    try:
        from executorch.exir._serialize._program import (deserialize_pte_binary,
                                                          serialize_pte_binary)
        from executorch.exir.schema import String
    except ImportError:
        raise MissingDependencyError("rewriting ExecuTorch programs (executorch)",
                                     "executorch") from None
    if spec_text(buf, source) is None:
        raise ArtifactError(f"{source}: an ExecuTorch program without an edgecls spec; export "
                            "it with `edgecls export --to executorch`")
    pte = deserialize_pte_binary(buf)
    plan = next(p for p in pte.program.execution_plan if p.name == SPEC_METHOD)
    plan.values[plan.outputs[0]].val = String(spec.to_json())
    return bytes(serialize_pte_binary(pte, extract_delegate_segments=True,
                                      segment_alignment=128))


#: copy_with_spec can give an artifact a new spec (edgecls.backends.base.Container)
REWRITES_SPEC = True


def copy_with_spec(src: Path, dst: Path, spec: ModelSpec) -> None:
    """The program `src` written to `dst`, carrying `spec` instead of its own."""
    Path(dst).write_bytes(with_spec(read_artifact(Path(src)), spec, str(src)))


__all__ = ["SPEC_METHOD", "REWRITES_SPEC", "read_spec", "spec_of", "spec_text", "with_spec", "copy_with_spec",
           "check_header"]
