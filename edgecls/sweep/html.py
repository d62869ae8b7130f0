"""The sweep as one self-contained HTML page: the tables, then per machine an accuracy vs
latency scatter with each backend's Pareto front, one panel per precision, and FPS per model
(the only plot with meaning when the weights are random)."""
from __future__ import annotations

import logging

from edgecls.errors import first_line
from edgecls.report.escape import html_text, plain_text_plots, plot_text
from edgecls.report.html import STYLE, figure_uri, html_table
from edgecls.sweep.table import COLUMNS, LEGEND, Row, hw_line

log = logging.getLogger("edgecls")
MARKERS = "osD^vP*X"


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both latency (lower) and accuracy (higher), by
    latency."""
    front, best = [], float("-inf")
    for latency, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((latency, accuracy))
            best = accuracy
    return front


def _plots(rows: list[Row]) -> list[tuple[str, str]]:
    try:
        import matplotlib
        matplotlib.use("Agg")
    except ImportError:
        log.warning("matplotlib is not installed: the sweep page has no plots "
                    "(pip install 'edgecls[report]')")
        return []
    try:
        with plain_text_plots():     # model names are labels here: no mathtext, no LaTeX
            return _draw(rows)
    except Exception as e:  # the plots illustrate the tables: never lose the page to them
        log.warning("the sweep page has no plots: %s", first_line(e))
        return []


def _draw(rows: list[Row]) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    timed = [r for r in rows if r.timing]
    formats = sorted({r.format for r in timed})
    precisions = sorted({r.precision for r in timed})
    out = []
    scored = [r for r in timed if r.accuracy is not None]
    if scored:
        fig, axes = plt.subplots(1, len(precisions), figsize=(5 * len(precisions), 4),
                                 squeeze=False, sharey=True)
        for ax, precision in zip(axes[0], precisions):
            for i, fmt in enumerate(formats):
                pts = [(r.timing["p50_ms"], 100 * r.accuracy) for r in scored
                       if r.format == fmt and r.precision == precision]
                if not pts:
                    continue
                line = ax.scatter(*zip(*pts), marker=MARKERS[i % len(MARKERS)],
                                  label=plot_text(fmt))
                ax.plot(*zip(*pareto(pts)), color=line.get_facecolor()[0], alpha=0.6)
            for r in scored:
                if r.precision == precision:
                    ax.annotate(plot_text(r.model), (r.timing["p50_ms"], 100 * r.accuracy),
                                fontsize=6)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())    # no crowded minor labels
            ax.set_xlabel("batch-1 p50 latency, ms (log)")
            ax.set_title(plot_text(precision))
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("top-1 % (labelled) or agreement with FP32 %")
        out.append(("Accuracy vs latency, Pareto front per backend", figure_uri(fig)))
    models = list(dict.fromkeys(r.model for r in timed))
    series = list(dict.fromkeys((r.format, r.precision) for r in timed))
    if models:
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(models) * max(1, len(series)) / 3), 4))
        width = 0.8 / len(series)
        for j, (fmt, precision) in enumerate(series):
            fps = {r.model: r.timing["fps_1"] for r in timed
                   if r.format == fmt and r.precision == precision}
            ax.bar([i + j * width for i, m in enumerate(models) if m in fps],
                   [fps[m] for m in models if m in fps], width,
                   label=plot_text(f"{fmt} {precision}"))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))],
                      [plot_text(m) for m in models], rotation=30,
                      ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("FPS at batch 1 (log)")
        ax.legend(fontsize=7, ncol=2)
        out.append(("FPS at batch 1 per model", figure_uri(fig)))
    return out


def render_html(table) -> str:
    """Every value that came from a file or the cache goes through html_text."""
    e = html_text
    parts = [f"<!doctype html><meta charset='utf-8'><title>{e(table.title())}</title>",
             f"<style>{STYLE}</style><h1>{e(table.title())}</h1><p>{e(LEGEND)}</p>"]
    for machine, rows in table.groups():
        info = table.machines.get(machine)
        parts.append(f"<h2>{e(machine or 'not timed')}</h2>")
        if info:
            parts.append(f"<p><code>edgecls hw</code>: {e(hw_line(info))}</p>")
        body = ["<tr>" + "".join(f"<td{' class=fail' if c.key == 'notes' and r.errors else ''}>"
                                 f"{e(c.cell(r))}</td>" for c in COLUMNS) + "</tr>" for r in rows]
        parts.append(html_table([c.header for c in COLUMNS], body))
        for title, uri in _plots(rows):
            parts.append(f"<h3>{e(title)}</h3><img src='{uri}'>")
    return "\n".join(parts)


__all__ = ["render_html", "pareto"]
