"""The parity report: its data (model.py) with its renderers - the terminal, JSON (machines),
Markdown (reviews), HTML with plots (people)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgecls.io import write_texts
from edgecls.report.html import render_html
from edgecls.report.markdown import render_markdown
from edgecls.report.model import ParityResults
from edgecls.report.terminal import print_report


class ParityReport(ParityResults):
    """What edgecls.parity() returns: the results, printable and writable."""

    def print(self, console: Any = None) -> None:
        print_report(self, console)

    def write(self, folder: str | Path) -> dict[str, Path]:
        return write_all(self, Path(folder))


def write_all(report, folder: Path) -> dict[str, Path]:
    """report.{json,md,html} in `folder`, all or none: every text is rendered before
    anything is written, and the three files are renamed into place together (a folder
    made for them goes again when that fails)."""
    texts = {"report.json": json.dumps(report.to_dict(), indent=2, default=float),
             "report.md": render_markdown(report), "report.html": render_html(report)}
    return write_texts(folder, texts)


__all__ = ["ParityReport", "write_all", "render_html", "render_markdown"]
