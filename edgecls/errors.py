"""User-facing errors.

An EdgeclsError is the user's problem (bad name, missing file, absent device ...): the CLI
prints its one-line message and exits with status 2, no traceback. Anything else is a bug
in edgecls or a backend and keeps its traceback.
"""
from __future__ import annotations

import difflib
import re

# What C++ backends put before the message itself, e.g. OpenVINO's
# "Exception from src/inference/src/core.cpp:99:" and "Check '...' failed at ...".
_LOCATION_PREFIXES = ("Exception from", "Check '")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(error: BaseException | str, limit: int = 300, *, join: bool = False) -> str:
    """The text of an error as one line, for a one-line user message.

    Its first line that says something (C++ location lines skipped), or with `join` all of
    its lines (for errors whose first line is only a heading, e.g. torch's load_state_dict);
    whitespace collapsed, at most `limit` characters; the type name when it has no text."""
    lines = [" ".join(line.split()) for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_LOCATION_PREFIXES)] or lines
    text = " ".join(useful) if join else next(iter(useful), "")
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return text[:limit]


def one_line(error: BaseException) -> str:
    """An error as one line for a table cell or a log line: a user error's message, anything
    else's type and message."""
    text = _ANSI.sub("", first_line(error))     # torch.export colours its messages
    return text if isinstance(error, EdgeclsError) else f"{type(error).__name__}: {text}"


class EdgeclsError(Exception):
    """Base class: one line that says what is wrong and what to do."""

    exit_code = 2


class UnknownModelError(EdgeclsError):
    def __init__(self, name: str, known: list[str], listing: str = "`edgecls models` lists them"):
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; {listing}"
        super().__init__(f"unknown model {name!r}{hint}")


class UnknownFormatError(EdgeclsError):
    pass


class DeviceUnavailableError(EdgeclsError):
    pass


class MissingDependencyError(EdgeclsError):
    def __init__(self, what: str, extra: str):
        self.extra = extra
        super().__init__(f"{what} is not installed: pip install 'edgecls[{extra}]'")


class ImageReadError(EdgeclsError):
    pass


class ArtifactError(EdgeclsError):
    """A model file that is missing, corrupt, or not what its suffix says."""


#: what to do about an artifact that is corrupt, truncated or not what its suffix says
REEXPORT = "export it again (`edgecls export`) or copy the whole file again"


class WeightsError(EdgeclsError):
    pass


class OutputError(EdgeclsError):
    """An output path that cannot be written: a folder, read-only, no space left ..."""


class SourceError(EdgeclsError):
    """A model source that cannot be used: not importable, not a classifier, a file that is
    unsafe to load, an ONNX graph edgecls cannot feed."""


class DataError(EdgeclsError):
    """Calibration / validation data that cannot be used."""


class UnsupportedOptionError(EdgeclsError):
    """An option the chosen format or backend does not support (never silently ignored)."""


class ExportMismatchError(EdgeclsError):
    """An exported artifact does not reproduce the PyTorch model within tolerance."""


class BackendBuildError(EdgeclsError):
    """A backend could not parse or build the model (one line: its parser's or builder's
    errors), e.g. TensorRT."""


class ParityFailedError(EdgeclsError):
    """A --strict INT8 export whose parity check missed its tolerance: nothing is written."""
    exit_code = 1
