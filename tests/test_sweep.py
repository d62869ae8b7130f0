"""edgecls sweep on a local Ray (few CPUs, no dashboard) and `--to best`.

One sweep, shared by the tests: the digits CNN trained in the session (real labels: top-1
with CIs), MobileNet v3 small at 32 px with random weights (accuracy '-': speed only), and
a model torch.export cannot trace (its cells must fail one line each, not the sweep); ONNX
and OpenVINO, FP32 and INT8, a fraction of a second of timing per cell.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import onnx
import pytest
from conftest import built_once

import openvino  # noqa: E402,F401  (dev dependencies: a broken install fails, never skips)
import ray  # noqa: E402,F401

SECONDS = 0.3


def _write_images(items, folder, labelled: bool):
    for i, item in enumerate(items):
        sub = folder / str(item.label) if labelled else folder
        sub.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(sub / f"{i}.png"), cv2.cvtColor(item.rgb(), cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="module")
def ray_local():
    from edgecls.sweep.runner import TIMING_RESOURCE
    ray.init(num_cpus=2, resources={TIMING_RESOURCE: 1}, include_dashboard=False,
             log_to_driver=False, object_store_memory=256 * 2 ** 20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def digits_folders(digits_data, tmp_path_factory):
    def build(folder: Path):
        _, calib, val, _ = digits_data
        _write_images(calib.items[:64], folder / "calib", labelled=False)
        _write_images(val.items, folder / "val", labelled=True)

    root = built_once(tmp_path_factory, "sweep-digits-folders", build)
    return root / "calib", root / "val"


def _untraceable():
    import torch
    from torch import nn

    from conftest import digits_spec

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            y = self.fc(x.flatten(1))
            return y if y.max() > 0 else -y       # data-dependent: torch.export refuses it

    torch.manual_seed(0)
    return Untraceable().eval(), digits_spec().derive(name="untraceable",
                                                      architecture="tests.Untraceable")


def _small_mobilenet():
    from edgecls import zoo
    model, spec = zoo.build("mobilenet_v3_small", "none", num_classes=10,
                            labels=[str(i) for i in range(10)])
    return model, spec.derive(name="mnv3s_32", input_size=(32, 32), resize=32)


@pytest.fixture(scope="module")
def swept(request, digits_model, digits_folders, tmp_path_factory):
    """The sweep, run once per session on the first worker's Ray (built_once); every worker
    gets its own copy of the output folder (test_resume_skips_finished_cells changes it) and
    the table the sweep returned (pickled beside it)."""
    import pickle
    import shutil

    from edgecls.sweep import sweep
    calib, val = digits_folders
    args = dict(models=[digits_model, _small_mobilenet(), _untraceable()],
                to=("onnx", "openvino"), precisions=("fp32", "int8"), calib=calib, calib_size=48,
                data=val, threads=1, batch=4, seconds=SECONDS, progress=False)

    def build(folder: Path):
        request.getfixturevalue("ray_local")
        table = sweep(**args, out=folder / "sweep")
        (folder / "table.pickle").write_bytes(pickle.dumps(table))

    shared = built_once(tmp_path_factory, "sweep", build)
    out = tmp_path_factory.mktemp("sweep")
    shutil.copytree(shared / "sweep", out, dirs_exist_ok=True)
    return pickle.loads((shared / "table.pickle").read_bytes()), {**args, "out": out}


def _row(table, model, fmt, precision):
    return next(r for r in table.rows if (r.model, r.format, r.precision) == (model, fmt, precision))


def test_sweep_table_has_sane_values(swept):
    table, args = swept
    assert len(table.rows) == 12 and table.settings["cells_run"] == 12
    for name in ("digits_cnn", "mnv3s_32"):
        for fmt in ("onnx", "openvino"):
            for precision in ("fp32", "int8"):
                r = _row(table, name, fmt, precision)
                t = r.timing
                assert t is not None, r.notes
                assert 0 < t["p50_ms"] <= t["p90_ms"] <= t["p99_ms"]
                assert t["batch"] == 4 and t["threads"] == 1 and t["runs"] >= 10
                assert t["size_mb"] > 0 and t["peak_rss_mb"] > 0
                assert t["machine"]["int8_isa"]
                # every cell of a model whose ORT FP32 was timed gets a ratio (its value is
                # checked on hand-made timings in test_speedup_is_the_baseline_p50_over_the_cells)
                assert r.speedup is not None
    # real accuracy on the labelled digits, with confidence intervals around it
    fp32 = _row(table, "digits_cnn", "onnx", "fp32")
    assert fp32.labelled and fp32.accuracy > 0.9 and fp32.top5 >= fp32.accuracy
    assert fp32.accuracy_ci[0] <= fp32.accuracy <= fp32.accuracy_ci[1]
    assert abs(fp32.drop) < 0.5 and fp32.passed
    for fmt in ("onnx", "openvino"):
        int8 = _row(table, "digits_cnn", fmt, "int8")
        assert int8.accuracy > 0.85 and int8.drop < 5
    # INT8 is the smaller file. Not asked of the digits CNN's OpenVINO IR: its weights are
    # 0.09 MB, the largest layer (the classifier, 80 KB) stays in float, and an IR converted
    # from ONNX Runtime's QDQ model (the search's choice on a VNNI CPU) spends 0.05 MB of XML
    # on its Q/DQ nodes (0.145 vs 0.126 MB FP32; EfficientNet-Lite0: 9.3 vs 18.5 MB)
    int8 = _row(table, "digits_cnn", "onnx", "int8")
    assert int8.timing["size_mb"] < _row(table, "digits_cnn", "onnx", "fp32").timing["size_mb"]
    # random weights: timed, but no accuracy
    assert _row(table, "mnv3s_32", "openvino", "int8").accuracy is None
    assert "random weights" in _row(table, "mnv3s_32", "onnx", "int8").notes


def test_failing_cells_are_recorded_not_fatal(swept):
    table, _ = swept
    onnx = [r for r in table.rows if r.model == "untraceable" and r.format == "onnx"]
    assert len(onnx) == 2 and all(r in table.failed and r.timing is None for r in onnx)
    note = next(n for n in onnx[0].errors if n.startswith("export:"))
    assert "TorchExportError" in note and "\n" not in note and "\x1b" not in note
    # OpenVINO converts by tracing (one branch taken): its cells of the same model go on,
    # timed, with no ratio to the ORT FP32 that failed
    ov = _row(table, "untraceable", "openvino", "fp32")
    assert ov.timing is not None and ov.speedup is None and ov not in table.failed


def test_sweep_writes_every_form(swept):
    table, args = swept
    out = args["out"]
    md = (out / "sweep.md").read_text()
    assert "`edgecls hw`:" in md and table.rows[0].machine in md
    assert md.count("| tests.DigitsCNN |") == 1      # family rows: named once per group
    data = json.loads((out / "sweep.json").read_text())
    assert len(data["rows"]) == 12 and data["machines"]
    csv_lines = (out / "sweep.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 13 and csv_lines[0].startswith("machine,int8_isa,family,model")
    html = (out / "sweep.html").read_text()
    assert html.count("<img src='data:image/png;base64,") == 2   # Pareto scatter, FPS bars


def test_resume_skips_finished_cells(swept, ray_local):
    from edgecls.sweep import sweep
    first, args = swept
    again = sweep(**args)
    assert again.settings["cells_run"] == 0 and again.settings["cells_cached"] == 12
    before = _row(first, "digits_cnn", "openvino", "int8").timing
    assert _row(again, "digits_cnn", "openvino", "int8").timing == before
    # an interrupted sweep: one cell's timing never written -> only that cell runs again
    key = next(r for r in first.rows if (r.model, r.format, r.precision)
               == ("mnv3s_32", "onnx", "int8"))
    timing_files = sorted((args["out"] / "cache" / "timing").glob("*.json"))
    victim = next(f for f in timing_files if json.loads(f.read_text()) == key.timing)
    victim.unlink()
    resumed = sweep(**args)
    assert resumed.settings["cells_run"] == 1
    assert _row(resumed, "mnv3s_32", "onnx", "int8").timing is not None


def test_pareto_front():
    from edgecls.sweep.html import pareto
    points = [(1.0, 70.0), (2.0, 75.0), (1.5, 69.0), (3.0, 74.0), (0.5, 60.0)]
    assert pareto(points) == [(0.5, 60.0), (1.0, 70.0), (2.0, 75.0)]


def test_plan_adds_the_baseline_and_refuses_bad_requests():
    from edgecls.errors import UnsupportedOptionError
    from edgecls.sweep.plan import cells, models_of
    models = models_of(["mobilenet_v2"], families=["SqueezeNet"])
    assert [m.name for m in models] == ["mobilenet_v2", "squeezenet1_0", "squeezenet1_1"]
    planned = cells(models[:1], ["openvino"], ["int8"], recipes=["", "mixed"])
    assert [(c.format, c.precision, c.recipe, c.requested) for c in planned] == [
        ("onnx", "fp32", "", False), ("openvino", "int8", "", True),
        ("openvino", "int8", "mixed", True)]
    with pytest.raises(UnsupportedOptionError, match="unknown family"):
        models_of([], families=["LeNet"])
    with pytest.raises(UnsupportedOptionError, match="tflite artifacts cannot be bf16"):
        cells(models, ["tflite"], ["fp16", "bf16"])


def test_sweep_without_ray_names_the_extra(monkeypatch):
    from edgecls.errors import MissingDependencyError
    from edgecls.sweep import sweep
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"edgecls\[sweep\]"):
        sweep(["mobilenet_v2"])


def test_sweep_cli_user_errors_are_one_line(capsys, tmp_path):
    from edgecls.cli import main
    assert main(["sweep", "mobilenet_v2", "--precision", "int8", "-o", str(tmp_path)]) == 2
    assert "int8 cells need calibration images" in capsys.readouterr().err
    assert main(["sweep", "--families", "lenet", "-o", str(tmp_path)]) == 2


@pytest.mark.parametrize("flag", ["--strict", "--no-check"])
def test_best_refuses_the_options_it_does_not_use(flag, capsys, tmp_path):
    """--to best always judges its candidates and writes only a passing one: --strict and
    --no-check would change nothing, so they are refused (before any model is built), as on
    every other path."""
    from edgecls.cli import main
    code = main(["export", "mobilenet_v3_small", "--to", "best", "--int8", "--calib", "photos",
                 flag, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"{flag}: --to best always judges its candidates" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_best_picks_the_fastest_of_those_that_pass(digits_model, digits_folders, digits_val,
                                                   tmp_path):
    from edgecls.best import export_best
    from edgecls.formats import read_spec
    model, spec = digits_model
    calib, val = digits_folders     # FP32: the race is ranked on one folder, judged on the other
    out = export_best(model, spec=spec, out=tmp_path / "digits.onnx", formats=["onnx", "openvino"],
                      options={"select": calib, "data": val}, seconds=SECONDS)
    record = read_spec(out).notes["best"]
    tried = record["candidates"]
    assert record["verification"]["outcome"] == "pass"     # judged on the folder it was not ranked on
    assert record["verification"]["images"].startswith(Path(val).name)
    assert [c["recipe"].split()[0] for c in tried] == ["onnx", "openvino"]
    assert all(c["passed"] and c["agreement"] == 1.0 for c in tried)
    fastest = min(tried, key=lambda c: c["latency_ms"])
    assert record["chosen"] == fastest["recipe"]
    assert out.suffix == {"onnx": ".onnx", "openvino": ".xml"}[fastest["recipe"].split()[0]]
    assert "fastest of 2 candidates within agreement" in record["reason"]
    assert record["fp32_latency_ms"] > 0 and record["machine"]
    # the written artifact is an FP32 copy of the digits CNN: torch's decisions on the
    # held-out digits, from the crops as they are (uint8 pixels through the spec it carries)
    from edgecls.classifier import Classifier
    crops, _, ref = digits_val
    with Classifier(out) as clf:
        # (one near-tie of 400 may round the other way in another runtime's float sums)
        assert (clf.probabilities(list(crops)).argmax(1) != ref.argmax(1)).sum() <= 1


class FakeClock:
    """time.perf_counter for edgecls.timing that moves only when a timed run says so: each
    run's duration is scripted, so the samples and what is computed from them are known."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def run(self, durations):
        """A `run` callable that takes durations[0], durations[1], ... cyclically."""
        calls = iter(range(10 ** 9))

        def run():
            self.now += durations[next(calls) % len(durations)]
        return run


@pytest.fixture
def clock(monkeypatch):
    import types

    from edgecls import timing
    fake = FakeClock()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


def test_median_halfwidth_by_hand():
    from edgecls.timing import median_halfwidth
    assert median_halfwidth([1.0] * 50) == 0.0
    # 20 samples, 10 of 1 and 10 of 2: the order-statistic interval of the median runs from
    # the 6th to the 16th sorted sample (1.96 * sqrt(20) / 2 = 4.38 either side of 10),
    # i.e. 1 .. 2 around a median of 1.5: half-width 0.5 / 1.5
    assert median_halfwidth([1.0, 2.0] * 10) == pytest.approx(1 / 3)


def test_timing_stops_when_the_median_is_stable(clock):
    from edgecls.timing import MIN_RUNS, sample
    tick = 1 / 256                                      # exact in binary: no rounding drift
    times, stable = sample(clock.run([tick]), seconds=0.125)
    assert stable
    assert times == [tick] * len(times)                 # the runs themselves, not the warm-up
    # at least `seconds` (32 runs) and MIN_RUNS, then stopped at the next check (every 5 runs)
    assert len(times) >= MIN_RUNS and sum(times) >= 0.125 and len(times) < 32 + 5
    # one slow run in twenty moves the median by nothing: still stable, stopped as early
    times, stable = sample(clock.run([tick] * 19 + [10 * tick]), seconds=0.125)
    assert stable and len(times) < 32 + 5


def test_timing_gives_up_on_a_median_that_never_settles(clock):
    from edgecls.timing import sample
    tick = 1 / 256
    # half the runs twice as slow as the others: the median's interval spans both modes
    times, stable = sample(clock.run([tick, 2 * tick]), seconds=0.125, limit=3.0)
    assert not stable
    assert sorted(set(times)) == [tick, 2 * tick]
    spent = sum(times)
    assert 3 * 0.125 <= spent < 3 * 0.125 + 5 * 2 * tick     # the limit, and one check past it


def test_measure_reports_the_timed_runs(clock, monkeypatch, tmp_path):
    """measure() on a session whose runs take known times: batch 1 takes 1/256 s, batch 4
    takes 1/32 s, so p50 = 3.90625 ms, 256 images/s at batch 1 and 128 at batch 4."""
    import contextlib

    from conftest import digits_spec

    from edgecls import formats
    from edgecls.timing import measure
    spec = digits_spec().derive(format="onnx")
    calls = []

    class Session:
        backend, precision_used = "fake", "fp32"

        def __init__(self):
            self.spec = spec

        def run(self, x):
            calls.append(x.shape)
            clock.now += 1 / 256 if len(x) == 1 else 1 / 32

    monkeypatch.setattr(formats, "open_session",
                        lambda path, **kw: contextlib.nullcontext(Session()))
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(b"\0" * 2 ** 20)
    t = measure(artifact, threads=1, batch=4, seconds=0.125)
    assert {s[0] for s in calls} == {1, 4} and calls[0][1:] == spec.input_shape(1)[1:]
    assert t.p50_ms == t.p90_ms == t.p99_ms == 3.9062
    assert t.fps_1 == 256.0 and t.fps_batch == 128.0 and t.stable and t.runs >= 32
    assert t.size_mb == 1.0 and t.threads == 1 and t.batch == 4 and t.backend == "fake"


def test_speedup_is_the_baseline_p50_over_the_cells():
    """Hand-made timings: ORT FP32 at 10 ms, the others at 4 and 8 ms; a model with no
    baseline, and a cell timed on another machine than its baseline, get no ratio."""
    from edgecls.sweep.plan import Cell
    from edgecls.sweep.runner import CellResult
    from edgecls.sweep.table import SweepTable

    def result(model, fmt, precision, p50, machine="m1"):
        timing = {"p50_ms": p50, "stable": True,
                  "machine": {"cpu": machine, "cores": 2, "int8_isa": "avx2"}}
        return CellResult(Cell(model, "fam", 32, fmt, precision), timing=timing)

    table = SweepTable.of([result("a", "onnx", "fp32", 10.0), result("a", "openvino", "int8", 4.0),
                           result("a", "onnx", "int8", 8.0), result("b", "openvino", "fp32", 3.0),
                           result("a", "openvino", "fp32", 5.0, machine="m2")], cache=None,
                          settings={})
    got = {(r.model, r.format, r.precision, r.machine.split(",")[0]): r.speedup for r in table.rows}
    assert got == {("a", "onnx", "fp32", "m1"): 1.0, ("a", "openvino", "int8", "m1"): 2.5,
                   ("a", "onnx", "int8", "m1"): 1.25, ("b", "openvino", "fp32", "m1"): None,
                   ("a", "openvino", "fp32", "m2"): None}


def test_packed_folders_travel_whole(digits_folders, tmp_path):
    """--data/--calib folders sent to cluster nodes that cannot see them."""
    from edgecls.imaging.datasets import ImageSet
    from edgecls.sweep.plan import source_digest
    from edgecls.sweep.work import Packed
    _, val = digits_folders
    copy = Packed.of(val).unpack(tmp_path)
    assert source_digest(copy) == source_digest(val)
    original, moved = ImageSet.load(val), ImageSet.load(copy)
    assert moved.labelled and [i.label for i in moved.items] == [i.label for i in original.items]


def test_sweep_from_the_command_line_with_tflite_and_fp16_cells(ray_local, tmp_path, capsys):
    """`edgecls sweep squeezenet1_1 --weights none --to onnx tflite --precision fp32 fp16` on
    the Ray this module started (the command joins a Ray its process already runs): four
    timed cells, each FP16 artifact about half its FP32 twin's size (FP16 stores each weight
    in 2 bytes instead of 4: the oracle), random weights recorded as not judged; run again
    with --retry-failed, nothing had failed and every cell comes from the cache."""
    from edgecls.cli import main
    out = tmp_path / "sweep"
    args = ["sweep", "squeezenet1_1", "--weights", "none", "--to", "onnx", "tflite",
            "--precision", "fp32", "fp16", "--seconds", "0.05", "--threads", "1", "-o", out]
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    data = json.loads((out / "sweep.json").read_text())
    rows = {(r["format"], r["precision"]): r for r in data["rows"]}
    assert set(rows) == {(f, p) for f in ("onnx", "tflite") for p in ("fp32", "fp16")}, rows
    for row in rows.values():
        assert row["model"] == "squeezenet1_1" and row["p50_ms"] > 0, row
        assert row["accuracy"] is None and row["verdict"] != "pass", row
    for fmt in ("onnx", "tflite"):
        ratio = rows[(fmt, "fp16")]["size_mb"] / rows[(fmt, "fp32")]["size_mb"]
        assert 0.4 < ratio < 0.6, (fmt, ratio)
    assert data["settings"]["cells_run"] == 4
    assert main([str(a) for a in args + ["--retry-failed"]]) == 0
    again = json.loads((out / "sweep.json").read_text())
    assert again["settings"]["cells_run"] == 0 and again["settings"]["cells_cached"] == 4


def test_sweep_joins_a_cluster_by_its_address_and_compares_calibration_methods(
        ray_local, digits_folders, tmp_path):
    """`edgecls sweep ... --address HEAD --calib DIR --calib-method minmax entropy`, run as a
    user runs it (its own process) against the Ray this module started, as against a
    cluster: the --calib folder travels packed to the nodes, and each method is its own INT8
    cell. The oracle for "each cell used its method": ORT's min/max ranges cover every value
    seen, entropy's clip the tails, so no activation scale of the entropy artifact exceeds its
    min/max twin's and some are smaller."""
    import subprocess

    from onnx import numpy_helper

    calib, _ = digits_folders
    address = ray_local.get_runtime_context().gcs_address
    out = tmp_path / "sweep"
    args = ["sweep", "squeezenet1_1", "--weights", "none", "--to", "onnx", "--precision", "int8",
            "--calib", calib, "--calib-size", "32", "--calib-method", "minmax", "entropy",
            "--address", address, "--seconds", "0.05", "--threads", "1", "-o", out]
    done = subprocess.run([sys.executable, "-m", "edgecls", *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((out / "sweep.json").read_text())
    assert data["settings"]["where"] == address
    rows = {(r["format"], r["precision"], r["calib_method"]): r for r in data["rows"]}
    assert {("onnx", "int8", "minmax"), ("onnx", "int8", "entropy")} <= set(rows), list(rows)

    def activation_scales(row):
        graph = onnx.load(row["artifact"]).graph
        values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        return {n.input[0]: float(values[n.input[1]]) for n in graph.node
                if n.op_type == "QuantizeLinear" and values[n.input[1]].size == 1}

    minmax, entropy = (activation_scales(rows[("onnx", "int8", m)]) for m in ("minmax", "entropy"))
    shared = sorted(set(minmax) & set(entropy))
    assert len(shared) > 10, shared
    assert all(entropy[t] <= minmax[t] * (1 + 1e-6) for t in shared)
    assert sum(entropy[t] < 0.9 * minmax[t] for t in shared) >= len(shared) // 4


def test_dry_run_lists_every_cell_of_all_families_and_runs_nothing(tmp_path, capsys):
    """`edgecls sweep --families all ... --dry-run`: one line per cell for every zoo model
    (the zoo's own list is the oracle), the ORT FP32 baseline included, each "to run" in an
    empty output folder; nothing exported, nothing written."""
    from edgecls import zoo
    from edgecls.cli import main
    out = tmp_path / "sweep"
    code = main(["sweep", "--families", "all", "--weights", "none", "--to", "onnx,openvino",
                 "--precision", "fp32,int8", "--calib", "photos", "--calib-method", "minmax,entropy",
                 "-o", str(out), "--dry-run"])
    text = capsys.readouterr().out
    assert code == 0
    names = {e.name for e in zoo.list_models()}
    assert len(names) >= 40
    # per model: ONNX and OpenVINO FP32, each INT8 twice (minmax, entropy)
    cells = 6 * len(names)
    assert f"{cells} cells: 0 cached, {cells} to run" in text, text[-500:]
    listed = {line.split("│")[1].strip() for line in text.splitlines()
              if line.count("│") > 6 and "to run" in line}
    assert names <= listed, sorted(names - listed)
    assert not out.exists() or not any(out.rglob("*.json"))
