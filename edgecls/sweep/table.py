"""The sweep table: one row per cell, in the layout of the classic model-zoo table (family
rows; model, resolution, accuracy, FPS at batch 1 and N, latency percentiles, size, memory,
drop vs FP32), one table per kind of machine. The columns are defined here once; Markdown,
CSV, JSON, HTML (with plots) and the terminal only lay them out.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any, Callable

from edgecls.report.escape import md_text, term_text
from edgecls.sweep.plan import BASELINE
from edgecls.verdict import FAIL, INCONCLUSIVE, PASS


@dataclass
class Row:
    family: str
    model: str
    resolution: int
    format: str
    precision: str
    recipe: str
    requested: bool
    artifact: str | None
    accuracy: float | None          # top-1 with labelled data, else agreement with FP32
    accuracy_ci: tuple[float, float] | None
    labelled: bool
    top5: float | None
    drop: float | None              # points: of top-1 (labelled), of agreement (unlabelled)
    passed: bool | None
    timing: dict[str, Any] | None
    outcome: str | None = None      # the parity verdict: pass / fail / inconclusive
    kl: float | None = None         # mean KL(reference || artifact) on the sweep's data
    speedup: float | None = None    # ORT FP32's p50 / this p50, same model, same machine
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)     # "<stage>: <one line>"

    @property
    def machine(self) -> str:
        return machine_name(self.timing["machine"]) if self.timing else ""

    def t(self, key: str) -> Any:
        return self.timing.get(key) if self.timing else None


def machine_name(info: dict[str, Any]) -> str:
    return f"{info['cpu']}, {info['cores']} cores, {info['int8_isa']}"


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _accuracy(r: Row) -> str:
    if r.accuracy is None:
        return "-"
    ci = f" [{100 * r.accuracy_ci[0]:.1f}, {100 * r.accuracy_ci[1]:.1f}]" if r.accuracy_ci else ""
    return f"{100 * r.accuracy:.1f}{ci}"


#: the parity verdict as the table shows it (a fail in capitals: it is what a reader looks for)
_VERDICTS = {PASS: "pass", FAIL: "FAIL", INCONCLUSIVE: "inconclusive"}


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    cell: Callable[[Row], str]
    value: Callable[[Row], Any]            # for CSV / JSON


COLUMNS = (
    Column("family", "family", lambda r: r.family, lambda r: r.family),
    Column("model", "model", lambda r: r.model, lambda r: r.model),
    Column("resolution", "res", lambda r: str(r.resolution), lambda r: r.resolution),
    Column("format", "format", lambda r: r.format, lambda r: r.format),
    Column("precision", "precision", lambda r: r.precision, lambda r: r.precision),
    Column("calib_method", "calib", lambda r: r.recipe or "-", lambda r: r.recipe or None),
    Column("accuracy", "acc % [95% CI]", _accuracy, lambda r: r.accuracy),
    Column("top5", "top-5 %", lambda r: _num(r.top5 and 100 * r.top5, ".1f"), lambda r: r.top5),
    Column("drop", "drop pt", lambda r: _num(r.drop, "+.2f"), lambda r: r.drop),
    Column("fps_1", "FPS b1", lambda r: _num(r.t("fps_1"), ".1f"), lambda r: r.t("fps_1")),
    Column("fps_batch", "FPS bN", lambda r: _num(r.t("fps_batch"), ".1f"),
           lambda r: r.t("fps_batch")),
    Column("p50_ms", "p50 ms", lambda r: _num(r.t("p50_ms"), ".2f"), lambda r: r.t("p50_ms")),
    Column("p90_ms", "p90 ms", lambda r: _num(r.t("p90_ms"), ".2f"), lambda r: r.t("p90_ms")),
    Column("p99_ms", "p99 ms", lambda r: _num(r.t("p99_ms"), ".2f"), lambda r: r.t("p99_ms")),
    Column("speedup", "vs ORT FP32", lambda r: _num(r.speedup, ".2f") + ("x" if r.speedup else ""),
           lambda r: r.speedup),
    Column("size_mb", "size MB", lambda r: _num(r.t("size_mb"), ".1f"), lambda r: r.t("size_mb")),
    Column("peak_rss_mb", "peak RSS MB", lambda r: _num(r.t("peak_rss_mb"), ".0f"),
           lambda r: r.t("peak_rss_mb")),
    Column("kl", "KL", lambda r: _num(r.kl, ".4f"), lambda r: r.kl),
    Column("verdict", "verdict", lambda r: _VERDICTS.get(r.outcome, "-"), lambda r: r.outcome),
    Column("notes", "notes", lambda r: "; ".join(r.notes + r.errors),
           lambda r: "; ".join(r.notes + r.errors)),
)


@dataclass
class SweepTable:
    rows: list[Row]
    settings: dict[str, Any]
    machines: dict[str, dict[str, Any]]          # name -> hardware.describe() of the timings

    @classmethod
    def of(cls, results, cache, settings: dict[str, Any]) -> "SweepTable":
        rows = [_row(r, cache) for r in results]
        families = list(dict.fromkeys(r.family for r in rows))
        rows.sort(key=lambda r: families.index(r.family))     # family rows (a stable sort)
        machines = {machine_name(r.timing["machine"]): r.timing["machine"]
                    for r in rows if r.timing}
        base = {(r.model, r.machine): r for r in rows if (r.format, r.precision) == BASELINE}
        for r in rows:
            b = base.get((r.model, r.machine))
            if r.timing and b and b.timing:
                r.speedup = round(b.timing["p50_ms"] / r.timing["p50_ms"], 2)
        return cls(rows, settings, machines)

    def groups(self) -> list[tuple[str, list[Row]]]:
        """(machine, rows): one table per kind of machine; untimed rows go with the first."""
        names = list(self.machines) or [""]
        return [(m, [r for r in self.rows if r.machine == m or (i == 0 and not r.machine)])
                for i, m in enumerate(names)]

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.errors]

    # -- renderers ---------------------------------------------------------------------------
    def title(self) -> str:
        s = self.settings
        return (f"edgecls sweep: {len({r.model for r in self.rows})} models, {len(self.rows)} "
                f"cells; {s['threads']} threads, batch N = {s['batch']}, ~{s['seconds']:g} s "
                f"per timing, each cell timed alone")

    def markdown(self) -> str:
        """Every value from a cell's files or the cache goes through md_text."""
        t = md_text
        lines = [f"# {t(self.title())}", "", t(LEGEND), ""]
        for machine, rows in self.groups():
            info = self.machines.get(machine)
            lines += [f"## {t(machine or 'not timed')}", ""]
            if info:
                lines += [f"`edgecls hw`: {t(hw_line(info))}", ""]
            lines += ["| " + " | ".join(t(c.header) for c in COLUMNS) + " |",
                      "|" + "---|" * len(COLUMNS)]
            previous = None
            for r in rows:
                cells = [t(c.cell(r)) for c in COLUMNS]
                if r.family == previous:           # family rows, as in the source table
                    cells[0] = ""
                previous = r.family
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        return "\n".join(lines)

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["machine", "int8_isa"] + [c.key for c in COLUMNS])
        for r in self.rows:
            isa = r.timing["machine"]["int8_isa"] if r.timing else ""
            writer.writerow([r.machine, isa] + ["" if c.value(r) is None else c.value(r)
                                                for c in COLUMNS])
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "machines": self.machines,
                "columns": {c.key: c.header for c in COLUMNS},
                "rows": [{"machine": r.machine, **{c.key: c.value(r) for c in COLUMNS},
                          "accuracy_ci": r.accuracy_ci, "labelled": r.labelled,
                          "requested": r.requested, "artifact": r.artifact, "timing": r.timing}
                         for r in self.rows]}

    def print(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
        console = console or Console(width=max(Console().width, 200))
        for machine, rows in self.groups():
            table = Table(title=Text("\n").join([term_text(self.title()), term_text(machine)]),
                          caption=LEGEND)
            for c in COLUMNS:
                table.add_column(c.header, justify="left" if c.key in ("family", "model",
                                                                       "notes") else "right")
            for r in rows:
                table.add_row(*[term_text(c.cell(r)) for c in COLUMNS],
                              style="red" if r.errors else None)
            console.print(table)


LEGEND = ("acc: top-1 accuracy with labelled data, else top-1 agreement with the PyTorch FP32 "
          "model, with 95% bootstrap CIs; '-' for random weights (--weights none), where only "
          "speed, size and memory mean anything. drop: points below FP32 PyTorch (top-1 with "
          "labels, agreement without). FPS b1 = 1000 / p50 at batch 1; FPS bN: batch N. "
          "vs ORT FP32: its p50 over this one, same model, same machine, same run (> 1: "
          "faster). peak RSS: the timing process's peak over what it held before the runtime.")


def hw_line(info: dict[str, Any]) -> str:
    flags = " ".join(info.get("int8_flags", [])) or "-"
    return (f"{info['cpu']} ({info['arch']}, {info['cores']} cores), int8 isa "
            f"{info['int8_isa']}{' (u8*s8 saturates)' if info.get('u8s8_saturates') else ''}, "
            f"flags {flags}, {info['os']}, python {info['python']}")


def _row(result, cache) -> Row:
    c, made, checked, timing = result.cell, result.export or {}, result.parity or {}, result.timing
    labelled = bool(checked.get("labelled"))
    accuracy = checked.get("top1") if labelled else checked.get("agreement")
    ci = checked.get("top1_ci") if labelled else checked.get("agreement_ci")
    drop = (checked.get("top1_drop") if labelled
            else None if accuracy is None else round(100 * (1 - accuracy), 2))
    notes = []
    if not c.requested:
        notes.append("baseline")
    errors = [f"{stage}: {value['error']}" for stage, value
              in (("export", made), ("parity", checked), ("timing", timing or {}))
              if "error" in value]
    if "skipped" in checked or made.get("trained") is False:
        notes.append("random weights")
    if made.get("recipe") and c.precision == "int8":
        notes.append(f"recipe: {made['recipe']}")
    if timing and "error" not in timing and not timing.get("stable"):
        notes.append("timing noisy")
    artifact = result.artifact(cache)
    return Row(c.family, c.model, c.resolution, c.format, c.precision, c.recipe, c.requested,
               str(artifact) if artifact else None, accuracy, tuple(ci) if ci else None,
               labelled, checked.get("top5") if labelled else None, drop, checked.get("passed"),
               timing if timing and "error" not in timing else None,
               outcome=_outcome(checked), kl=checked.get("kl"), notes=notes, errors=errors)


def _outcome(checked: dict[str, Any]) -> str | None:
    """The verdict of a parity entry; an entry cached before verdicts had three outcomes
    has only passed / not passed."""
    if "outcome" in checked:
        return checked["outcome"]
    return None if "passed" not in checked else PASS if checked["passed"] else FAIL


__all__ = ["SweepTable", "Row", "COLUMNS", "machine_name"]
