"""`edgecls parity`'s three outcomes from real artifacts of the digits CNN (labelled), each
through the command line with its documented exit status: 0 pass, 1 fail, 3 inconclusive.

- pass: the FP16 export (an artifact that really is near-lossless);
- fail: a real INT8 export whose activation ranges are then cut to a tenth, so real digits
  clip (broken the way a bad calibration set breaks an export) - beside the same export
  with its ranges intact, which does not fail;
- inconclusive: the FP32 model with its logits scaled so that the mean KL to the reference
  sits on the FP32 tolerance: no sample size decides it, and the report says so.

The oracle for "scaled to the tolerance" is a hand computation in numpy on the torch
model's logits, not the code under test.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecls.cli import main
from edgecls.verdict import EXIT_STATUS, FAIL, INCONCLUSIVE, PASS, TOLERANCES


def parity(capsys, *args) -> tuple[int, dict]:
    out = Path(args[-1])
    code = main(["parity", *map(str, args[:-1]), "-o", str(out)])
    capsys.readouterr()
    return code, json.loads((out / "report.json").read_text())


def test_fp16_passes_with_exit_0(digits_model, digits_onnx, tmp_path, capsys):
    from edgecls.exporting import export
    model, spec = digits_model
    fp16 = export(model, to="onnx", precision="fp16", spec=spec, out=tmp_path / "d.fp16.onnx")
    code, report = parity(capsys, fp16, "--reference", digits_onnx, "--data", "digits",
                          "--limit", "400", tmp_path / "r")
    [r] = report["results"]
    assert r["outcome"] == PASS and code == EXIT_STATUS[PASS] == 0, r["failures"]
    assert report["data"]["labelled"] and r["top1_drop"] is not None


def test_int8_with_broken_ranges_fails_with_exit_1(digits_model, digits_onnx, digits_data,
                                                   tmp_path, capsys):
    """A real INT8 export whose activation ranges are then cut to a tenth (every activation
    QuantizeLinear scale x 0.1): what clipping calibration does, made certain."""
    import onnx
    from onnx import numpy_helper

    from edgecls.exporting import export
    model, spec = digits_model
    _, calib, _, _ = digits_data
    good = export(model, to="onnx", precision="int8", spec=spec, calib=calib,
                  out=tmp_path / "d.int8.onnx", options={"no_search": True}, check=False)
    proto = onnx.load(str(good))
    inits = {t.name: t for t in proto.graph.initializer}
    cut = 0
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            scale = inits[node.input[1]]
            scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 0.1, scale.name))
            cut += 1
    assert cut >= 5
    broken = tmp_path / "broken.int8.onnx"
    onnx.save(proto, str(broken))
    code, report = parity(capsys, broken, "--reference", digits_onnx, "--data", "digits",
                          "--limit", "400", tmp_path / "r")
    [r] = report["results"]
    assert r["outcome"] == FAIL and code == EXIT_STATUS[FAIL] == 1
    failed = {c["name"] for c in r["criteria"] if c["outcome"] == FAIL}
    assert "mean KL(reference || artifact)" in failed, r["criteria"]
    # where it departs: digits are one image per photo, so the five images holding most of the
    # KL, largest share first; a share is that image's KL over the summed KL (n x the mean)
    shares = r["photo_shares"]
    assert len(shares) == 5 and all(p["images"] == 1 for p in shares)
    assert [p["kl_share"] for p in shares] == sorted((p["kl_share"] for p in shares), reverse=True)
    assert shares[0]["kl_share"] == pytest.approx(shares[0]["kl_mean"] / (r["kl_mean"] * r["n"]))
    assert shares[0]["kl_mean"] >= r["kl_mean"]
    for page in ("report.md", "report.html"):
        assert "broken.int8.onnx" in (tmp_path / "r" / page).read_text().split("departs")[1]
    # the export as made (same recipe, ranges intact) is not what fails
    code, report = parity(capsys, good, "--reference", digits_onnx, "--data", "digits",
                          "--limit", "400", tmp_path / "r2")
    assert report["results"][0]["outcome"] != FAIL, report["results"][0]["failures"]


def test_an_artifact_on_the_tolerance_is_inconclusive_with_exit_3(digits_model, digits_onnx,
                                                                  digits_data, tmp_path, capsys):
    """Logits times s keep every top-1 (agreement 100%, no top-1 drop) and move the softmax;
    s is chosen by hand so that the mean KL over the very images parity sees equals the FP32
    tolerance. The interval then straddles the tolerance: inconclusive, exit 3."""
    import onnx
    import torch
    from onnx import helper, numpy_helper

    from edgecls.imaging.preprocess import to_model_input
    model, spec = digits_model
    full, _, _, _ = digits_data
    images = full.subset(120, seed=3)
    with torch.no_grad():
        ref = model(torch.from_numpy(to_model_input(images.crops(spec), spec))).numpy()

    def mean_kl(scale: float) -> float:          # KL(softmax(ref) || softmax(scale * ref))
        def log_softmax(z):
            z = z - z.max(1, keepdims=True)
            return z - np.log(np.exp(z).sum(1, keepdims=True))
        p, q = log_softmax(ref.astype(np.float64)), log_softmax(scale * ref.astype(np.float64))
        return float((np.exp(p) * (p - q)).sum(1).mean())

    target = TOLERANCES["fp32"].max_kl
    low, high = 0.2, 1.0                           # KL falls as the scale nears 1
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if mean_kl(mid) > target else (low, mid)
    scale = (low + high) / 2
    assert abs(mean_kl(scale) - target) < 1e-6

    proto = onnx.load(str(digits_onnx))
    out = proto.graph.output[0]
    proto.graph.initializer.append(numpy_helper.from_array(np.float32([scale]), "edgecls_scale"))
    proto.graph.node.append(helper.make_node("Mul", [out.name, "edgecls_scale"], ["scaled"]))
    out.name = "scaled"
    scaled = tmp_path / "scaled.onnx"
    onnx.save(proto, str(scaled))

    data = tmp_path / "digits"
    for item in images.items:                     # the same 120 images, as a labelled folder
        import cv2
        (data / str(item.label)).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / str(item.label) / f"{item.key.split(':')[1]}.png"),
                    item.rgb()[:, :, ::-1])
    code, report = parity(capsys, scaled, "--reference", digits_onnx, "--data", data,
                          tmp_path / "r")
    [r] = report["results"]
    assert r["agreement"] == 1.0 and r["top1_drop"] == 0.0
    kl = next(c for c in r["criteria"] if c["name"].startswith("mean KL"))
    assert kl["value"] == pytest.approx(target, rel=0.05)
    assert kl["outcome"] == INCONCLUSIVE and kl["ci"][0] < target < kl["ci"][1]
    assert r["outcome"] == INCONCLUSIVE and code == EXIT_STATUS[INCONCLUSIVE] == 3
    assert report["outcome"] == INCONCLUSIVE and r["undecided"]
