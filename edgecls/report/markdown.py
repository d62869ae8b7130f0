"""Markdown rendering of a parity report. Every value that came from a file goes through
md_text (or md_code, for names shown as code): no HTML, link or table cell of its own."""
from __future__ import annotations

from edgecls.report.escape import md_code, md_text
from edgecls.report.model import (PHOTO_SHARE_COLUMNS, PHOTO_SHARE_HEADING, WORST_LAYER_COLUMNS,
                                  ParityResults, columns, departs, machine, role, rows)


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    """Cells already escaped (md_text escapes "|", and a "|" inside a cell such as
    max|Δ| would split it)."""
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"
    return [row([md_text(h) for h in head]), "|" + "---|" * len(head)] + [row(c) for c in body]


def render_markdown(report: ParityResults) -> str:
    d, ref = report.data, report.reference
    t = md_text
    lines = [f"# Parity report: {t(ref['name'])}", "",
             f"Data: **{t(d['name'])}**, {t(d['n'])} images "
             f"({'labelled' if d['labelled'] else 'unlabelled'}; {role(report)}). "
             f"Reference: {t(ref['kind'])} ({t(ref['origin'])}). Machine: {t(machine(report))}.",
             "", f"**Result: {report.outcome.upper()}**", ""]
    shown = columns(report)
    body = []
    for row in rows(report):
        cells = [t(cell) for cell in row.cells]
        for i, c in enumerate(shown):
            if c.key == "artifact" and row.passed is not None:
                cells[i] = md_code(row.cells[i], in_table=True)
            if c.key == "ok" and row.outcome not in (None, "pass"):
                cells[i] = f"**{cells[i]}**"
        body.append(cells)
    lines += _table([c.header for c in shown], body)
    for r in report.results:
        if r.worst_layers:
            lines += ["", f"## Lowest-SQNR tensors of {md_code(r.name)}", "",
                      f"Method: {t(r.worst_layers_note)}", ""]
            lines += _table([h for h, _ in WORST_LAYER_COLUMNS],
                            [[t(cell(w)) for _, cell in WORST_LAYER_COLUMNS] for w in r.worst_layers])
        if departs(r):
            lines += ["", "## " + PHOTO_SHARE_HEADING.format(name=md_code(r.name)), ""]
            lines += _table([h for h, _ in PHOTO_SHARE_COLUMNS],
                            [[t(cell(p)) for _, cell in PHOTO_SHARE_COLUMNS] for p in r.photo_shares])
    if report.failures:
        lines += ["", "## Failures", ""] + [f"- {t(f)}" for f in report.failures]
    if report.undecided:
        lines += ["", "## Inconclusive", ""] + [f"- {t(u)}" for u in report.undecided]
    return "\n".join(lines) + "\n"
