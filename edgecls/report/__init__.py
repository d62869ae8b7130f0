"""Parity report renderers: JSON (machines), Markdown (reviews), HTML with plots (people)."""
from __future__ import annotations

import json

from pathlib import Path

from edgecls.io import atomic_paths
from edgecls.report.html import render_html
from edgecls.report.markdown import render_markdown


def write_all(report, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    texts = {"report.json": json.dumps(report.to_dict(), indent=2, default=float),
             "report.md": render_markdown(report), "report.html": render_html(report)}
    paths = {}
    for name, text in texts.items():
        final = folder / name
        with atomic_paths(final) as (tmp,):
            tmp.write_text(text, encoding="utf-8")
        paths[name] = final
    return paths


__all__ = ["write_all", "render_html", "render_markdown"]
