"""Parity report renderers: JSON (machines), Markdown (reviews), HTML with plots (people)."""
from __future__ import annotations

import json

from pathlib import Path

from edgecls.io import atomic_paths
from edgecls.report.html import render_html
from edgecls.report.markdown import render_markdown


def write_all(report, folder: Path) -> dict[str, Path]:
    """report.{json,md,html} in `folder`, all or none: every text is rendered before
    anything is written, and the three files are renamed into place together (a folder
    made for them goes again when that fails)."""
    texts = {"report.json": json.dumps(report.to_dict(), indent=2, default=float),
             "report.md": render_markdown(report), "report.html": render_html(report)}
    paths = {name: folder / name for name in texts}
    with atomic_paths(*paths.values()) as temps:
        for tmp, text in zip(temps, texts.values()):
            tmp.write_text(text, encoding="utf-8")
    return paths


__all__ = ["write_all", "render_html", "render_markdown"]
