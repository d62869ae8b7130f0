"""Bias correction for every CPU INT8 recipe: NNCF's full bias correction, found on the FP32
ONNX model and carried into what each backend quantizes.

Quantizing a layer's weights shifts the mean of its output; bias correction measures that
shift on calibration images, layer after layer with the layers before it already
quantized, and subtracts it from the layer's bias (Nagel et al., "Data-Free Quantization",
2019; NNCF's BiasCorrection). ORT's quantizer has no bias correction; NNCF's ONNX backend
has it, but the QDQ graph NNCF writes is not in the form ORT fuses into integer kernels
(float bias, Clip between Conv and Q, s8 activations): ORT runs it at 0.33x FP32 speed
(EfficientNet-Lite0, AMD EPYC with VNNI). Both quantize weights the same way (s8,
symmetric, per output channel), so the corrected biases are taken from NNCF's result into a
copy of the FP32 model, and ORT quantizes that. EfficientNet-Lite0, ORT min/max, x86-vnni,
AMD EPYC with VNNI: mean KL to FP32 on the 351 verification crops 0.088 -> 0.024, decisive
agreement 97.3% -> 100% (NNCF's own QDQ graph: 0.032).

Backends that quantize the torch model themselves (full-integer TFLite, ExecuTorch) and QAT
get the same correction in torch: each corrected ONNX bias is mapped back, through the exporter's node
metadata, to the torch parameter it came from - the BatchNorm folded into the convolution
(its shift moves the folded bias one for one) or the convolution's own bias. EfficientNet-
Lite0, AMD EPYC with VNNI, 351 verification crops: full-integer TFLite KL 0.105 -> 0.032,
ExecuTorch 0.105 -> 0.031.

The reference stays the unmodified FP32 model: the corrected one exists only to be quantized.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")

#: calibration images NNCF's statistics use (its default subset size)
BIAS_CORRECTION_IMAGES = 300

#: corrections already found in this process, by digest of (FP32 graph, calibration images,
#: layers left alone): a QAT run, its PTQ twin and an INT8 export of the same model from the
#: same images ask for the same one (10-20 s of NNCF each for EfficientNet-Lite0 on 2 cores)
_FOUND: dict[str, dict[str, np.ndarray] | None] = {}
_FOUND_KEPT = 8


def available() -> bool:
    """NNCF comes with the openvino extra; without it the INT8 recipes run uncorrected, and
    the log says so."""
    try:
        import nncf  # noqa: F401
    except ImportError:
        log.info("NNCF is not installed (pip install 'edgecls[openvino]'): INT8 recipes run "
                 "without bias correction")
        return False
    return True


def bias_corrected(fp32_path: Path, spec: ModelSpec, calibration, out: Path,
                   ignored: Sequence[str] = ()) -> int | None:
    """Write to `out` the FP32 model of `fp32_path` with the biases NNCF's full bias
    correction gives its Conv and Gemm layers (the `ignored` ones keep theirs: they stay in
    float). Returns how many biases changed; None (nothing written) when NNCF fails."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32_path))
    biases = _corrected_biases(model, spec, calibration, ignored)
    if biases is None:
        return None
    weights = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.name in biases:
            weights[node.input[2]].CopyFrom(numpy_helper.from_array(biases[node.name],
                                                                    node.input[2]))
    onnx.save(model, str(out))
    return len(biases)


def corrected_module(module, fp32_onnx: Path, spec: ModelSpec, calibration):
    """A copy of the torch `module` carrying the full bias correction found on its FP32 ONNX
    export `fp32_onnx` (every layer quantized, as a full-integer backend does; `spec` says
    how that export is fed), and what the spec records about it - or `module` itself and
    None where NNCF is not installed or could not correct this graph."""
    import copy

    import onnx
    import torch
    from onnx import numpy_helper

    if not available():
        return module, None
    model = onnx.load(str(fp32_onnx))
    biases = _corrected_biases(model, spec, calibration)
    if biases is None:
        return module, None
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    module = copy.deepcopy(module)
    parameters = dict(module.named_parameters())
    moved, unmapped = 0, []
    with torch.no_grad():
        for node in model.graph.node:
            if node.op_type != "Conv" or node.name not in biases:
                continue
            delta = biases[node.name] - values[node.input[2]]
            name = _torch_bias_of(node)
            if name not in parameters or tuple(parameters[name].shape) != delta.shape:
                unmapped.append(node.name)
                continue
            parameters[name] += torch.from_numpy(delta).to(parameters[name].dtype)
            moved += 1
    if unmapped:
        log.warning("bias correction: %d layer(s) could not be traced back to a torch "
                    "parameter and keep their bias (%s)", len(unmapped), ", ".join(unmapped[:5]))
    return module, {"tool": "nncf (full bias correction), applied to the torch model",
                    "layers": moved}


def _corrected_biases(model, spec: ModelSpec, calibration,
                      ignored: Sequence[str] = ()) -> dict[str, np.ndarray] | None:
    """Node name -> corrected bias (the FP32 bias's dtype) of every Conv and Gemm of the ONNX
    `model` whose bias NNCF's full bias correction changed; None when NNCF fails. Found once
    per process for one graph and one set of calibration images (_FOUND)."""
    name = model.graph.input[0].name
    images = [b[None] for batch in calibration.batches(spec) for b in batch]
    key = _digest(model, images, ignored)
    if key in _FOUND:
        found = _FOUND[key]
        log.info("bias correction (NNCF, full): the one found earlier for this graph and "
                 "these calibration images")
        return None if found is None else dict(found)
    biases = _nncf_biases(model, name, images, ignored)
    while len(_FOUND) >= _FOUND_KEPT:
        _FOUND.pop(next(iter(_FOUND)))
    _FOUND[key] = biases
    return None if biases is None else dict(biases)


def _digest(model, images: list[np.ndarray], ignored: Sequence[str]) -> str:
    """The graph (its metadata, where the spec travels, differs between exports of one
    model), the images, the layers left alone."""
    import hashlib
    h = hashlib.sha256(model.graph.SerializeToString())
    for opset in model.opset_import:
        h.update(f"{opset.domain}:{opset.version};".encode())
    for image in images:
        h.update(np.ascontiguousarray(image).tobytes())
    h.update("\0".join(sorted(ignored)).encode())
    return h.hexdigest()


def _nncf_biases(model, name: str, images: list[np.ndarray],
                 ignored: Sequence[str]) -> dict[str, np.ndarray] | None:
    import nncf
    from nncf.parameters import TargetDevice
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from onnx import numpy_helper

    nncf.set_log_level(logging.WARNING)   # its INFO lines (ignored nodes...) would drown ours
    try:
        quantized = nncf.quantize(
            model, nncf.Dataset(images, lambda x: {name: x}),
            subset_size=min(len(images), BIAS_CORRECTION_IMAGES), fast_bias_correction=False,
            target_device=TargetDevice.CPU,
            ignored_scope=nncf.IgnoredScope(names=list(ignored), validate=False),
            # the weights NNCF corrects for are plain 8-bit ones, as ORT's quantizer makes them
            advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.DISABLE))
    except Exception as e:     # an improvement, never a reason to fail the export
        # (NNCF 3.4's full bias correction raised KeyError on the tests' digits CNN with
        # every layer corrected)
        log.warning("bias correction skipped: NNCF failed on this graph (%s: %s); the INT8 "
                    "recipe runs without it", type(e).__name__, str(e).splitlines()[0][:120]
                    if str(e) else "")
        return None
    after = {i.name: i for i in quantized.graph.initializer}
    twins = {n.name: n for n in quantized.graph.node if n.op_type in ("Conv", "Gemm")}
    before = {i.name: i for i in model.graph.initializer}
    biases = {}
    for node in model.graph.node:
        twin = twins.get(node.name)
        if twin is None or len(node.input) < 3 or len(twin.input) < 3 \
                or twin.input[2] not in after or node.input[2] not in before:
            continue
        old = numpy_helper.to_array(before[node.input[2]])
        new = numpy_helper.to_array(after[twin.input[2]]).astype(old.dtype)
        if new.shape == old.shape and not np.array_equal(old, new):
            biases[node.name] = new
    log.info("bias correction (NNCF, full): %d of %d layers' biases corrected", len(biases),
             len(twins))
    return biases


def _torch_bias_of(node) -> str | None:
    """The torch parameter an exported Conv's bias comes from: the bias of the BatchNorm the
    exporter folded into it (named by the node's scope), else the convolution's own
    (named like its weight)."""
    import ast
    meta = {p.key: p.value for p in node.metadata_props}
    if "FuseBatchNormIntoConv" in meta.get("pkg.onnxscript.rewriter.rule_name", ""):
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        return f"{scopes[-2]}.bias" if len(scopes) >= 2 else None
    weight = node.input[1]
    return weight.removesuffix(".weight") + ".bias" if weight.endswith(".weight") else None


__all__ = ["available", "bias_corrected", "corrected_module", "BIAS_CORRECTION_IMAGES"]
