"""THE format table, assembled from the backends (edgecls/backends/<name>/ and installed
plug-ins). A format is a row; nothing else in edgecls branches on format names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecls.backends import discover
from edgecls.backends.base import DEVICES, PRECISIONS, Format, Session
from edgecls.errors import ArtifactError, UnknownFormatError
from edgecls.spec import ModelSpec

FORMATS: dict[str, Format] = {f.name: f for f in discover()}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name.lower()]
    except KeyError:
        raise UnknownFormatError(
            f"unknown format {name!r}; choose one of: {', '.join(FORMATS)}") from None


def format_for_path(path: str | Path) -> Format:
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    known = ", ".join(s for f in FORMATS.values() for s in f.suffixes)
    raise UnknownFormatError(f"{path}: unknown artifact type {suffix or '(no suffix)'!r}; "
                             f"edgecls reads {known}")


def open_session(path: str | Path, **kwargs: Any) -> Session:
    """Open the right Session for an artifact, chosen by its suffix."""
    return format_for_path(path).load_runtime()(path, **kwargs)


def read_spec(path: str | Path) -> ModelSpec:
    """The ModelSpec embedded in an artifact, without running it."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    return format_for_path(path).read_spec(path)


__all__ = ["FORMATS", "DEVICES", "PRECISIONS", "Format", "get_format", "format_for_path",
           "open_session", "read_spec"]
