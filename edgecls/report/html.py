"""HTML rendering with plots (matplotlib, embedded as PNG data URIs: one self-contained file)."""
from __future__ import annotations

import base64
import html
import io
import logging

import numpy as np

from edgecls.report.model import WORST_LAYER_COLUMNS, ParityReport, columns, machine, rows

log = logging.getLogger("edgecls")

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.fail{color:#b00;font-weight:bold}.pass{color:#070}
figure{display:inline-block;margin:4px;text-align:center;font-size:12px}img.thumb{width:112px}"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(report) -> list[tuple[str, str]]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: the HTML report has no plots "
                    "(pip install 'edgecls[report]')")
        return []
    out = []
    labelled = report.data["labelled"]
    names = [r.name for r in report.results]
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
    out.append(("Accuracy per artifact" if labelled else "Agreement per artifact", _png(fig)))

    fig, ax = plt.subplots(figsize=(6, 3.2))
    all_err = [e for r in report.results for e in r.sample_abs_error if e > 0]
    bins = np.logspace(np.log10(max(min(all_err), 1e-9)), np.log10(max(all_err)), 40) if all_err else 10
    for r in report.results:
        ax.hist(np.maximum(r.sample_abs_error, 1e-9), bins=bins, alpha=0.5, label=r.name)
    if all_err:
        ax.set_xscale("log")
    ax.set_xlabel("per-image max |logit error| vs reference")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    out.append(("Logit error distribution", _png(fig)))
    return out


def _table(head: list[str], rows_html: list[str]) -> str:
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join(rows_html) + "</table>")


def render_html(report: ParityReport) -> str:
    d, ref = report.data, report.reference
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>parity: {e(ref['name'])}</title>",
             f"<style>{_STYLE}</style><h1>Parity report: {e(ref['name'])}</h1>",
             f"<p>Data <b>{e(d['name'])}</b>, {d['n']} images ({'labelled' if d['labelled'] else 'unlabelled'}); "
             f"reference {e(ref['kind'])} ({e(str(ref['origin']))}); machine {e(machine(report))}. "
             "Result: "
             f"<span class='{'pass' if report else 'fail'}'>{'PASS' if report else 'FAIL'}</span></p>"]
    shown = columns(report)
    lines = []
    for row in rows(report):
        cells = [f"<td>{e(cell)}</td>" for cell in row.cells]
        if row.passed is not None:
            cells[-1] = f"<td class='{'pass' if row.passed else 'fail'}'>{e(row.cells[-1])}</td>"
        lines.append("<tr>" + "".join(cells) + "</tr>")
    parts.append(_table([c.header for c in shown], lines))
    for title, uri in _plots(report):
        parts.append(f"<h2>{e(title)}</h2><img src='{uri}'>")
    for r in report.results:
        if r.worst_layers:
            parts.append(f"<h2>Lowest-SQNR tensors of {e(r.name)}</h2>"
                         f"<p>Method: {e(r.worst_layers_note)}</p>" + _table(
                [h for h, _ in WORST_LAYER_COLUMNS],
                ["<tr>" + "".join(f"<td>{e(cell(w))}</td>" for _, cell in WORST_LAYER_COLUMNS)
                 + "</tr>" for w in r.worst_layers]))
    if report.thumbnails:
        parts.append("<h2>Images where an artifact disagrees with the reference</h2>")
        for i, png in report.thumbnails.items():
            who = [f"{r.name}: {report.predictions.get(r.name, ['?'] * (i + 1))[i]}"
                   for r in report.results if i in r.disagreements]
            caption = f"reference: {report.predictions['reference'][i]}<br>" + "<br>".join(map(e, who))
            uri = "data:image/png;base64," + base64.b64encode(png).decode()
            parts.append(f"<figure><img class='thumb' src='{uri}'><figcaption>{caption}</figcaption></figure>")
    if report.failures:
        parts.append("<h2>Failures</h2><ul>" + "".join(f"<li class='fail'>{e(f)}</li>" for f in report.failures) + "</ul>")
    return "\n".join(parts)
