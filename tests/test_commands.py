"""The commands people compare results with, run as they are run: `edgecls bench`, `edgecls
parity` (with --reference, --limit, -o) and what its report files say; `--calib-size`
really limiting the calibration set; TFLite `--int8-io` from the command line; `edgecls
formats`.

Real artifacts of the digits CNN trained in this session; one of them deliberately broken
(its spec's normalisation is wrong) so the report has a failure to show.
"""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from edgecls import hardware


@pytest.fixture(scope="module")
def miswired(digits_onnx, tmp_path_factory) -> Path:
    """The digits ONNX with a spec that normalises wrongly (mean 0, std 1 on 0..255
    pixels): a real artifact whose predictions are wrong, as a bad export's would be."""
    import shutil

    from edgecls.backends.onnx.container import write_spec
    from edgecls.formats import read_spec
    path = tmp_path_factory.mktemp("miswired") / "miswired.onnx"
    shutil.copyfile(digits_onnx, path)
    write_spec(path, read_spec(digits_onnx).derive(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
    return path


# -- parity -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parity_run(digits_onnx, digits_ir, miswired, tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity")
    proc = run_cli("parity", digits_ir, miswired, "--reference", digits_onnx, "--data", "digits",
                   "--limit", "60", "-o", folder / "report", cwd=folder)
    return proc, folder / "report"


def test_parity_cli_exit_status_and_table(parity_run):
    proc, _ = parity_run
    assert proc.returncode == 1, proc.stderr          # one artifact misses its tolerance
    assert "Traceback" not in proc.stderr
    assert "digits.xml" in proc.stdout and "miswired.onnx" in proc.stdout
    assert "FAIL" in proc.stdout and "pass" in proc.stdout   # the verdict column


def test_parity_report_json(parity_run, digits_onnx):
    _, folder = parity_run
    report = json.loads((folder / "report.json").read_text())
    assert report["passed"] is False
    assert report["data"]["n"] == 60 and report["data"]["labelled"] is True   # --limit 60
    assert report["reference"]["kind"] == "artifact"                          # --reference
    assert report["reference"]["origin"] == str(digits_onnx)
    assert report["reference"]["top1"] > 0.9
    good, bad = report["results"]
    assert good["name"] == "digits.xml" and good["passed"] and good["n"] == 60
    assert good["agreement"] == 1.0 and good["top1_drop"] == 0.0 and not good["failures"]
    assert good["backend"] == "openvino" and good["precision_used"] == "fp32"
    assert bad["name"] == "miswired.onnx" and not bad["passed"]
    assert bad["agreement"] < 0.5 and bad["top1"] < good["top1"] - 0.3
    assert any("agreement" in f or "drop" in f for f in bad["failures"]), bad["failures"]
    assert len(bad["disagreements"]) == round((1 - bad["agreement"]) * 60)
    assert 0 <= bad["mcnemar_p"] < 1e-3 and good["mcnemar_p"] == 1.0


def test_parity_report_markdown(parity_run):
    _, folder = parity_run
    md = (folder / "report.md").read_text()
    assert "**Result: FAIL**" in md and "60 images (labelled; verification images)" in md
    lines = md.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| "))
    # the parity table: the first table (the failing artifact's photo shares come after it)
    table = itertools.takewhile(lambda line: line.startswith("|"), lines[first:])
    rows = [line for line in table if line.startswith("| ")]     # not the |---| line
    header, reference, good, bad = rows[0], rows[1], rows[2], rows[3]
    cells = [re.split(r"(?<!\\)\|", row)[1:-1] for row in rows]   # "\|" stays inside a cell
    assert len({len(c) for c in cells}) == 1                   # every row as wide as the header
    assert "top-1 %" in header and "agree %" in header and r"max\|Δ\|" in header
    assert reference.startswith("| reference | artifact")
    assert good.startswith("| `digits.xml` |") and good.rstrip().endswith("| pass |")
    assert bad.startswith("| `miswired.onnx` |") and bad.rstrip().endswith("| **FAIL** |")
    assert "## Failures" in md and "- miswired.onnx: " in md
    # where the failing artifact departs (each digit is its own photo): a table of its own
    assert "## Where `miswired.onnx` departs" in md and "## Where `digits.xml`" not in md


def test_parity_report_html(parity_run):
    _, folder = parity_run
    html = (folder / "report.html").read_text()
    plots = re.findall(r"<h2>([^<]+)</h2><img src='data:image/png;base64,([A-Za-z0-9+/=]{500,})'",
                       html)
    assert [title for title, _ in plots] == ["Accuracy per artifact", "Logit error distribution"]
    import base64
    for _, data in plots:                                 # real PNG images
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    row = re.search(r"<tr><td>miswired\.onnx</td>.*?</tr>", html).group(0)
    assert "<td class='fail'>FAIL</td>" in row               # the failing artifact is marked
    row = re.search(r"<tr><td>digits\.xml</td>.*?</tr>", html).group(0)
    assert "<td class='pass'>pass</td>" in row
    assert "<span class='fail'>FAIL</span>" in html
    assert html.count("class='thumb'") >= 10             # the images it got wrong, shown


# -- bench ------------------------------------------------------------------------------------------
def test_bench_cli_and_api(digits_onnx, digits_ir, tmp_path):
    proc = run_cli("bench", digits_onnx, digits_ir, "--batch", "1", "4", "--seconds", "0.3",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = [line for line in proc.stdout.splitlines() if "digits." in line]
    assert len(table) == 4                                  # 2 artifacts x 2 batch sizes
    assert sum("onnxruntime" in line for line in table) == 2
    assert sum("openvino" in line for line in table) == 2

    from edgecls.bench import bench
    result = bench([digits_onnx, digits_ir], batch_sizes=[1, 4], seconds=0.3)
    record = result.to_dict()
    assert record["machine"]["int8_isa"] == hardware.cpu().int8_isa   # numbers name their CPU
    rows = record["rows"]
    assert [(r["artifact"], r["batch"]) for r in rows] == [
        ("digits.onnx", 1), ("digits.xml", 1), ("digits.onnx", 4), ("digits.xml", 4)]
    for row, raw in zip(rows, result.rows):
        assert 0 < row["p50_ms"] <= row["p90_ms"]
        assert len(raw.samples) >= 3
        # images per second is what the measured times say
        assert row["throughput"] == pytest.approx(row["batch"] * 1000 / np.mean(raw.samples))


# -- --calib-size ------------------------------------------------------------------------------------
def _quantization_params(path: Path) -> dict[str, np.ndarray]:
    """Every scale and zero point in a quantized ONNX file: what calibration decided."""
    import onnx
    from onnx import numpy_helper
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
            if i.name.endswith(("_scale", "_zero_point"))}


def test_calib_size_limits_the_calibration_set(digits_model, tmp_path):
    """--calib-size 24 calibrates on 24 digits - not more, not others: the 24 images the
    spec names, given alone as the calibration set, give the very same quantization
    parameters, and 64 images give other ones. (The target's recipe as it is, no search:
    the parameters then depend on the calibration images only.)"""
    from edgecls.imaging.datasets import ImageSet, digits
    from edgecls.exporting import export
    from edgecls.formats import read_spec
    model, spec = digits_model

    def int8(name, calib, size):
        return export(model, to="onnx", out=tmp_path / f"{name}.onnx", spec=spec,
                      precision="int8", calib=calib, calib_size=size, check=False,
                      options={"no_search": True})

    limited, more = int8("d24", "digits", 24), int8("d64", "digits", 64)
    ids = read_spec(limited).quantization["calibration_ids"]
    full = digits()
    named = [i for i in full.items if i.digest()[:12] in ids]
    assert len(named) == len(set(ids)) == 24           # 24 distinct, real digits images
    # a stratified draw: every class, 2 or 3 images each
    assert sorted(np.bincount([i.label for i in named], minlength=10)) == [2] * 6 + [3] * 4
    alone = int8("named24", ImageSet("named", named), 24)
    got, want = _quantization_params(alone), _quantization_params(limited)
    assert got.keys() == want.keys() and len(want) > 4
    # equal up to float summation order: the bias correction before quantization averages
    # the same images in another order (measured: at most 1.6e-4 relative); 64 images move
    # the ranges by more than 1%
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-3, err_msg=name)
    other = _quantization_params(more)
    assert any(not np.allclose(other[n], want[n], rtol=1e-2) for n in want)


# -- TFLite --int8-io through the command line -----------------------------------------------------------
def test_tflite_int8_io_from_the_cli(tmp_path, photo_files):
    from edgecls.classifier import Classifier
    from edgecls.formats import read_spec
    out = tmp_path / "sq.int8.tflite"
    proc = run_cli("export", "squeezenet1_1", "--weights", "none", "--to", "tflite", "--int8",
                   "--calib", "photos", "--calib-size", "8", "--int8-io", "--no-search", "-o", out,
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    spec = read_spec(out)
    assert spec.input_dtype == "int8" and spec.precision == "int8"
    assert spec.quantization["calibration_size"] == 8
    with Classifier(out) as clf:
        assert clf.session.describe()["input"].startswith("int8")
        assert clf.session.describe()["output"] == "int8"
        got = clf.probabilities(photo_files["chelsea"])
    # the oracle: LiteRT's own interpreter on the file, with the int8 edges' scale and zero
    # point as the file states them - edgecls must quantize the input and dequantize the
    # output exactly so (random weights: the numbers, not the classes, are what is compared)
    from ai_edge_litert.interpreter import Interpreter

    from edgecls.imaging.preprocess import load_rgb, resize_crop
    interpreter = Interpreter(model_path=str(out))
    interpreter.allocate_tensors()
    [inp], [outp] = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.int8 and outp["dtype"] == np.int8
    rgb = resize_crop(load_rgb(photo_files["chelsea"]), spec).astype(np.float32) / 255
    x = (rgb - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    x = x[None] if spec.layout == "NHWC" else x.transpose(2, 0, 1)[None]
    (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], outp["quantization"]
    interpreter.set_tensor(inp["index"],
                           np.clip(np.round(x / in_scale) + in_zero, -128, 127).astype(np.int8))
    interpreter.invoke()
    logits = (interpreter.get_tensor(outp["index"]).astype(np.float32) - out_zero) * out_scale
    want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(got, want, atol=1e-5)
    from edgecls.imaging.preprocess import preprocess
    from edgecls.formats import open_session
    with open_session(out) as s:     # the logits themselves (softmax forgives a shift)
        np.testing.assert_allclose(s.run(preprocess([photo_files["chelsea"]], s.spec)), logits,
                                   atol=1e-6)
    assert np.ptp(logits) > 10 * out_scale      # not a flat output: the comparison has teeth


def test_formats_lists_each_format_with_what_is_installed_here(tmp_path):
    """`edgecls formats`, run as a user runs it: one row per format with its suffixes and
    precisions (as the README documents them), "installed" saying whether its runtime
    imports here (the oracle: importlib, not edgecls), the pip extra that installs it; every
    export option it lists is one `edgecls export` takes."""
    import importlib.util
    proc = run_cli("formats", cwd=tmp_path, env={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 8 and cells[0]:
            rows[cells[0]] = cells
    documented = {"onnx": (".onnx", "fp32 fp16 int8", "onnxruntime"),
                  "openvino": (".xml", "fp32 fp16 int8", "openvino"),
                  "tflite": (".tflite", "fp32 fp16 int8", "ai_edge_litert"),
                  "tensorrt": (".engine .plan", "fp32 fp16 int8", "tensorrt"),
                  "torch": (".pt2", "fp32", "torch"),
                  "executorch": (".pte", "fp32 int8", "executorch")}
    assert set(documented) <= set(rows), sorted(rows)
    export_help = run_cli("export", "--help", cwd=tmp_path).stdout
    for name, (suffixes, precisions, runtime) in documented.items():
        _, got_suffixes, got_precisions, devices, options, installed, extra, _ = rows[name]
        assert (got_suffixes, got_precisions) == (suffixes, precisions), rows[name]
        assert installed == ("yes" if importlib.util.find_spec(runtime) else "no"), rows[name]
        assert extra == name, rows[name]
        assert ("cpu" in devices.split()) == (name != "tensorrt"), rows[name]  # TensorRT: GPU/DLA
        for flag in options.split():
            assert flag.startswith("--") and flag in export_help, (name, flag)
