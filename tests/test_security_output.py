"""Issue 19, finding 3: text that came from a file (labels, file names, spec fields, error
text) is shown, never obeyed - in report.html (no script), in report.md (no HTML, no broken
table), in the terminal (no rich markup, no raw escape bytes) and in plot labels (no
mathtext, so a `$` in a file name cannot crash the report after the whole run).

Real digits artifacts whose specs carry hostile labels, under hostile file names; the
reference (an FP32 artifact given with --reference) and the candidate (normalising wrongly,
so it disagrees and the page shows thumbnails captioned with both sides' labels) each have
their own hostile labels.
"""
from __future__ import annotations

import copy
import io
import json
import re
import shutil
from html.parser import HTMLParser

import pytest
from conftest import run_cli

#: everything a renderer might obey: HTML, rich markup (an unmatched closing tag crashes
#: rich), a terminal escape, mathtext (valid, and invalid: `$x^$` is a parse error), a
#: Markdown table separator, a newline, Markdown link/code syntax
HOSTILE = "<img src=x onerror=alert(1)> [/oops] \x1b[31m $x^2$ $x^$ a|b\nc [l](javascript:x) `t"
#: the same for a file name (no "/")
HOSTILE_FILE = "<img src=x onerror=alert(1)>[red]\x1b[31m$x^2$$x^$a|b\nc"


def _labels(prefix: str) -> list[str]:
    return [f"{prefix}{i} {HOSTILE}" for i in range(10)]


@pytest.fixture(scope="module")
def hostile(digits_onnx, tmp_path_factory):
    """(reference, candidate, folder): copies of the digits ONNX under hostile names with
    hostile labels; the candidate's normalisation is wrong (mean 0, std 1)."""
    from edgecls.backends.onnx.container import write_spec
    from edgecls.formats import read_spec
    folder = tmp_path_factory.mktemp("hostile")
    spec = read_spec(digits_onnx)
    ref = folder / f"{HOSTILE_FILE}ref.onnx"
    cand = folder / f"{HOSTILE_FILE}cand.onnx"
    for path in (ref, cand):
        shutil.copyfile(digits_onnx, path)
    write_spec(ref, spec.derive(labels=_labels("ref")))
    write_spec(cand, spec.derive(labels=_labels("cand"), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
    return ref, cand, folder


@pytest.fixture(scope="module")
def parity_cli(hostile):
    ref, cand, folder = hostile
    proc = run_cli("parity", cand, "--reference", ref, "--data", "digits", "--limit", "40",
                   "-o", folder / "report", cwd=folder)
    return proc, folder / "report"


@pytest.fixture(scope="module")
def report(hostile):
    """A real ParityReport of the hostile pair (the API, no files written)."""
    from edgecls.verification import parity
    ref, cand, _ = hostile
    return parity([cand], data="digits", reference=ref, limit=40, progress=False)


def _everything_hostile(report):
    """The report with EVERY text field a file could have set made hostile."""
    r = copy.deepcopy(report)
    r.data["name"] = r.data["source"] = HOSTILE
    r.data["machine"] = {**r.data["machine"], "cpu": HOSTILE, "int8_isa": HOSTILE}
    r.reference.update(name=HOSTILE, kind=HOSTILE, origin=HOSTILE)
    for res in r.results:
        res.name = res.path = HOSTILE + ".onnx"
        res.backend = res.device = res.precision_used = res.tolerance = HOSTILE
        res.failures = [HOSTILE]
        res.worst_layers = [{"module": HOSTILE, "op": HOSTILE, "tensor": HOSTILE,
                             "sqnr_db": 3.0, "kernel_sqnr_db": None, "simulated_sqnr_db": 3.0}]
        res.worst_layers_note = HOSTILE
        res.outcome = "fail"             # so the photos holding its KL are shown too
        res.photo_shares = [{"photo": HOSTILE + str(i), "images": 2, "kl_mean": 0.1,
                             "kl_share": 0.5, "agreement": 0.5} for i in range(2)]
        res.calibration_overlap = 1
    r.predictions = {HOSTILE + ".onnx" if k != "reference" else k: v
                     for k, v in r.predictions.items()}
    return r


# -- checks ------------------------------------------------------------------------------------
class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


#: the only elements the report templates make
TEMPLATE_TAGS = {"meta", "title", "style", "h1", "h2", "h3", "p", "b", "span", "table", "tr",
                 "th", "td", "img", "figure", "figcaption", "br", "ul", "li", "code"}


def assert_safe_html(page: str) -> None:
    parser = _Tags()
    parser.feed(page)
    for tag, attrs in parser.tags:
        assert tag in TEMPLATE_TAGS, (tag, attrs)
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "img":     # only the embedded plots and thumbnails
            assert attrs["src"].startswith("data:image/png;base64,"), attrs
    assert "&lt;img src=x onerror=alert(1)&gt;" in page        # shown, as text
    assert "\x1b" not in page


def _cells(row: str) -> list[str]:
    return re.split(r"(?<!\\)\|", row)[1:-1]         # "\|" stays inside a cell


def assert_safe_markdown(md: str) -> None:
    from markdown_it import MarkdownIt
    tables, block = [], []          # runs of consecutive "|" lines
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            tables.append(block)
            block = []
    assert tables
    for table in tables:            # every row as wide as its header, and closed
        assert len({len(_cells(line)) for line in table}) == 1, table
        assert all(line.rstrip().endswith("|") for line in table), table
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    parser = _Tags()
    parser.feed(rendered)
    for tag, attrs in parser.tags:
        assert tag != "img" and not any(a.startswith("on") for a in attrs), (tag, attrs)
        assert not (attrs.get("href") or "").startswith("javascript:"), (tag, attrs)
    assert "<img src=x onerror=alert(1)>" not in re.sub(r"<code>.*?</code>", "", rendered)
    assert "\x1b" not in md


def assert_safe_terminal(text: str) -> None:
    assert "\x1b" not in text, text
    assert "Traceback" not in text


# -- the parity command, as it is run --------------------------------------------------------
def test_parity_cli_survives_hostile_names_and_labels(parity_cli):
    proc, folder = parity_cli
    assert proc.returncode == 1, proc.stderr       # the miswired candidate fails, nothing crashed
    assert_safe_terminal(proc.stdout + proc.stderr)
    assert "[red]" in proc.stdout                   # the name's markup shown, not obeyed
    # the plots got the `$x^$` file names (mathtext would have raised after the whole run)
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.json", "report.md"]


def test_report_html_has_no_script_from_labels(parity_cli):
    _, folder = parity_cli
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert_safe_html(page)
    assert page.count("class='thumb'") >= 5                # captions with both sides' labels
    assert "ref" in page and "cand" in page
    plots = re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]{500,})'>", page)
    assert len(plots) == 2                                 # the bar chart and the histogram


def test_report_markdown_table_holds(parity_cli):
    _, folder = parity_cli
    assert_safe_markdown((folder / "report.md").read_text(encoding="utf-8"))
    json.loads((folder / "report.json").read_text(encoding="utf-8"))


# -- every field of the report, every renderer -----------------------------------------------
def test_every_report_field_is_escaped(report):
    from rich.console import Console

    from edgecls.report import render_html, render_markdown
    from edgecls.report.terminal import print_report
    hostile_report = _everything_hostile(report)
    page, text = render_html(hostile_report), render_markdown(hostile_report)
    assert "departs" in page and "departs" in text       # the photos' section is rendered
    assert_safe_html(page)
    assert_safe_markdown(text)
    buf = io.StringIO()
    print_report(hostile_report, Console(file=buf, width=400, color_system=None))
    out = buf.getvalue()
    assert_safe_terminal(out)
    assert "[/oops]" in out and "\\x1b[31m" in out   # the literal text, the ESC made visible


def test_a_failing_renderer_leaves_no_report_folder(report, tmp_path, monkeypatch):
    import edgecls.report as rep

    def broken(_):
        raise RuntimeError("renderer failed")
    monkeypatch.setattr(rep, "render_html", broken)
    with pytest.raises(RuntimeError, match="renderer failed"):
        rep.write_all(report, tmp_path / "new" / "report")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.md").write_text("before")
    with pytest.raises(RuntimeError, match="renderer failed"):
        rep.write_all(report, tmp_path / "old")
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["report.md"]   # nothing half-new
    assert (tmp_path / "old" / "report.md").read_text() == "before"


# -- the sweep page and table ----------------------------------------------------------------
def _sweep_table():
    from edgecls.sweep.table import Row, SweepTable
    machine = {"cpu": HOSTILE, "cores": 2, "int8_isa": HOSTILE, "arch": HOSTILE, "os": HOSTILE,
               "python": HOSTILE, "int8_flags": [HOSTILE], "u8s8_saturates": False}
    timing = {"machine": machine, "p50_ms": 1.0, "p90_ms": 1.2, "p99_ms": 1.5, "fps_1": 1000.0,
              "fps_batch": 2000.0, "size_mb": 1.0, "peak_rss_mb": 10.0, "stable": True}
    rows = [Row(HOSTILE, HOSTILE + m, 32, HOSTILE + f, "fp32", HOSTILE, True, HOSTILE, 0.9,
                (0.8, 0.95), True, 0.99, 0.1, True, dict(timing, p50_ms=1.0 + i),
                notes=[HOSTILE], errors=[f"export: {HOSTILE}"])
            for i, (m, f) in enumerate([("a", "x"), ("b", "y")])]
    return SweepTable(rows, {"threads": 1, "batch": 8, "seconds": 0.1},
                      {r.machine: r.timing["machine"] for r in rows})


def test_sweep_renderers_escape_every_field(tmp_path):
    from rich.console import Console

    from edgecls.sweep.files import write_sweep
    table = _sweep_table()
    paths = write_sweep(table, tmp_path)
    assert sorted(paths) == ["sweep.csv", "sweep.html", "sweep.json", "sweep.md"]
    page = paths["sweep.html"].read_text(encoding="utf-8")
    assert_safe_html(page)
    assert page.count("<img src='data:image/png;base64,") == 2   # `$x^$` in the plot labels
    assert_safe_markdown(paths["sweep.md"].read_text(encoding="utf-8"))
    buf = io.StringIO()
    table.print(Console(file=buf, width=600, color_system=None))
    assert_safe_terminal(buf.getvalue())
    assert "[/oops]" in buf.getvalue()


# -- info and predict ------------------------------------------------------------------------
def test_info_shows_markup_and_escapes_literally(hostile):
    ref, _, folder = hostile
    proc = run_cli("info", ref, cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert_safe_terminal(proc.stdout + proc.stderr)
    assert "[/oops]" in proc.stdout and "<img src=x onerror=alert(1)>" in proc.stdout
    assert "\\x1b[31m" in proc.stdout                       # the ESC made visible
    assert "[red]" in proc.stdout                           # the file name, in the title


def test_predict_shows_labels_literally(hostile, digits_data):
    import cv2
    ref, _, folder = hostile
    _, _, val, _ = digits_data
    image = folder / f"{HOSTILE_FILE}.png"
    ok, png = cv2.imencode(".png", cv2.cvtColor(val.items[0].rgb(), cv2.COLOR_RGB2BGR))
    image.write_bytes(png.tobytes())
    proc = run_cli("predict", ref, image, "--topk", "10", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert_safe_terminal(proc.stdout + proc.stderr)
    assert proc.stdout.count("[/oops]") == 10 and "\\x1b[31m" in proc.stdout
    assert "[red]" in proc.stdout                           # the image's name, in the title
