"""INT8 / FP16 ONNX artifacts of the digits model through parity, and parity catching a
broken artifact."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import built_once

from edgecls.exporting import export
from edgecls.spec import SPEC_KEY, ModelSpec
from edgecls.verification import parity


@pytest.fixture(scope="module")
def digits_artifacts(request, tmp_path_factory):
    """Made once per session (built_once)."""
    def build(folder: Path):
        model, spec = request.getfixturevalue("digits_model")
        _, calib, _, _ = request.getfixturevalue("digits_data")
        export(model, to="onnx", out=folder / "d.onnx", spec=spec)
        export(model, to="onnx", out=folder / "d.fp16.onnx", spec=spec, precision="fp16")
        for method in ("minmax", "entropy", "percentile"):
            export(model, to="onnx", out=folder / f"d.int8.{method}.onnx", spec=spec,
                   precision="int8", calib=calib, calib_size=200,
                   options={"calib_method": method})

    folder = built_once(tmp_path_factory, "digits-onnx-int8", build)
    return {"fp32": folder / "d.onnx", "fp16": folder / "d.fp16.onnx",
            **{method: folder / f"d.int8.{method}.onnx"
               for method in ("minmax", "entropy", "percentile")}}


def test_every_calibration_method_keeps_digits_accuracy(digits_model, digits_data, digits_artifacts, tmp_path):
    model, spec = digits_model
    _, _, val, _ = digits_data
    report = parity(list(digits_artifacts.values()), data=val, reference=model, out=tmp_path / "r")
    assert report.data["labelled"] and report.data["n"] == len(val)
    assert report.reference["top1"] > 0.9
    by_name = {Path(r.path).name: r for r in report.results}
    for method in ("minmax", "entropy", "percentile"):
        r = by_name[f"d.int8.{method}.onnx"]
        assert r.precision == "int8"
        assert r.top1_drop <= 1.0, (method, r.top1_drop)
        assert r.top1_ci[0] <= r.top1 <= r.top1_ci[1]
        assert r.passed, r.failures
        assert r.calibration_overlap == 0
        assert 3 <= len(r.worst_layers) <= 10
        assert all(w["sqnr_db"] < 60 for w in r.worst_layers)
    assert by_name["d.fp16.onnx"].agreement >= 0.995
    assert by_name["d.onnx"].max_abs < 1e-3
    assert report
    for name in ("report.json", "report.md", "report.html"):
        assert (tmp_path / "r" / name).stat().st_size > 500
    assert "<img" in (tmp_path / "r" / "report.html").read_text()


def test_int8_recipe_and_parent_link_are_in_the_spec(digits_artifacts):
    from edgecls.formats import read_spec
    spec = read_spec(digits_artifacts["entropy"])
    q = spec.quantization
    assert q["method"] == "entropy" and q["activations"] == "u8 asymmetric" and q["format"] == "QDQ"
    assert q["calibration_size"] == 64  # entropy calibration is bounded (ORT keeps all activations)
    assert len(q["calibration_hash"]) == 16
    assert spec.parent["precision"] == "fp32" and len(spec.parent["sha256"]) == 16
    fp16 = read_spec(digits_artifacts["fp16"])
    assert fp16.precision == "fp16"
    graph = onnx.load(str(digits_artifacts["fp16"])).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)


def test_tensorrt_target_is_symmetric_s8(digits_model, digits_data, tmp_path):
    model, spec = digits_model
    _, calib, _, _ = digits_data
    path = export(model, to="onnx", out=tmp_path / "trt.onnx", spec=spec, precision="int8",
                  calib=calib, options={"target": "tensorrt"})
    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(z.data_type == onnx.TensorProto.INT8 for z in zero_points)
    assert all(not any(onnx.numpy_helper.to_array(z).ravel()) for z in zero_points)


def test_parity_catches_wrong_preprocessing_in_the_spec(digits_model, digits_data, digits_artifacts, tmp_path):
    """An artifact whose spec lies about mean/std is numerically fine but sees other inputs."""
    model, spec = digits_model
    _, _, val, _ = digits_data
    proto = onnx.load(str(digits_artifacts["fp32"]))
    meta = {p.key: p for p in proto.metadata_props}
    broken = ModelSpec.from_json(meta[SPEC_KEY].value).derive(mean=(0.2, 0.2, 0.2), std=(0.9, 0.9, 0.9))
    meta[SPEC_KEY].value = broken.to_json()
    bad = tmp_path / "broken.onnx"
    onnx.save(proto, str(bad))
    report = parity([digits_artifacts["fp32"], bad], data=val, reference=model)
    good, wrong = report.results
    assert good.passed and not wrong.passed
    assert not report
    assert any("agreement" in f for f in report.failures)


def test_parity_detects_calibration_overlap(digits_model, digits_data, digits_artifacts):
    model, _ = digits_model
    full, calib, _, _ = digits_data
    report = parity([digits_artifacts["minmax"]], data=full.subset(400, seed=5), reference=model,
                    calib=calib, sqnr=False)
    assert report.data["calib_overlap"] > 0
    assert report.results[0].calibration_overlap == report.data["calib_overlap"]


def test_refused_and_unknown_methods(digits_model, digits_data, tmp_path):
    from edgecls.errors import UnsupportedOptionError
    model, spec = digits_model
    _, calib, _, _ = digits_data
    for method, words in (("distribution", "collapses"), ("magic", "unknown")):
        with pytest.raises(UnsupportedOptionError, match=words):
            export(model, to="onnx", out=tmp_path / "x.onnx", spec=spec, precision="int8",
                   calib=calib, options={"calib_method": method})
    assert not list(tmp_path.iterdir())


def test_strict_int8_export_fails_loudly_and_writes_nothing(digits_pt2, tmp_path, capsys):
    from edgecls.cli import main
    out_dir = tmp_path / "out"
    # an impossible tolerance on labelled images: the accuracy "drop" must be at most -100
    # points (the digits program: the failure path is the same for any model, and this one
    # costs seconds where EfficientNet-Lite0 cost half a minute of CI)
    code = main(["export", str(digits_pt2), "--to", "onnx", "--int8", "--calib", "digits",
                 "--calib-size", "16", "--data", "digits", "--max-drop", "-100", "--strict",
                 "--no-search", "-o", str(out_dir / "e.int8.onnx")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "INT8 parity failed" in err and "--strict: nothing was written" in err
    assert not out_dir.exists() or not list(out_dir.iterdir())


def test_bias_correction_is_found_once_per_graph_and_images(digits_onnx, digits_data,
                                                            tmp_path, monkeypatch):
    """QAT, its PTQ twin and an INT8 export of one model from one calibration set ask for
    the same bias correction: NNCF finds it once per process (bias_correction._FOUND); the
    oracle for the reused one is the file NNCF's own run wrote. Other images: NNCF again."""
    from edgecls.backends.onnx import bias_correction
    from edgecls.backends.onnx.quantize import first_and_last_layers
    from edgecls.formats import read_spec
    from edgecls.imaging.datasets import CalibrationSet
    spec = read_spec(digits_onnx)
    _, calib, _, _ = digits_data
    nncf_runs = []
    run_nncf = bias_correction._nncf_biases
    monkeypatch.setattr(bias_correction, "_nncf_biases",
                        lambda *args: nncf_runs.append(1) or run_nncf(*args))
    monkeypatch.setattr(bias_correction, "_FOUND", {})
    some, others = (CalibrationSet(images, spec) for images in (calib.subset(48, seed=0),
                                                               calib.subset(48, seed=1)))
    # the first and last layers left alone, as the recipes that keep them in float do (NNCF
    # 3.4 raises KeyError on this graph's first convolution: its input is the graph's)
    float_layers = first_and_last_layers(digits_onnx)
    outs = [tmp_path / f"{i}.onnx" for i in range(3)]
    changed = [bias_correction.bias_corrected(digits_onnx, spec, images, out, float_layers)
               for images, out in zip((some, some, others), outs)]
    assert len(nncf_runs) == 2
    assert changed[0] == changed[1] > 0 and changed[2] > 0
    assert outs[1].read_bytes() == outs[0].read_bytes() != outs[2].read_bytes()


@pytest.fixture(scope="module")
def effl0_fp16(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 FP16 ONNX, made once per session (built_once)."""
    def build(folder: Path):
        export("efficientnet_lite0", to="onnx", out=folder / "e.fp16.onnx", precision="fp16")

    return built_once(tmp_path_factory, "effl0-fp16", build) / "e.fp16.onnx"


def test_efficientnet_lite0_fp16_passes_and_int8_is_judged_on_photos_no_choice_saw(
        effl0_onnx, effl0_fp16, effl0_int8_auto, tmp_path):
    """Real ImageNet weights, judged on the 351 verification crops of photos that neither
    calibrated nor selected the INT8 recipe. FP16 is the noise floor and passes; INT8 keeps
    the decisive answers and is measurably further from FP32 than FP16."""
    from edgecls.verdict import PASS
    int8, fp16 = effl0_int8_auto, effl0_fp16
    report = parity([effl0_onnx, fp16, int8], data="photos", out=tmp_path / "report")
    fp32_r, fp16_r, int8_r = report.results
    assert report.data["name"] == "photos-verify" and report.data["n"] == 351
    assert int8_r.calibration_overlap == 0
    assert fp32_r.outcome == PASS and fp16_r.outcome == PASS, fp16_r.failures
    # FP16 flips some near-ties (plain agreement 97.4% on a VNNI EPYC), none of the decisive
    assert fp16_r.decisive_agreement == 1.0
    # INT8 on decisive inputs: 97.3% (ORT recipes, VNNI EPYC) - 98.0% (NNCF); 95% leaves
    # room for the AVX2 recipe, whose per-layer search targets exactly these flips
    assert int8_r.decisive_agreement >= 0.95, int8_r.decisive_agreement
    # the distance says what agreement cannot: INT8 (ORT with bias correction and the first
    # depthwise convolution in float: 0.014 on a VNNI EPYC; other recipes measured up to
    # 0.106) is 20x further from FP32 than FP16 (2e-4 here) - 60x measured - and far from
    # broken
    assert 20 * fp16_r.kl_mean < int8_r.kl_mean < 0.2, (fp16_r.kl_mean, int8_r.kl_mean)
    assert int8_r.worst_layers and int8_r.worst_layers[0]["module"]

def test_verdicts_hold_on_two_disjoint_halves_of_the_verification_photos(
        effl0_onnx, effl0_fp16, effl0_int8_auto):
    """The verdict measures the artifact, not the images: on either half of the verification
    photos (split by photo) the demo's FP16 and INT8 artifacts never get opposite outcomes
    (pass on one half, fail on the other), and FP16 passes on both. An artifact near the
    tolerance may be inconclusive on one half, where half the images make a wider interval:
    the INT8 one (KL 0.014 on all 351 crops, tolerance 0.02) passes on one half and is
    inconclusive on the other (AMD EPYC with VNNI)."""
    from edgecls.imaging.datasets import ImageSet, load_part, photo_of
    verify = load_part("photos", None, "verify")
    photos = sorted({photo_of(i) for i in verify.items})
    halves = [ImageSet(f"half{k}", [i for i in verify.items if photo_of(i) in photos[k::2]])
              for k in (0, 1)]
    assert not {photo_of(i) for i in halves[0].items} & {photo_of(i) for i in halves[1].items}
    outcomes = [[r.outcome for r in parity([effl0_fp16, effl0_int8_auto], data=half, reference=effl0_onnx,
                                           sqnr=False, progress=False).results]
                for half in halves]
    for fp16_or_int8 in zip(*outcomes):
        assert set(fp16_or_int8) != {"pass", "fail"}, outcomes
    assert outcomes[0][0] == outcomes[1][0] == "pass", outcomes


def test_the_spec_names_the_selection_images_and_parity_finds_them(effl0_int8_auto):
    """The INT8 spec records the ids of the images that chose its recipe; they are none of
    the verification photos, and parity on the selection photos says it was chosen on them."""
    from edgecls.imaging.datasets import load_part
    from edgecls.formats import read_spec
    search = read_spec(effl0_int8_auto).quantization["search"]
    chosen_on = set(search["selection_ids"])
    verify = {i.digest()[:12] for i in load_part("photos", None, "verify").items}
    assert len(chosen_on) == 72 and not chosen_on & verify      # 6 photos x 12 views
    on_selection = parity([effl0_int8_auto], data="photos-select", sqnr=False, progress=False)
    assert on_selection.results[0].selection_overlap == 72
    on_verification = parity([effl0_int8_auto], data="photos", limit=40, sqnr=False, progress=False)
    assert on_verification.results[0].selection_overlap == 0


def test_bias_correction_brings_ort_int8_closer_to_fp32_on_photos_no_choice_saw(effl0_onnx,
                                                                                 tmp_path):
    """NNCF's full bias correction carried into the FP32 model before ORT quantizes it
    (backends/onnx/bias_correction.py): on verification photos that neither calibrated nor
    chose anything, the same ORT recipe with and without it. Both run ORT's exact INT8
    kernels (precise_int8: what VNNI computes, on any x86 CPU), so the comparison is the
    same on AVX2 and VNNI machines. Measured (AMD EPYC, VNNI, 351 crops): KL 0.088 -> 0.024;
    requiring only 'below 0.6x' leaves room for the 117-crop subset used here.
    Then the recipe's first depthwise convolution in float, and a second one kept in float
    mid-network as the search's remedy does."""
    from edgecls.backends.onnx.quantize import OrtQuantizer
    from edgecls.imaging.datasets import CalibrationSet, load_part
    from edgecls.imaging.preprocess import to_model_input
    from edgecls.formats import open_session, read_spec
    from edgecls.metrics import kl_divergence

    spec = read_spec(effl0_onnx)
    calibration = CalibrationSet.from_source("photos", spec, size=300)
    verify = load_part("photos", spec, "verify")
    pixels = verify.crops(spec)[::3]                       # 13 crops of each of the 9 photos

    def logits(path, **options):
        with open_session(path, device="cpu", **options) as session:
            return np.concatenate([session.run(to_model_input(pixels[i:i + 32], spec))
                                   for i in range(0, len(pixels), 32)])

    reference = logits(effl0_onnx)
    kl = {}
    for corrected in (False, True):
        work = tmp_path / str(corrected)
        work.mkdir()
        quantizer = OrtQuantizer(effl0_onnx, spec, calibration, work, target="x86-vnni",
                                 bias_correction=corrected)
        out = work / "int8.onnx"
        quantizer.quantize(quantizer.default_settings(), out, spec.derive(precision="int8"))
        assert ("bias_correction" in read_spec(out).quantization) == corrected
        kl[corrected] = float(kl_divergence(reference, logits(out, precise_int8=True)).mean())
    assert kl[True] < 0.6 * kl[False], kl

    # the recipe keeps the first depthwise convolution (fed by the float first one) in
    # float: measured 0.0248 on these 117 crops without it, 0.0156 with it
    assert kl[True] < 0.02, kl
    # the second, kept in float as the search's float remedy does, mid-network: it must run
    # as the FP32 layer (before ONNX Runtime was kept from quantizing it itself and its
    # bias-corrected bias was restored: KL 0.23 on the 351 crops, ten times the default's)
    graph = onnx.load(str(effl0_onnx)).graph
    second = [n.name for n in graph.node if n.op_type == "Conv"
              and next((a.i for a in n.attribute if a.name == "group"), 1) > 1][1]
    settings = quantizer.default_settings()
    settings["kept_in_float"] = settings["kept_in_float"] + [second]
    out = tmp_path / "kept.onnx"
    quantizer.quantize(settings, out, spec.derive(precision="int8"))
    kl["kept"] = float(kl_divergence(reference, logits(out, precise_int8=True)).mean())
    assert kl["kept"] < 1.2 * kl[True], kl

    # activation ranges from the quantiles of each calibration image's extremes
    # (backends/ranges.py) instead of ORT's global min / max: measured on these 117 crops
    # 0.0137 -> 0.0107 with the 25th / 75th percentiles, on all 351 0.0138 -> 0.0097
    out = tmp_path / "p75.onnx"
    quantizer.quantize({**quantizer.default_settings(), "ranges": "p75"}, out,
                       spec.derive(precision="int8"))
    assert read_spec(out).quantization["activation_ranges"].startswith("25th / 75th")
    kl["p75"] = float(kl_divergence(reference, logits(out, precise_int8=True)).mean())
    assert kl["p75"] < 0.9 * kl[True], kl


@pytest.mark.parametrize("start", ["nearest", "adaptive rounding"])
def test_a_layer_kept_in_float_is_the_fp32_layer_in_what_onnx_runtime_runs(
        start, digits_onnx, digits_model, digits_data, tmp_path):
    """ONNX Runtime quantizes, per tensor, the float weights of a Conv it finds between a
    DequantizeLinear and a QuantizeLinear when a session loads (its WeightBiasQuantization
    optimisation); bias correction shifts the bias of every layer it expects quantized; the
    search's second start quantizes adaptively rounded weights. A layer the search keeps in
    float must be the FP32 model's layer anyway. The oracle: the graph ONNX Runtime itself
    writes after those optimisations, whose layer must hold the FP32 file's weight and bias.
    (What it costs when they are not: the EfficientNet-Lite0 test below.)"""
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgecls.backends.onnx.quantize import OrtQuantizer
    from edgecls.formats import read_spec
    from edgecls.imaging.datasets import CalibrationSet

    spec = read_spec(digits_onnx)
    _, calib, _, _ = digits_data
    fp32 = onnx.load(str(digits_onnx)).graph
    fp32_weights = {i.name: numpy_helper.to_array(i) for i in fp32.initializer}
    convs = [n for n in fp32.node if n.op_type == "Conv"]
    middle = convs[-1]       # fed by a quantized Add, feeding a Relu and a quantized MaxPool
    calibration = CalibrationSet(calib.subset(64), spec)
    rounded = None
    if start == "adaptive rounding":
        from edgecls.backends.adaround import adaptively_rounded
        from edgecls.backends.onnx.export import export_fp32
        model, _ = digits_model
        module, facts = adaptively_rounded(model, calibration, spec, iterations=100)
        rounded = (tmp_path / "rounded.onnx", facts)
        export_fp32(module, spec, rounded[0])
        rounded_weights = {i.name: numpy_helper.to_array(i)
                           for i in onnx.load(str(rounded[0])).graph.initializer}
        # the test can fail: the rounded model's own weight for the layer is another one
        assert not np.array_equal(rounded_weights[convs[-1].input[1]],
                                  fp32_weights[convs[-1].input[1]])
    quantizer = OrtQuantizer(digits_onnx, spec, calibration, tmp_path, target="x86-vnni",
                             rounded=rounded)
    settings = quantizer.default_settings()
    settings["kept_in_float"] = settings["kept_in_float"] + [middle.name]
    out = tmp_path / "int8.onnx"
    quantizer.quantize(settings, out, spec.derive(precision="int8"))

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "as-run.onnx")
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    as_run = onnx.load(str(tmp_path / "as-run.onnx")).graph
    run_weights = {i.name: numpy_helper.to_array(i) for i in as_run.initializer}
    layer = next(n for n in as_run.node if n.name == middle.name)
    for fp32_name, run_name in zip(middle.input[1:], layer.input[1:]):
        assert run_name in run_weights, f"{run_name}: computed at load time, not a float weight"
        np.testing.assert_array_equal(run_weights[run_name], fp32_weights[fp32_name])


def test_quantile_ranges_lie_inside_onnx_runtimes_own(digits_onnx, digits_data, digits_val,
                                                      tmp_path):
    """The activation ranges set from each calibration image's extremes (backends/ranges.py)
    against ONNX Runtime's own min / max calibration of the same images (its calibration
    cache, the oracle): every quantile range lies inside ORT's, some are narrower, the same
    tensors have one, and the QDQ model keeps the digits accuracy on images no choice saw.
    The QDQ graphs have the same ops in the same order: the search times them as one graph
    (recipes.VALUES_ONLY)."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    from edgecls.backends.onnx.quantize import OrtQuantizer
    from edgecls.formats import open_session, read_spec
    from edgecls.imaging.datasets import CalibrationSet
    from edgecls.imaging.preprocess import to_model_input

    spec = read_spec(digits_onnx)
    _, calib, _, _ = digits_data
    crops, labels, ref = digits_val
    calibration = CalibrationSet.from_source(calib, spec, size=64)
    quantizer = OrtQuantizer(digits_onnx, spec, calibration, tmp_path, target="x86-vnni")
    assert quantizer.range_choices == ("minmax", "p90", "p75")
    torch_accuracy = float((ref.argmax(1) == labels).mean())
    ops = {}
    for ranges in quantizer.range_choices:
        out = tmp_path / f"{ranges}.onnx"
        quantizer.quantize({**quantizer.default_settings(), "ranges": ranges}, out,
                           spec.derive(precision="int8"))
        with open_session(out, device="cpu", precise_int8=True) as session:
            got = session.run(to_model_input(crops, spec))
        assert float((got.argmax(1) == labels).mean()) >= torch_accuracy - 0.01, ranges
        ops[ranges] = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops["p90"] == ops["p75"] == ops["minmax"]

    def ranges_in(path):
        return {name: (float(np.ravel(d.lowest)[0]), float(np.ravel(d.highest)[0]))
                for name, d in load_tensors_data(path).data.items()}

    own = ranges_in(tmp_path / "calibration.json")
    for name in ("p90", "p75"):
        quantile = ranges_in(tmp_path / f"calibration.{name}.json")
        assert quantile.keys() == own.keys()
        for tensor, (low, high) in quantile.items():
            # ORT calibrates in batches of 8, edgecls image by image: the same float
            # tensors up to float32 summation order (measured on EfficientNet-Lite0: all 95
            # ranges equal within 1e-4 relative)
            slack = 1e-4 * max(1.0, abs(own[tensor][0]), abs(own[tensor][1]))
            assert own[tensor][0] - slack <= low <= high <= own[tensor][1] + slack, tensor
        assert any(high < own[t][1] - 1e-3 or low > own[t][0] + 1e-3
                   for t, (low, high) in quantile.items()), name


def test_sqnr_of_a_tensor_read_through_relu6_counts_only_what_reaches_the_next_layer(tmp_path):
    """Conv -> ReLU6 (Clip 0..6) as ONNX Runtime's QDQ models have it: the conv output's
    QuantizeLinear covers [0, 6] (zero point -128, scale 6/255), the Clip after the
    DequantizeLinear. A hand-built pair of ONNX models, so the oracle is arithmetic: through
    the Clip only rounding is left (step 6/255 on values spread over 0..6: well above 30 dB);
    compared before it, the conv's negative half is "noise" (below 6 dB: about as much
    energy as the signal). The diagnostics' own ranges must find the Clip's 0..6."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import digits_spec
    from edgecls.backends.onnx import diagnostics
    from edgecls.imaging.preprocess import to_model_input

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "W")
    lo, hi = numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")
    scale = numpy_helper.from_array(np.float32(6 / 255), "s")
    zero = numpy_helper.from_array(np.int8(-128), "z")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 32, 32])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)

    def save(nodes, inits, name):
        graph = helper.make_graph(nodes, name, [x], [out], inits)
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        return path

    conv = helper.make_node("Conv", ["input", "W"], ["y"], pads=[1, 1, 1, 1])
    fp32 = save([conv, helper.make_node("Clip", ["y", "lo", "hi"], ["out"])],
                [weight, lo, hi], "fp32")
    int8 = save([conv, helper.make_node("QuantizeLinear", ["y", "s", "z"], ["y_QuantizeLinear_Output"]),
                 helper.make_node("DequantizeLinear", ["y_QuantizeLinear_Output", "s", "z"],
                                  ["y_DequantizeLinear_Output"]),
                 helper.make_node("Clip", ["y_DequantizeLinear_Output", "lo", "hi"], ["out"])],
                [weight, lo, hi, scale, zero], "int8")

    assert diagnostics.activation_clamps(onnx.load(str(fp32))) == {"y": (0.0, 6.0)}
    pixels = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    spec = digits_spec()
    rows, _ = diagnostics.worst_onnx_layers(int8, fp32, spec, pixels)
    [row] = rows
    assert row["tensor"] == "y" and row["kernel_sqnr_db"] > 30 and row["simulated_sqnr_db"] > 30
    # the control: the same tensors compared before the Clip
    inputs = to_model_input(pixels, spec.derive(layout="NCHW", normalization_in_graph=False))
    before, _ = diagnostics._kernel_sqnr(int8, fp32, inputs, {})
    assert before["y"] < 6, before
