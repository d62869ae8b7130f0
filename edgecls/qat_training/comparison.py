"""PTQ next to QAT: the options that make a backend's PTQ recipe the one for the student's
target, so that the export log compares like with like."""
from __future__ import annotations

from typing import Any

from edgecls.errors import UnsupportedOptionError


def ptq_options(student, fmt) -> dict[str, Any]:
    """{"target": ...} for a backend that takes an INT8 target, else nothing. The student's
    target when the backend knows it by name; else, for TensorRT's family, "tensorrt";
    else the backend's default CPU recipe."""
    if "target" not in fmt.options.names():
        return {}
    for name in dict.fromkeys((student.target.name, student.family.name)):
        try:
            fmt.options.parse({"target": name}, "int8", fmt.name)
        except UnsupportedOptionError:
            continue
        return {"target": name}
    return {}
