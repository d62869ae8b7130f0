"""The parity table in the terminal (rich). Values that came from a file are rich Text (never
parsed as markup) or escaped into the markup, with control characters made visible."""
from __future__ import annotations

from typing import Any

from edgecls.report.escape import term_markup, term_text
from edgecls.report.model import ParityResults, columns, departs, rows, title
from edgecls.verdict import DECISIVE

_VERDICT = {"pass": "[green]pass[/green]", "fail": "[red]FAIL[/red]",
            "inconclusive": "[yellow]inconclusive[/yellow]"}


def print_report(report: ParityResults, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # the table is wide; let it be rather than wrapping every cell into three lines
    console = console or Console(width=max(Console().width, 170))
    table = Table(title=term_text(title(report)))
    shown = columns(report)
    for c in shown:
        table.add_column(c.header, justify=c.align)
    for row in rows(report):
        cells = [Text.from_markup(_VERDICT[row.outcome]) if c.key == "ok" and row.outcome is not None
                 else term_text(cell) for c, cell in zip(shown, row.cells)]
        table.add_row(*cells)
    console.print(table)
    m = term_markup
    for r in report.results:
        if r.worst_layers:
            worst = ", ".join(f"{w['module']} ({w['sqnr_db']:.1f} dB)" for w in r.worst_layers[:5])
            kind = "kernel" if r.worst_layers[0].get("kernel_sqnr_db") is not None else "simulated"
            console.print(f"  {m(r.name)}: lowest {kind} SQNR: {m(worst)}")
        if departs(r):
            where = ", ".join(f"{p['photo']} ({p['images']} images, KL {p['kl_mean']:.2g}, "
                              f"{100 * p['kl_share']:.0f}%)" for p in r.photo_shares[:3])
            console.print(f"  {m(r.name)}: largest shares of its KL: {m(where)}")
        if r.calibration_overlap:
            console.print(f"  [yellow]{m(r.name)}: {r.calibration_overlap} validation images "
                          "were used for its calibration[/yellow]")
        if r.selection_overlap:
            console.print(f"  [yellow]{m(r.name)}: {r.selection_overlap} validation images "
                          "chose its INT8 recipe: its figures on them are optimistic[/yellow]")
    if report.data.get("calib_overlap"):
        console.print(f"[yellow]{m(report.data['calib_overlap'])} validation images are also in "
                      "--calib[/yellow]")
    for f in report.failures:
        console.print(f"[red bold]FAILED[/red bold] {m(f)}")
    for u in report.undecided:
        console.print(f"[yellow bold]INCONCLUSIVE[/yellow bold] {m(u)}")
    for r in report.results:
        if r.sure_disagreements:
            console.print(f"  [bold]{m(r.name)}[/bold]: {len(r.sure_disagreements)} disagreement(s) "
                          f"where the reference is sure (margin >= {DECISIVE:g}): look at these; "
                          f"{len(r.disagreements) - len(r.sure_disagreements)} where it is unsure")
