"""Adaptive rounding (edgecls.backends.adaround): the weights it chooses lie on the grid every
backend quantizes to, so a backend's own rounding keeps AdaRound's choice - checked with ONNX
Runtime's quantizer, a tool the rounding never calls. That the choice brings INT8 closer to
FP32 on images it never saw is tested on EfficientNet-Lite0 (test_qat.py: the trained digits
CNN's INT8 is already within KL 4e-5 of FP32, 3.5e-5 rounded adaptively)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ITERATIONS = 300


@pytest.fixture(scope="module")
def rounded_digits(digits_model, digits_data):
    from edgecls.backends.adaround import adaptively_rounded
    from edgecls.imaging.datasets import CalibrationSet

    model, spec = digits_model
    _, calib, _, _ = digits_data
    calibration = CalibrationSet.from_source(calib, spec, size=64)
    rounded, facts = adaptively_rounded(model, calibration, spec, iterations=ITERATIONS)
    return model, rounded, facts, calibration, spec


def _ort_int8(module, spec, calibration, folder: Path) -> tuple[Path, Path]:
    """(the FP32 ONNX export of `module`, ONNX Runtime's own QDQ INT8 of it: s8 weights
    symmetric per channel, u8 activations, min/max on the calibration images)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    from edgecls.backends.onnx.export import export_fp32

    folder.mkdir()
    fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
    export_fp32(module, spec.derive(format="onnx", exported_from="torch"), fp32)
    import onnx
    name = onnx.load(str(fp32)).graph.input[0].name
    batches = list(calibration.batches(spec))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = iter(batches)

        def get_next(self):
            batch = next(self.left, None)
            return None if batch is None else {name: batch}

    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8)
    return fp32, int8


def _weights(fp32: Path, int8: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each Conv / Gemm weight of the FP32 export: (its float values, ONNX Runtime's int8
    values for it, the per-channel scales ONNX Runtime chose)."""
    import onnx
    from onnx import numpy_helper

    floats = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(fp32)).graph.initializer}
    quantized = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(int8)).graph.initializer}
    weights = [n.input[1] for n in onnx.load(str(fp32)).graph.node
               if n.op_type in ("Conv", "Gemm")]
    return {w: (floats[w], quantized[f"{w}_quantized"], quantized[f"{w}_scale"])
            for w in weights if f"{w}_quantized" in quantized}


def _per_channel(scale: np.ndarray, ndim: int) -> np.ndarray:
    return scale.reshape((-1,) + (1,) * (ndim - 1)) if scale.ndim else scale


def test_rounded_weights_are_what_onnx_runtime_quantizes_them_to(rounded_digits, tmp_path):
    """The BatchNorm-folded weights of the rounded model's ONNX export are exact multiples of
    the scale ONNX Runtime picks for them (its int8 values times its scales give them back),
    and they differ from rounding to nearest by one step at most, in some weights only."""
    model, rounded, facts, calibration, spec = rounded_digits
    before = _weights(*_ort_int8(model, spec, calibration, tmp_path / "nearest"))
    after = _weights(*_ort_int8(rounded, spec, calibration, tmp_path / "rounded"))
    assert before.keys() == after.keys() and len(after) >= 4     # the convolutions and the classifier
    assert facts["layers"] == len(after) and facts["iterations"] == ITERATIONS
    flipped = total = 0
    for name, (w, q, scale) in after.items():
        s = _per_channel(scale, w.ndim)
        np.testing.assert_allclose(q * s, w, rtol=1e-5, atol=1e-7 * np.abs(w).max(),
                                   err_msg=f"{name} is off ONNX Runtime's grid")
        assert np.abs(q).max() == 127                  # every channel's largest weight kept
        w0, q0, scale0 = before[name]
        np.testing.assert_allclose(scale0, scale, rtol=1e-6)   # the same scales as before
        step = np.abs(q.astype(int) - q0.astype(int))
        assert step.max() <= 1, f"{name}: AdaRound only rounds up or down"
        flipped += int(step.sum())
        total += step.size
    assert 0.01 < flipped / total < 0.5, flipped / total
    # the test can fail: the unrounded model is not on the grid
    w0, q0, scale0 = next(iter(before.values()))
    assert np.abs(q0 * _per_channel(scale0, w0.ndim) - w0).max() > 1e-4 * np.abs(w0).max()


# -- the cache on disk ---------------------------------------------------------------------
@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder of its own, nothing found in this process yet, and a count of
    the roundings actually computed."""
    from edgecls.backends import adaround

    monkeypatch.setenv(adaround.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(adaround, "_FOUND", {})
    computed = []
    real = adaround._round_layers

    def counted(*args, **kwargs):
        computed.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(adaround, "_round_layers", counted)
    return adaround, tmp_path / "cache" / "adaround", computed


def _round(adaround, rounded_digits, iterations=50):
    model, _, _, calibration, spec = rounded_digits
    return adaround.adaptively_rounded(model, calibration, spec, iterations=iterations)


def _state(module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def test_another_process_reads_the_rounding_from_the_cache(rounded_digits, cache, monkeypatch):
    adaround, folder, computed = cache
    first, facts = _round(adaround, rounded_digits)
    [saved] = folder.glob("*.npz")
    monkeypatch.setattr(adaround, "_FOUND", {})          # as a new process starts
    second, facts_again = _round(adaround, rounded_digits)
    assert len(computed) == 1 and facts_again == facts
    a, b = _state(first), _state(second)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    monkeypatch.setattr(adaround, "_FOUND", {})
    _round(adaround, rounded_digits, iterations=60)      # other settings: another rounding
    assert len(computed) == 2 and len(list(folder.glob("*.npz"))) == 2
    assert saved.exists()


@pytest.mark.parametrize("tamper", ["a weight two steps away", "a pickled object",
                                    "not a zip file", "an unknown layer"])
def test_a_cache_file_that_is_not_what_it_should_be_is_ignored(rounded_digits, cache,
                                                               monkeypatch, tamper):
    """A cache file is untrusted bytes: one that is not plain arrays of this model's layers,
    each weight at most one grid step from the model's, is ignored and the rounding found
    again (and nothing in it runs)."""
    adaround, folder, computed = cache
    model = rounded_digits[0]
    _round(adaround, rounded_digits)
    [saved] = folder.glob("*.npz")
    with np.load(saved, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    name = next(k for k in arrays if k != "facts")
    original = dict(model.named_modules())[name.removeprefix("weight:")].weight.detach().numpy()
    if tamper == "a weight two steps away":
        step = np.abs(original[0]).max() / 127
        arrays[name] = arrays[name].copy()
        arrays[name][0].flat[0] = original[0].flat[0] + 2.5 * step
    elif tamper == "a pickled object":
        arrays[name] = np.array([{"not": "an array"}], dtype=object)
    elif tamper == "an unknown layer":
        arrays["weight:no.such.layer"] = np.zeros(3, np.float32)
    if tamper == "not a zip file":
        saved.write_bytes(b"PK\x03\x04 this is no archive")
    else:
        np.savez(saved, **arrays)
    monkeypatch.setattr(adaround, "_FOUND", {})
    rounded, _ = _round(adaround, rounded_digits)
    assert len(computed) == 2                            # found again, not read
    weights = dict(rounded.named_modules())[name.removeprefix("weight:")].weight.detach().numpy()
    step = np.abs(original.reshape(len(original), -1)).max(1) / 127
    assert (np.abs(weights - original).reshape(len(original), -1).max(1) <= step * 1.0001).all()
