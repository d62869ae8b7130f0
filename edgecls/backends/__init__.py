"""The backends: one package per kind of artifact, each holding its format row, export,
runtime session, quantization recipes and artifact container (see base.py for the
contracts).

Adding a backend is adding a package: a folder here named in BUILTIN, or any installed
package that declares an entry point in the group "edgecls.backends" pointing at its
Format row, e.g. in its pyproject.toml:

    [project.entry-points."edgecls.backends"]
    coreml = "edgecls_coreml:FORMAT"
"""
from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

from edgecls.backends.base import Format
from edgecls.errors import first_line

ENTRY_POINT_GROUP = "edgecls.backends"
BUILTIN = ("onnx", "openvino", "tflite", "tensorrt", "torch", "executorch")

log = logging.getLogger("edgecls")


def discover() -> list[Format]:
    """The built-in rows, then those of installed third-party packages. A third-party row
    that cannot be loaded, or that reuses a name or suffix, is left out with a warning: one
    broken plug-in must not take edgecls down with it."""
    rows = [importlib.import_module(f"edgecls.backends.{name}").FORMAT for name in BUILTIN]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            row = ep.load()
        except Exception as e:  # a plug-in's import can fail in any way
            log.warning("backend %r (%s) left out: it does not load (%s)", ep.name, ep.value,
                        first_line(e))
            continue
        taken = {r.name for r in rows} | {s for r in rows for s in r.suffixes}
        if not isinstance(row, Format):
            log.warning("backend %r (%s) left out: not a Format row", ep.name, ep.value)
        elif clash := sorted(({row.name} | set(row.suffixes)) & taken):
            log.warning("backend %r (%s) left out: it reuses %s", ep.name, ep.value,
                        ", ".join(clash))
        else:
            rows.append(row)
    return rows


__all__ = ["discover", "BUILTIN", "ENTRY_POINT_GROUP"]
