"""How a .pt2 carries its spec: an extra file named SPEC_KEY in the archive that
torch.export.save writes. The archive is a zip file, so the spec is read without torch."""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import IO

from edgecls.errors import REEXPORT, ArtifactError, UnsupportedOptionError, first_line
from edgecls.spec import MAX_SPEC_BYTES, SPEC_KEY, ModelSpec

# torch.export.save puts extra files under "<archive root>/extra/"; the root folder is named
# after the file the archive was first written as (a temporary name, for edgecls exports).
_MEMBER_SUFFIX = f"/extra/{SPEC_KEY}"


def read_member(archive: zipfile.ZipFile, member: str, path: Path,
                limit: int = MAX_SPEC_BYTES) -> bytes:
    """A member of a zip archive, decompressed to at most `limit` bytes: a bigger one (by
    its declared size, or by what it really inflates to) is an ArtifactError, so that a
    small file cannot make edgecls inflate gigabytes."""
    if archive.getinfo(member).file_size > limit:
        raise ArtifactError(f"{path}: its member {member[-80:]!r} is "
                            f"{archive.getinfo(member).file_size} bytes, more than the "
                            f"{limit} edgecls reads; {REEXPORT}")
    try:
        with archive.open(member) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, ValueError,
            OSError, EOFError) as e:   # corrupt, encrypted, or an unknown compression
        raise ArtifactError(f"{path}: cannot read its member {member[-80:]!r} "
                            f"({first_line(e)}); {REEXPORT}") from None
    if len(data) > limit:
        raise ArtifactError(f"{path}: its member {member[-80:]!r} inflates to more than the "
                            f"{limit} bytes edgecls reads; {REEXPORT}")
    return data


def spec_text(archive_file: IO[bytes], path: Path) -> str:
    """The spec's JSON in an open .pt2 file, "" when it has none (the file is left open)."""
    try:
        with zipfile.ZipFile(archive_file) as archive:
            member = next((n for n in archive.namelist() if n.endswith(_MEMBER_SUFFIX)), None)
            return read_member(archive, member, path).decode("utf-8", "replace") \
                if member else ""
    except zipfile.BadZipFile as e:
        raise ArtifactError(f"{path}: not a .pt2 archive ({first_line(e)}); {REEXPORT}") \
            from None


def spec_of(archive_file: IO[bytes], path: Path) -> ModelSpec:
    """The spec in an open .pt2 file (left open, for torch.export.load to read next)."""
    text = spec_text(archive_file, path)
    if not text:
        raise ArtifactError(f"{path}: a .pt2 program without an edgecls spec; export it with "
                            "`edgecls export --to torch`")
    return ModelSpec.from_json(text, str(path))


def read_spec(path: Path) -> ModelSpec:
    try:
        with open(path, "rb") as f:
            return spec_of(f, path)
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read it ({e.strerror or e})") from None


#: a .pt2 is not given another spec (edgecls.backends.base.Container), so `--to best`, which
#: writes its winner with the record of its choice, leaves torch out
REWRITES_SPEC = False


def copy_with_spec(src: Path, dst: Path, spec: ModelSpec) -> None:
    """Refused: see REWRITES_SPEC."""
    raise UnsupportedOptionError("torch artifacts cannot be given a new spec")
