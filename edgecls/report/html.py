"""HTML rendering with plots (matplotlib, embedded as PNG data URIs: one self-contained file)."""
from __future__ import annotations

import base64
import io
import logging

import numpy as np

from edgecls.errors import first_line
from edgecls.report.escape import html_text, plain_text_plots, plot_text
from edgecls.report.model import (PHOTO_SHARE_COLUMNS, PHOTO_SHARE_HEADING, WORST_LAYER_COLUMNS,
                                  ParityResults, columns, departs, machine, role, rows)

log = logging.getLogger("edgecls")

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.fail{color:#b00;font-weight:bold}.pass{color:#070}.inconclusive{color:#a60;font-weight:bold}
figure{display:inline-block;margin:4px;text-align:center;font-size:12px}img.thumb{width:112px}"""


def figure_uri(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(report) -> list[tuple[str, str]]:
    try:
        import matplotlib
        matplotlib.use("Agg")
    except ImportError:
        log.warning("matplotlib is not installed: the HTML report has no plots "
                    "(pip install 'edgecls[report]')")
        return []
    try:
        with plain_text_plots():     # names from files are labels here: no mathtext, no LaTeX
            return _draw(report)
    except Exception as e:  # the plots illustrate the tables: never lose the report to them
        log.warning("the HTML report has no plots: %s", first_line(e))
        return []


def _draw(report) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt
    out = []
    labelled = report.data["labelled"]
    names = [plot_text(r.name) for r in report.results]
    vals = [(r.top1 if labelled else r.agreement) for r in report.results]
    cis = [(r.top1_ci if labelled else r.agreement_ci) for r in report.results]
    if labelled:
        names, vals, cis = ["reference"] + names, [report.reference["top1"]] + vals, \
            [report.reference["top1_ci"]] + cis
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(names)), 3.2))
    err = np.array([[v - c[0], c[1] - v] for v, c in zip(vals, cis)]).T * 100
    ax.bar(range(len(names)), np.array(vals) * 100, yerr=err, capsize=4,
           color=["#888"] * (len(names) - len(report.results)) + ["#4c72b0"] * len(report.results))
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("top-1 accuracy %" if labelled else "top-1 agreement with reference %")
    ax.set_ylim(max(0, min(vals) * 100 - 15), 100.5)
    ax.set_title("with 95% bootstrap confidence intervals")
    out.append(("Accuracy per artifact" if labelled else "Agreement per artifact",
                figure_uri(fig)))

    fig, ax = plt.subplots(figsize=(6, 3.2))
    all_err = [e for r in report.results for e in r.sample_abs_error if e > 0]
    bins = np.logspace(np.log10(max(min(all_err), 1e-9)), np.log10(max(all_err)), 40) if all_err else 10
    for r in report.results:
        ax.hist(np.maximum(r.sample_abs_error, 1e-9), bins=bins, alpha=0.5,
                label=plot_text(r.name))
    if all_err:
        from matplotlib.ticker import FuncFormatter, NullFormatter
        ax.set_xscale("log")
        # a log axis labels its ticks in mathtext ($10^{-1}$), which plain_text_plots turns
        # off: the page showed "$\mathdefault{10^{-1}}$"; plain numbers instead
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("per-image max |logit error| vs reference")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    out.append(("Logit error distribution", figure_uri(fig)))
    return out


def html_table(head: list[str], rows_html: list[str]) -> str:
    """A table of escaped headers over rows that are HTML already (each value in them
    escaped by its renderer)."""
    return ("<table><tr>" + "".join(f"<th>{html_text(h)}</th>" for h in head) + "</tr>"
            + "".join(rows_html) + "</table>")


def render_html(report: ParityResults) -> str:
    """Every value that came from a file (names, labels, paths, notes, errors) goes through
    html_text; only the template's own markup is not escaped."""
    d, ref = report.data, report.reference
    e = html_text
    verdict = f"<span class='{report.outcome}'>{report.outcome.upper()}</span>"
    parts = [f"<!doctype html><meta charset='utf-8'><title>parity: {e(ref['name'])}</title>",
             f"<style>{STYLE}</style><h1>Parity report: {e(ref['name'])}</h1>",
             f"<p>Data <b>{e(d['name'])}</b>, {e(d['n'])} images "
             f"({'labelled' if d['labelled'] else 'unlabelled'}; {e(role(report))}); "
             f"reference {e(ref['kind'])} ({e(ref['origin'])}); machine {e(machine(report))}. "
             f"Result: {verdict}</p>"]
    shown = columns(report)
    lines = []
    for row in rows(report):
        cells = [f"<td>{e(cell)}</td>" for cell in row.cells]
        if row.outcome is not None:
            cells[-1] = f"<td class='{row.outcome}'>{e(row.cells[-1])}</td>"
        lines.append("<tr>" + "".join(cells) + "</tr>")
    parts.append(html_table([c.header for c in shown], lines))
    for title, uri in _plots(report):
        parts.append(f"<h2>{e(title)}</h2><img src='{uri}'>")
    for r in report.results:
        if r.worst_layers:
            parts.append(f"<h2>Lowest-SQNR tensors of {e(r.name)}</h2>"
                         f"<p>Method: {e(r.worst_layers_note)}</p>" + html_table(
                [h for h, _ in WORST_LAYER_COLUMNS],
                ["<tr>" + "".join(f"<td>{e(cell(w))}</td>" for _, cell in WORST_LAYER_COLUMNS)
                 + "</tr>" for w in r.worst_layers]))
        if departs(r):
            parts.append(f"<h2>{PHOTO_SHARE_HEADING.format(name=e(r.name))}</h2>"
                         + html_table([h for h, _ in PHOTO_SHARE_COLUMNS],
                                      ["<tr>" + "".join(f"<td>{e(cell(p))}</td>"
                                                        for _, cell in PHOTO_SHARE_COLUMNS)
                                       + "</tr>" for p in r.photo_shares]))
    if report.thumbnails:
        margins = report.data.get("reference_margins") or {}
        top2 = report.predictions.get("reference_top2") or []
        sure = {i for r in report.results for i in r.sure_disagreements}
        for heading, keep in (("Disagreements where the reference is sure: look at these",
                               lambda i: i in sure),
                              ("Disagreements where the reference is unsure (its top two are "
                               "close: these measure the image more than the artifact)",
                               lambda i: i not in sure)):
            shown_here = [i for i in report.thumbnails if keep(i)]
            if not shown_here:
                continue
            parts.append(f"<h2>{e(heading)}</h2>")
            for i in shown_here:
                said = [("reference", report.predictions["reference"][i])] + [
                    (r.name, report.predictions.get(r.name, ["?"] * (i + 1))[i])
                    for r in report.results if i in r.disagreements]
                caption = "<br>".join(f"{e(who)}: {e(label)}" for who, label in said)
                if i < len(top2) and str(i) in margins:
                    caption += (f"<br>reference top-2: {e(top2[i])}, margin "
                                f"{e(f'{margins[str(i)]:.3f}')}")
                uri = "data:image/png;base64," + base64.b64encode(report.thumbnails[i]).decode()
                parts.append(f"<figure><img class='thumb' src='{uri}'>"
                             f"<figcaption>{caption}</figcaption></figure>")
    if report.failures:
        parts.append("<h2>Failures</h2><ul>" + "".join(f"<li class='fail'>{e(f)}</li>" for f in report.failures) + "</ul>")
    if report.undecided:
        parts.append("<h2>Inconclusive</h2><ul>" + "".join(
            f"<li class='inconclusive'>{e(u)}</li>" for u in report.undecided) + "</ul>")
    return "\n".join(parts)
