"""Markdown rendering of a parity report."""
from __future__ import annotations

from edgecls.report.model import WORST_LAYER_COLUMNS, ParityReport, columns, machine, rows


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    def row(cells: list[str]) -> str:   # a "|" inside a cell (max|Δ|) would split it
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return [row(head), "|" + "---|" * len(head)] + [row(cells) for cells in body]


def render_markdown(report: ParityReport) -> str:
    d, ref = report.data, report.reference
    lines = [f"# Parity report: {ref['name']}", "",
             f"Data: **{d['name']}**, {d['n']} images ({'labelled' if d['labelled'] else 'unlabelled'}). "
             f"Reference: {ref['kind']} ({ref['origin']}). Machine: {machine(report)}.", "",
             f"**Result: {'PASS' if report else 'FAIL'}**", ""]
    shown = columns(report)
    body = []
    for row in rows(report):
        cells = list(row.cells)
        for i, c in enumerate(shown):
            if c.key == "artifact" and row.passed is not None:
                cells[i] = f"`{cells[i]}`"
            if c.key == "ok" and row.passed is False:
                cells[i] = f"**{cells[i]}**"
        body.append(cells)
    lines += _table([c.header for c in shown], body)
    for r in report.results:
        if r.worst_layers:
            lines += ["", f"## Lowest-SQNR tensors of `{r.name}`", "",
                      f"Method: {r.worst_layers_note}", ""]
            lines += _table([h for h, _ in WORST_LAYER_COLUMNS],
                            [[cell(w) for _, cell in WORST_LAYER_COLUMNS] for w in r.worst_layers])
    if report.failures:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in report.failures]
    return "\n".join(lines) + "\n"
