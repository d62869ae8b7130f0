"""The sweep's files: sweep.md, .csv, .json and .html in the output folder, all or none."""
from __future__ import annotations

import json
from pathlib import Path

from edgecls.io import write_texts
from edgecls.sweep.html import render_html
from edgecls.sweep.table import SweepTable


def write_sweep(table: SweepTable, folder: Path) -> dict[str, Path]:
    return write_texts(folder, {
        "sweep.md": table.markdown(), "sweep.csv": table.csv(),
        "sweep.json": json.dumps(table.to_dict(), indent=1, default=float),
        "sweep.html": render_html(table)})


__all__ = ["write_sweep"]
