"""INT8 that holds on the CPU it runs on: the hardware probe, targets, the VPMADDUBSW
emulation checked against the real kernels, recipes chosen by measurement, the runtime guard.

Every test passes on both x86 kinds (Intel with VNNI/AMX, AMD EPYC with AVX2 only): where the
real kernels differ, the test asserts what THIS CPU's kernels must do, in both branches.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from edgecls import hardware, saturation, targets
from edgecls.errors import UnsupportedOptionError
from edgecls.exporting import export
from edgecls.formats import open_session, read_spec
from edgecls.metrics import kl_divergence

SATURATES = hardware.cpu().saturates


# -- the hardware probe -----------------------------------------------------------------------
@pytest.mark.parametrize("flags,arch,isa", [
    ({"avx2", "avx512f", "avx512_vnni", "amx_int8"}, "x86_64", "x86-amx"),
    ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, "x86_64", "x86-vnni"),
    ({"avx2", "avx_vnni"}, "x86_64", "x86-vnni"),          # Alder Lake: AVX-VNNI, no AVX-512
    ({"avx2", "avx512f", "avx512bw"}, "x86_64", "x86-avx2"),  # Skylake-X: AVX-512, no VNNI
    ({"sse4_1", "ssse3", "avx2", "fma"}, "x86_64", "x86-avx2"),
    ({"sse4_1", "ssse3"}, "x86_64", "x86-sse"),
    ({"fp", "asimd", "asimddp", "i8mm"}, "aarch64", "arm64-i8mm"),
    ({"fp", "asimd", "asimddp"}, "aarch64", "arm64-dotprod"),
    ({"fp", "asimd"}, "aarch64", "arm64"),
    (set(), "riscv64", "unknown"),
])
def test_int8_isa_classes(flags, arch, isa):
    assert hardware.classify(frozenset(flags), arch) == isa


def _u8s8_dot(precise: bool) -> np.ndarray:
    """ONNX Runtime's u8 x s8 kernel (MatMulInteger, weights constant as in a quantized model)
    on a hand-made case: 64 activations of 255 times 64 weights of 127, 16 outputs."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k, n = 64, 16
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "u8s8",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, n])],
        [numpy_helper.from_array(np.full((k, n), 127, np.int8), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    if precise:
        so.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(model.SerializeToString(), so,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"a": np.full((1, k), 255, np.uint8)})[0]


def test_this_cpu_is_classified_from_its_own_flags():
    """The probe reads this machine's own flags, and what it concludes (does u8 x s8
    saturate here?) is checked against what ONNX Runtime's kernel really computes on a
    hand-made dot product - the kernel is the oracle, not the flag rule."""
    cpu = hardware.cpu()
    assert cpu.int8_isa != "unknown" and cpu.cores >= 1
    proc = Path("/proc/cpuinfo")
    if proc.exists() and cpu.source == "/proc/cpuinfo":
        line = next(l for l in proc.read_text().splitlines()
                    if l.split(":")[0].strip().lower() in ("flags", "features"))
        assert cpu.flags == frozenset(line.split(":", 1)[1].split())
    # exact: 64 * 255 * 127. Where VPMADDUBSW is used (AVX2 without VNNI) each of the 32
    # adjacent pairs, 2 * 255 * 127 = 64770, is clamped to 32767: 32 * 32767
    exact, clamped = 64 * 255 * 127, 32 * 32767
    assert (_u8s8_dot(precise=False) == (clamped if cpu.saturates else exact)).all()
    # the exact kernels that precise_int8 (and --target auto's measurements) rely on
    assert (_u8s8_dot(precise=True) == exact).all()


def test_onednn_isa_cap_makes_openvino_an_avx2_runtime(monkeypatch):
    vnni = hardware.CPU("Xeon", "x86_64", 4, frozenset({"avx2", "avx512_vnni"}), "test")
    monkeypatch.setattr(hardware, "cpu", lambda: vnni)
    assert hardware.runtime_isa("openvino") == "x86-vnni"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert hardware.runtime_isa("openvino") == "x86-avx2"
    assert hardware.runtime_isa("onnxruntime") == "x86-vnni"   # ORT has no such cap


def test_describe_is_json_and_torch_free():
    import subprocess
    import sys
    code = ("import sys, json; from edgecls import hardware; json.dumps(hardware.describe()); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'openvino') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_hw(capsys):
    from edgecls.cli import main
    assert main(["hw", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["int8_isa"] == hardware.cpu().int8_isa
    assert {r["name"] for r in info["runtimes"]} >= {"onnxruntime", "openvino", "tflite"}
    assert next(r for r in info["runtimes"] if r["name"] == "onnxruntime")["devices"]
    assert main(["hw"]) == 0
    assert hardware.cpu().int8_isa in capsys.readouterr().out


# -- targets -------------------------------------------------------------------------------------
def test_targets_resolve_and_refuse():
    assert targets.resolve("auto", "x86-amx").name == "x86-vnni"
    assert targets.resolve(None, "x86-sse").name == "x86-avx2"
    assert targets.resolve("auto", "arm64-i8mm").name == "arm64"
    assert targets.resolve("auto", "unknown").name == "portable"
    assert targets.resolve("cpu", "x86-avx2").name == "x86-avx2"      # edgecls 0.1's name
    with pytest.raises(UnsupportedOptionError, match="unknown INT8 target 'x86'.*edgecls hw"):
        targets.resolve("x86")


def test_which_recipes_hold_where():
    vnni = {"target": "x86-vnni", "saturation_safe": False}
    avx2 = {"target": "x86-avx2", "saturation_safe": True}
    assert "saturating 16-bit" in targets.mismatch(vnni, "x86-avx2")
    assert targets.mismatch(vnni, "x86-vnni") is None and targets.mismatch(vnni, "arm64") is None
    assert targets.mismatch(avx2, "x86-avx2") is None
    assert targets.mismatch({"target": "cpu"}, "x86-sse")            # written by edgecls 0.1
    assert targets.mismatch({"target": "tensorrt"}, "x86-avx2") is None


# -- the VPMADDUBSW emulation against the real kernels -------------------------------------------
@pytest.fixture(scope="module")
def effl0_calibration(effl0_onnx):
    from edgecls.imaging.datasets import CalibrationSet
    spec = read_spec(effl0_onnx)
    return CalibrationSet.from_source("photos", spec, size=48), spec


def test_emulation_on_a_hand_computed_layer(tmp_path):
    """Two MatMul layers on inputs of 0 or 1 (u8 0 or 255; weights s8 127 or 0 or -127),
    worked out by hand. Layer "pairs": output 0 has all weights 127, output 1 has 127, -127,
    127, -127. Input [1, 1, 1, 1]: output 0's pairs are 2 x 255 x 127 = 64770 each, clamped to
    32767 (32003 lost, twice); every other pair sum stays within int16. Exact outputs
    129540, 0 (row 1) and 64770, 64770 (row [1, 0, 1, 0]): relative error 64006 / 259080,
    one output of four clamped. Layer "singles" (one non-zero weight per pair) never clamps.
    On every CPU; test_this_cpu_is_classified_from_its_own_flags shows the kernels clamp
    exactly so where they saturate."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    pairs = np.array([[1, 1], [1, -1], [1, 1], [1, -1]], np.float32)      # (in 4, out 2)
    singles = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"], name="relu"),
         helper.make_node("MatMul", ["h", "w_pairs"], ["y1"], name="pairs"),
         helper.make_node("MatMul", ["h", "w_singles"], ["y2"], name="singles")], "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["n", 2]),
         helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(pairs, "w_pairs"), numpy_helper.from_array(singles, "w_singles")])
    path = tmp_path / "hand.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    x = np.array([[1, 1, 1, 1], [1, 0, 1, 0]], np.float32)
    ranked = saturation.rank_layers(path, [x])
    assert [(r.node, r.op) for r in ranked] == [("pairs", "MatMul"), ("singles", "MatMul")]
    assert ranked[0].relative_error == pytest.approx(64006 / 259080)
    assert ranked[0].clamped_fraction == 0.25
    assert ranked[1].relative_error == 0.0 and ranked[1].clamped_fraction == 0.0


def test_emulation_predicts_what_this_cpus_kernels_do(effl0_onnx, effl0_calibration, tmp_path):
    """Quantize one layer alone with ONNX Runtime and run it on this CPU's default kernels and
    on its exact (U8U8) ones: on an AVX2-only CPU the layer the emulation ranks first loses
    far more than one it ranks last; on a VNNI CPU the two kernels agree for every layer (no
    saturating kernel there to compare with: the emulation itself is checked by hand on
    every CPU in test_emulation_on_a_hand_computed_layer, and the kernels' clamping in
    test_this_cpu_is_classified_from_its_own_flags)."""
    from edgecls.backends.onnx.quantize import OrtQuantizer
    from edgecls.imaging.preprocess import to_model_input

    calibration, spec = effl0_calibration
    ranked = saturation.rank_layers(effl0_onnx, calibration.batches(spec, 8))
    pointwise = [r for r in ranked if r.op == "Conv"][1:]   # [0] is the stem: pixels, kept float
    worst, mildest = pointwise[0], pointwise[-1]
    assert worst.relative_error > 5e-3 and worst.clamped_fraction > 0.01
    assert mildest.relative_error < 1e-4

    quantizer = OrtQuantizer(effl0_onnx, spec, calibration, tmp_path, target="x86-vnni")
    x = to_model_input(calibration.images.subset(16).crops(spec), spec)
    with open_session(effl0_onnx) as fp32:
        ref = fp32.run(x)

    def gap(node: str) -> float:
        path = tmp_path / f"{node}.onnx"
        quantizer.quantize({"only": [node]}, path, spec.derive(precision="int8"))
        kl = {}
        for exact in (False, True):
            with open_session(path, precise_int8=exact) as s:
                kl[exact] = float(np.mean(kl_divergence(ref, s.run(x))))
        return kl[False] - kl[True]

    worst_gap, mild_gap = gap(worst.node), gap(mildest.node)
    if SATURATES:
        assert worst_gap > 5e-3 and worst_gap > 20 * abs(mild_gap), (worst_gap, mild_gap)
    else:
        assert abs(worst_gap) < 1e-4 and abs(mild_gap) < 1e-4, (worst_gap, mild_gap)


# -- recipes chosen by measurement --------------------------------------------------------------
def test_efficientnet_lite0_int8_made_here_says_how_it_was_chosen(effl0_int8_auto):
    """The artifact `--target auto` made on this CPU records its target, the CPU, and a search
    made on the selection photos (never the calibration or verification ones), with the
    choice the search's rule makes: of the recipes that met the tolerance there, those within
    10% of the fastest's latency count as equally fast and the lowest KL of them wins (the
    two starts, rounded to nearest and adaptively, and their activation ranges are the same
    graph); none met it: the
    lowest KL - and the reason. Its verdict on verification photos: test_onnx_int8."""
    q = read_spec(effl0_int8_auto).quantization
    assert q["target"] == targets.resolve("auto").name and q["measured_on_target"]
    assert q["made_on_isa"] == hardware.cpu().int8_isa
    assert q["calibration_source"] == "photos-calib"
    search = q["search"]
    assert search["selected_on"].startswith("photos-select") and search["candidates"]
    rows = search["candidates"]
    chosen = rows[search["chosen_index"]]
    assert chosen["recipe"] == search["chosen"]
    passing = [c for c in rows if c["passed"]]
    # the two starts, rounded to nearest, then adaptively, each with ORT's min / max and the
    # two quantiles of the images' extremes (backends/ranges.py)
    assert ["adaptive rounding" in c["recipe"] for c in rows[:6]] == [False] * 3 + [True] * 3
    assert ["percentile ranges" in c["recipe"] for c in rows[:6]] == [False, True, True] * 2
    if passing:
        assert chosen["passed"]
        fastest = min(c["latency_ms"] for c in passing)
        assert chosen["latency_ms"] <= 1.10 * fastest
        assert chosen["kl"] == min(c["kl"] for c in passing if c["latency_ms"] <= 1.10 * fastest)
        assert ("fastest of" in search["reason"] or "closest to FP32" in search["reason"]
                or "only recipe" in search["reason"])
    else:
        assert chosen["kl"] == min(c["kl"] for c in rows)
        assert search["reason"].startswith("no recipe met the tolerance")
    assert search["fp32_latency_ms"] > 0 and chosen["latency_ms"] > 0
    if SATURATES:   # the target recipe saturates here: layers were given exact u8 weights
        assert not search["candidates"][0]["passed"] and q["u8u8_weights"]
        assert set(q["u8u8_weights"]).isdisjoint(q["kept_in_float"])


#: target -> (measured on target where u8 x s8 saturates (AVX2), where it does not (VNNI,
#: ARM)): a VNNI or ARM recipe has exact products, which exact kernels reproduce anywhere;
#: an AVX2-safe recipe's saturation is only seen where it happens
MEASURED_ON_TARGET = {"x86-vnni": (True, True), "x86-avx2": (True, False),
                      "portable": (True, False), "arm64": (True, True)}
#: run each artifact with the kernels of its target: exact ones for VNNI and ARM recipes
RUN_EXACT = {"x86-vnni": True, "x86-avx2": False, "portable": False, "arm64": True}


@pytest.mark.parametrize("target", ["x86-vnni", "x86-avx2", "portable", "arm64"])
def test_forced_targets_are_recorded(digits_model, digits_data, tmp_path, target):
    """An artifact forced to a target records it, and classifies digits as well as torch
    does on images neither its calibration nor its recipe search saw."""
    import torch

    from edgecls.imaging.preprocess import to_model_input
    model, spec = digits_model
    _, calib, val, _ = digits_data
    select, verify = val.split(calib_size=200, val_size=200, seed=7)
    assert not select.keys() & verify.keys() and not calib.keys() & verify.keys()
    path = export(model, to="onnx", out=tmp_path / f"{target}.onnx", spec=spec, precision="int8",
                  calib=calib, options={"target": target, "select": select})
    q = read_spec(path).quantization
    assert q["target"] == target
    assert q["activations"] == ("s8 symmetric" if target == "arm64" else "u8 asymmetric")
    measured = MEASURED_ON_TARGET[target][0 if SATURATES else 1]
    assert q["measured_on_target"] is measured
    assert ("candidates" in q["search"]) is measured
    # a VNNI/ARM recipe made on an AVX2-only CPU is measured with exact kernels
    assert q["search"].get("measured_with", {}) == (
        {"precise_int8": True} if SATURATES and RUN_EXACT[target] else {})

    crops, labels = verify.crops(spec), np.asarray(verify.labels())
    x = to_model_input(crops, spec)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy().argmax(1)
    with open_session(path, precise_int8=RUN_EXACT[target]) as s:
        got = s.run(x).argmax(1)
    # Safe on both CPU kinds: run with its target's kernels, every recipe computes the same
    # integers on AVX2 and VNNI (exact products, or an AVX2-safe recipe whose pair sums never
    # clamp), so only the search's choice can differ between machines, and every candidate
    # it may choose met the INT8 tolerance on the selection digits. The torch model is ~97%
    # on these 200; the margins are 4 and 6 images.
    assert (got == ref).mean() >= 0.97, (got != ref).sum()
    assert (got == labels).mean() >= (ref == labels).mean() - 0.03


def test_the_fastest_recipe_that_passes_wins(digits_model, digits_data, tmp_path):
    """Two recipes that both meet the tolerance: the one measured faster is written - or,
    within 10% of its latency (the same speed on this noisy machine), the one closer to
    FP32."""
    from edgecls.backends.onnx.tuning import OnnxTuner
    from edgecls.imaging.datasets import CalibrationSet
    from edgecls.search import Recipe, export_int8
    from edgecls.sources.export_source import ExportSource

    model, spec = digits_model
    _, calib, val, _ = digits_data
    source = ExportSource(model, spec, tmp_path, selection=val)
    calibration = CalibrationSet.from_source(calib, spec)

    class TwoRecipes(OnnxTuner):
        def bases(self):
            from edgecls.backends.onnx.quantize import weighted_layers
            default = self.quantizer.default_settings()   # first conv, classifier in float
            more = default["kept_in_float"] + weighted_layers(self.fp32_path)[1::2]
            return [Recipe("default", default),
                    Recipe("every other layer float too", {**default, "kept_in_float": more})]

    # a target this CPU measures natively, so that both recipes are judged as they run here
    tuner = TwoRecipes(source.onnx(), spec, calibration, targets.resolve("auto"), tmp_path)
    out = tmp_path / "chosen.onnx"
    outcome = export_int8(tuner, source, calibration, out)
    passing = [t for t in outcome.trials if t.passed]
    assert len(passing) == 2
    fastest = min(passing, key=lambda t: t.latency_ms)
    near = [t for t in passing if t.latency_ms <= 1.10 * fastest.latency_ms]
    assert outcome.chosen is min(near, key=lambda t: t.kl)
    assert read_spec(out).quantization["search"]["chosen"] == outcome.chosen.recipe.label


def test_max_drop_is_points_of_top1_and_of_decisive_agreement():
    """--max-drop 2: with labels, 2 points of top-1; without, 2 points of agreement on the
    inputs where the reference is decisive. The KL bound stays the precision's."""
    from edgecls.verdict import TOLERANCES, tolerances_for
    tol = tolerances_for("int8", 2.0)
    assert tol.min_decisive_agreement == pytest.approx(0.98) and tol.max_top1_drop == 2.0
    assert tol.max_kl == TOLERANCES["int8"].max_kl
    assert tolerances_for("int8") == TOLERANCES["int8"]
    assert tolerances_for("fp16").min_decisive_agreement > tolerances_for("int8").min_decisive_agreement


# -- the runtime guard ---------------------------------------------------------------------------
def test_guard_warns_where_a_recipe_saturates(effl0_int8_auto, tmp_path, monkeypatch, caplog):
    """A VNNI recipe opened on a CPU that saturates warns and names both fixes; exact kernels
    silence it; the same artifact on a VNNI CPU is fine. The CPU is set per case, so every
    branch runs on every machine."""
    import onnx

    with open_session(effl0_int8_auto) as s:      # made for this machine: nothing to say
        assert s.int8_warning is None
    from edgecls.spec import SPEC_KEY, ModelSpec
    proto = onnx.load(str(effl0_int8_auto))
    meta = {p.key: p for p in proto.metadata_props}
    spec = ModelSpec.from_json(meta[SPEC_KEY].value)
    spec.quantization = {**spec.quantization, "target": "x86-vnni", "saturation_safe": False}
    meta[SPEC_KEY].value = spec.to_json()
    vnni_made = tmp_path / "vnni.int8.onnx"
    onnx.save(proto, str(vnni_made))

    for isa, warns in (("x86-avx2", True), ("x86-vnni", False), ("arm64", False)):
        monkeypatch.setattr(hardware, "runtime_isa", lambda runtime, isa=isa: isa)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edgecls"), open_session(vnni_made) as s:
            assert (s.int8_warning is not None) == warns, isa
        if warns:
            assert "--target auto" in s.int8_warning and "precise_int8" in s.int8_warning
            assert s.int8_warning in caplog.text
    monkeypatch.setattr(hardware, "runtime_isa", lambda runtime: "x86-avx2")
    with open_session(vnni_made, precise_int8=True) as s:
        assert s.int8_warning is None and s.describe()["int8_kernels"] == "exact (U8U8)"


# -- OpenVINO and TFLite ---------------------------------------------------------------------------
def test_openvino_accuracy_control_meets_its_target(digits_model, digits_onnx, digits_data, tmp_path):
    """The search's last OpenVINO candidate, NNCF's accuracy control, built directly: the
    held-out top-1 drop it reaches is within the 0.5 points it was asked for."""
    import openvino as ov

    from edgecls.backends.openvino import OpenVINOOptions
    from edgecls.backends.openvino.export import _finish
    from edgecls.backends.openvino.tuning import OpenVINOTuner, Start
    from edgecls.imaging.datasets import CalibrationSet
    from edgecls.sources.export_source import ExportSource
    from edgecls.verdict import Tolerances
    from edgecls.verification import parity

    model, spec = digits_model
    _, calib, val, _ = digits_data
    # accuracy control chooses on one half of the held-out digits; the verdict is on the other
    select, verify = val.split(calib_size=200, val_size=200, seed=7)
    assert not select.keys() & verify.keys()
    source = ExportSource(model, spec, tmp_path, _onnx=digits_onnx, onnx_opset=18,
                          selection=select)
    calibration = CalibrationSet.from_source(calib, spec)
    options = OpenVINOOptions.parse({}, "int8", "openvino")
    ir_spec = spec.derive(format="openvino", precision="int8")
    tuner = OpenVINOTuner([Start(ov.convert_model(str(digits_onnx)))], source, ir_spec, calibration,
                          targets.resolve("auto"), options,
                          lambda m, s, out: _finish(m, s, out, precision="int8", options=options))
    [controlled] = tuner.fallbacks(tuner.bases()[0], Tolerances(0.99, 0.02, max_top1_drop=0.5))
    assert controlled.settings["max_drop"] == 0.5
    out = tmp_path / "ac.xml"
    tuner.build(controlled, out)
    assert read_spec(out).quantization["method"] == "nncf-ptq-accuracy-control"
    report = parity([out], data=verify, reference=model, reference_spec=spec, sqnr=False,
                    progress=False)
    # 200 images the control never saw (one image is 0.5 points): the 0.5 asked for, plus
    # three images of sampling noise between the two halves. Safe on both CPU kinds:
    # OpenVINO's AVX2 kernels keep u8 x s8 pair sums in range (oneDNN scales the weights),
    # so AVX2 and VNNI machines compute the same integers up to rounding.
    assert report.results[0].top1_drop <= 2.0


def test_tflite_float_ops_only_when_allowed(digits_model, digits_data, digits_val, tmp_path):
    from edgecls.backends.tflite.export import convert_fp32
    from edgecls.backends.tflite.quantize import float_ops
    from edgecls.backends.onnx.torch_start import Start
    from edgecls.backends.tflite.tuning import TFLiteTuner
    from edgecls.imaging.datasets import CalibrationSet

    model, spec = digits_model
    _, calib, _, _ = digits_data
    nhwc = spec.derive(layout="NHWC", format="tflite", precision="int8")
    calibration = CalibrationSet.from_source(calib, nhwc, size=64)
    starts = [(Start(model), convert_fp32(model, nhwc))]
    strict = TFLiteTuner(starts, nhwc, calibration, targets.resolve("auto"), None, False)
    assert strict.remedies(strict.bases()[0]) == []
    loose = TFLiteTuner(starts, nhwc, calibration, targets.resolve("auto"), None, True)
    [remedy] = loose.remedies(loose.bases()[0])
    ranked = list(remedy.rank())
    assert len(ranked) >= 4          # the digits CNN's convolutions and its classifier
    recipe = loose.bases()[0].with_layer(remedy, ranked[0])
    out = tmp_path / "one-float.tflite"
    loose.build(recipe, out)
    q = read_spec(out).quantization
    assert q["recipe"].endswith("float x1") and q["float_ops"]
    assert float_ops(out.read_bytes()) == q["float_ops"]
    # and it still is the digits CNN: torch's decisions on the held-out digits. Safe on both
    # x86 kinds: TFLite's int8 kernels (XNNPACK, s8 x s8 widened to 16 bits) never use the
    # saturating u8 x s8 instruction, so AVX2 and VNNI compute the same integers
    from edgecls.imaging.preprocess import to_model_input
    crops, _, ref = digits_val
    with open_session(out) as s:
        got = s.run(to_model_input(crops, s.spec))
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95




def test_predict_warns_only_where_this_cpu_saturates_the_recipe(digits_model, digits_data,
                                                                tmp_path):
    """`edgecls predict` of a VNNI-recipe INT8 artifact in a real process on this CPU, nothing
    patched: one warning naming both fixes exactly where this CPU's kernels saturate u8 x s8
    products (SATURATES: checked against ONNX Runtime's own kernel in
    test_this_cpu_is_classified_from_its_own_flags), none with --precise-int8; both name the
    digits. On an AVX2-only CPU the warning branch runs, on a VNNI or ARM one the other."""
    import cv2
    from conftest import run_cli
    model, spec = digits_model
    _, calib, val, _ = digits_data
    path = export(model, to="onnx", out=tmp_path / "vnni.int8.onnx", spec=spec,
                  precision="int8", calib=calib, check=False,
                  options={"target": "x86-vnni", "no_search": True})
    files = []
    for item in val.items[:6]:
        files.append(tmp_path / f"{item.label}-{len(files)}.png")
        cv2.imwrite(str(files[-1]), cv2.cvtColor(item.rgb(), cv2.COLOR_RGB2BGR))
    for extra in ([], ["--precise-int8"]):
        proc = run_cli("predict", path, *files, "--json", *extra, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        warnings = [line for line in proc.stderr.splitlines()
                    if "re-export it on this machine with --target auto" in line]
        assert len(warnings) == (1 if SATURATES and not extra else 0), proc.stderr
        if warnings:
            assert "--precise-int8" in warnings[0] and "x86-vnni" in warnings[0]
        top1 = {Path(k).name: v[0]["label"] for k, v in json.loads(proc.stdout).items()}
        right = sum(top1[f.name] == f.name.split("-")[0] for f in files)
        assert right >= 5, top1          # the CNN is ~97% on these digits


def test_a_remedy_candidate_the_backend_cannot_build_is_skipped(digits_model, digits_data,
                                                                tmp_path, caplog):
    """A candidate of the search that the backend refuses to build (XNNPACK refused an
    EfficientNet-Lite2 program with one conv in float: "Weight and Input should both be
    quantized", and the export died with a traceback) is logged and skipped; the search goes
    on with the next layer. Here ONNX Runtime's float remedy, its second-ranked layer made
    unbuildable, under a tolerance nothing meets (so every ranked layer is tried)."""
    from edgecls.backends.onnx.tuning import OnnxTuner
    from edgecls.imaging.datasets import CalibrationSet
    from edgecls.search import run
    from edgecls.sources.export_source import ExportSource
    from edgecls.verdict import Tolerances

    model, spec = digits_model
    _, calib, val, _ = digits_data
    source = ExportSource(model, spec, tmp_path, selection=val)
    calibration = CalibrationSet.from_source(calib, spec)
    ranked = []

    class Refusing(OnnxTuner):
        def sensitive(self, settings):
            ranked[:] = super().sensitive(settings)[:3]
            return list(ranked)

        def build(self, recipe, out, search=None, spec=None):
            if ranked[1:2] and ranked[1] in recipe.settings["kept_in_float"]:
                raise RuntimeError("Weight and Input should both be quantized")
            super().build(recipe, out, search, spec)

    tuner = Refusing(source.onnx(), spec, calibration, targets.resolve("auto"), tmp_path)
    assert tuner.measures_target          # `auto` is this CPU's own target: measured here
    work = tmp_path / "search"
    work.mkdir()
    outcome = run(tuner, source.held_out(calibration), Tolerances(1.0, 0.0, 0.0), work)
    tried = [set(t.recipe.settings["kept_in_float"]) for t in outcome.trials]
    assert not any(ranked[1] in kept for kept in tried)
    assert any(ranked[2] in kept for kept in tried), tried      # the search went on
    assert "not built: RuntimeError: Weight and Input should both be quantized" in caplog.text
