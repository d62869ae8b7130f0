"""QAT to full-integer TFLite for every family the mission names first: the ops litert-torch
lowers, on random weights (its own file so that the test scheduler can give it to the worker
that is free: each case lowers a whole network)."""
from __future__ import annotations

import pytest


# -- every family the mission names first, to full-integer TFLite -----------------------------
@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small",
                                  "shufflenet_v1", "shufflenet_v2_x0_5", "squeezenet1_1",
                                  "efficientnet_lite0"])
def test_each_first_family_lowers_to_full_integer_tflite(name):
    """PT2E with edgecls' litert quantizer (observed on a few batches, not trained: the ops
    are the question, random weights are fine) lowers each family to a TFLite model with no
    float op and no HARD_SWISH (which XNNPACK would leave to TFLite's slow built-in kernel);
    convert_qat refuses a model that keeps float ops."""
    import torch

    from edgecls import targets, zoo
    from edgecls.backends.tflite.export import convert_qat
    from edgecls.backends.tflite.quantize import float_ops, op_table
    from edgecls.qat_training.families import FAMILIES
    from edgecls.qat_training.student import QATStudent
    from edgecls.qat_training.training import prepare

    model, spec = zoo.build(name, "none", num_classes=10, labels=[str(i) for i in range(10)])
    spec = spec.derive(input_size=(64, 64), resize=64)
    family = next(f for f in FAMILIES if f.name == "tflite")
    quantizer = family.quantizer(targets.resolve("arm64"))
    module = prepare(model, spec, quantizer)
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(2):
            module(torch.randn(4, 3, 64, 64))
    student = QATStudent(module, model, spec, family, targets.resolve("arm64"), quantizer, None)
    flat = convert_qat(student, spec.derive())
    assert float_ops(flat, allow_boundary=False) == []
    assert "HARD_SWISH" not in {op for op, _, _ in op_table(flat)}
