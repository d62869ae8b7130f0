"""The parity table in the terminal (rich)."""
from __future__ import annotations

from typing import Any


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _ci(ci: Any) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def print_report(report, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    # the table is wide; let it be rather than wrapping every cell into three lines
    console = console or Console(width=max(Console().width, 170))
    d, ref = report.data, report.reference
    title = (f"parity on {d['name']} ({d['n']} images, {'labelled' if d['labelled'] else 'unlabelled'})"
             f" vs {ref['kind']} reference {ref['name']}")
    labelled = d["labelled"]
    table = Table(title=title)
    for col in ["artifact", "backend", "prec", "top-1 % [95% CI]" if labelled else None,
                "drop pt" if labelled else None, "McNemar p" if labelled else None,
                "agree % [95% CI]", "cos min", "KL", "max|Δ|", "ms", "tolerance", "ok"]:
        if col:
            table.add_column(col, justify="left" if col in ("artifact", "backend", "tolerance") else "right")
    if labelled:
        table.add_row("reference", ref["kind"], "fp32", f"{_pct(ref['top1'])}{_ci(ref.get('top1_ci'))}",
                      "", "", "", "", "", "", "", "", "")
    for r in report.results:
        row = [r.name, f"{r.backend}/{r.device}", r.precision_used]
        if labelled:
            row += [f"{_pct(r.top1)}{_ci(r.top1_ci)}", f"{r.top1_drop:+.2f}", f"{r.mcnemar_p:.3g}"]
        row += [f"{_pct(r.agreement)}{_ci(r.agreement_ci)}", f"{r.cosine_min:.4f}", f"{r.kl_mean:.2e}",
                f"{r.max_abs:.3g}", f"{r.latency_ms:.2f}", r.tolerance,
                "[green]yes[/green]" if r.passed else "[red]NO[/red]"]
        table.add_row(*row)
    console.print(table)
    for r in report.results:
        if r.worst_layers:
            worst = ", ".join(f"{w['module']} ({w['sqnr_db']:.1f} dB)" for w in r.worst_layers[:5])
            console.print(f"  {r.name}: lowest-SQNR layers: {worst}")
        if r.calibration_overlap:
            console.print(f"  [yellow]{r.name}: {r.calibration_overlap} validation images were "
                          "used for its calibration[/yellow]")
    if d.get("calib_overlap"):
        console.print(f"[yellow]{d['calib_overlap']} validation images are also in --calib[/yellow]")
    for f in report.failures:
        console.print(f"[red bold]FAILED[/red bold] {f}")
