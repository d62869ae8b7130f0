"""Markdown rendering of a parity report."""
from __future__ import annotations


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(ci):
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def render_markdown(report) -> str:
    d, ref = report.data, report.reference
    lines = [f"# Parity report: {ref['name']}", "",
             f"Data: **{d['name']}**, {d['n']} images ({'labelled' if d['labelled'] else 'unlabelled'}). "
             f"Reference: {ref['kind']} ({ref['origin']}).", "",
             f"**Result: {'PASS' if report else 'FAIL'}**", ""]
    if d["labelled"]:
        lines += [f"Reference top-1: {_pct(ref['top1'])}{_ci(ref.get('top1_ci'))}, "
                  f"top-5: {_pct(ref['top5'])}", ""]
    head = ["artifact", "backend/device", "precision"]
    if d["labelled"]:
        head += ["top-1 [95% CI]", "top-5", "drop (pt)", "McNemar p"]
    head += ["agreement [95% CI]", "cosine min", "KL mean", "max abs", "latency ms", "tolerance", "pass"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.results:
        row = [f"`{r.name}`", f"{r.backend}/{r.device}", r.precision_used]
        if d["labelled"]:
            row += [f"{_pct(r.top1)}{_ci(r.top1_ci)}", _pct(r.top5), f"{r.top1_drop:+.2f}",
                    f"{r.mcnemar_p:.3g}"]
        row += [f"{_pct(r.agreement)}{_ci(r.agreement_ci)}", f"{r.cosine_min:.5f}",
                f"{r.kl_mean:.2e}", f"{r.max_abs:.3g}", f"{r.latency_ms:.2f}", r.tolerance,
                "yes" if r.passed else "**NO**"]
        lines.append("| " + " | ".join(row) + " |")
    for r in report.results:
        if r.worst_layers:
            lines += ["", f"## Lowest-SQNR tensors of `{r.name}`", "",
                      "| torch module | op | tensor | SQNR vs FP32 (dB) |", "|---|---|---|---|"]
            lines += [f"| `{w['module']}` | {w['op']} | `{w['tensor']}` | {w['sqnr_db']:.1f} |"
                      for w in r.worst_layers]
    if report.failures:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in report.failures]
    return "\n".join(lines) + "\n"
