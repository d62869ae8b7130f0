"""Hard-swish in full-integer TFLite: integer, and inside XNNPACK (backends/tflite/hardswish.py
says why: LiteRT's XNNPACK runs HARD_SWISH only on float tensors)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecls.exporting import export
from edgecls.formats import open_session, read_spec


def test_mobilenet_v3_full_integer_tflite_has_no_hard_swish_op_and_no_float_op(tmp_path):
    """MobileNetV3's hard-swish stays integer in a full-integer TFLite model (a float
    hard-swish between int8 layers made MobileNetV3 INT8 slower elsewhere: ExecuTorch issue
    12360), and is written as MUL, ADD (ReLU6 fused), MUL instead of the one HARD_SWISH op,
    which XNNPACK does not run in int8 (next test). Random weights: the ops are the question;
    the count comes from the torch model."""
    from torch import nn

    from edgecls import zoo
    from edgecls.backends.tflite.quantize import float_ops, op_table
    model, _ = zoo.build("mobilenet_v3_small", "none")
    swishes = sum(isinstance(m, nn.Hardswish) for m in model.modules())
    out = export("mobilenet_v3_small", to="tflite", out=tmp_path / "m.int8.tflite",
                 weights="none", precision="int8", calib="photos", calib_size=16,
                 options={"no_search": True})   # the ops are the question (a search on
    model_bytes = out.read_bytes()               # random weights would rank noise)
    ops = [op for op, _, _ in op_table(model_bytes)]
    assert "HARD_SWISH" not in ops, sorted(set(ops))
    assert float_ops(model_bytes) == []
    assert read_spec(out).notes["tflite"] == {"hardswish_for_xnnpack": swishes} and swishes == 19
    # each hard-swish is two MULs and an ADD (the squeeze-excite gates and residuals add more)
    assert ops.count("MUL") >= 2 * swishes and ops.count("ADD") >= swishes


def _ops_outside_xnnpack(path: Path) -> dict[str, int]:
    """The ops LiteRT's default XNNPACK delegate left to the built-in kernels: those not
    inside any DELEGATE node's partition (read from the interpreter, the runtime's own
    partitioning)."""
    from collections import Counter

    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    ops = it._get_ops_details()
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    made = {t for d in delegates for t in d["outputs"]}
    fed = {t for d in delegates for t in d["inputs"]}
    outside = Counter()
    for o in ops:
        if o["op_name"] == "DELEGATE" or any(t in made for t in o["outputs"]):
            continue
        if any(t in fed for t in o["outputs"]) or any(t in made for t in o["inputs"]) \
                or not delegates:
            outside[o["op_name"]] += 1
    return dict(outside)


def test_int8_hard_swish_runs_inside_xnnpack(tmp_path, monkeypatch):
    """LiteRT's XNNPACK delegate takes HARD_SWISH only on float tensors, so an int8
    HARD_SWISH runs on TFLite's built-in kernel and cuts the graph into partitions (AMD EPYC,
    one thread: nine of them on 112x112x16 took 11.0 ms, the same net with ReLU6 0.46 ms).
    The exporter's rewrite leaves nothing outside XNNPACK and computes what torch does.
    The second half turns the rewrite off: when it fails, XNNPACK runs int8 HARD_SWISH
    itself and edgecls.backends.tflite.hardswish can go."""
    import torch
    from torch import nn

    from edgecls.backends.tflite import export as tflite_export
    from edgecls.imaging.datasets import photo_role
    from edgecls.imaging.preprocess import preprocess
    from edgecls.spec import ModelSpec

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Hardswish(),
                          *[m for _ in range(3) for m in (nn.Conv2d(16, 16, 3, padding=1),
                                                          nn.BatchNorm2d(16), nn.Hardswish())],
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    spec = ModelSpec(name="swishnet", architecture="tests.SwishNet", num_classes=10,
                     labels=[str(i) for i in range(10)], input_size=(48, 48), resize=48,
                     interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = export(model, spec=spec, to="tflite", out=tmp_path / "s.int8.tflite", precision="int8",
                 calib="photos", calib_size=32, check=False)
    assert _ops_outside_xnnpack(out) == {}
    # and it is still the model: torch's logits on the verification photos
    crops = photo_role("verify").items[:48]
    with open_session(out) as s:
        x = preprocess([c.rgb() for c in crops], s.spec)
        got = s.run(x)
    with torch.no_grad():
        want = model(torch.from_numpy(preprocess([c.rgb() for c in crops], spec))).numpy()
    sqnr = 10 * np.log10((want ** 2).sum() / ((want - got) ** 2).sum())
    assert sqnr > 20, sqnr            # int8 logits of this 4-conv net: 50.1 dB measured
    monkeypatch.setattr(tflite_export, "xnnpack_hardswish", lambda m: (m, 0))
    plain = export(model, spec=spec, to="tflite", out=tmp_path / "plain.int8.tflite",
                   precision="int8", calib="photos", calib_size=32, check=False)
    assert _ops_outside_xnnpack(plain).get("HARD_SWISH") == 4
