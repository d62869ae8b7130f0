"""Layer-level INT8 diagnostics: which tensors lose the most signal, which torch module made
them, and whether the integer kernels that really run lose more than quantization itself.

Two SQNRs per quantized activation, against the FP32 model on the same images:

  kernel     read from the kernels ONNX Runtime really runs. The int8 outputs of the
             QuantizeLinear nodes become graph outputs: ORT still fuses DQ->op->Q into its
             integer kernels (QLinearConv, ...), whose int8 output is exactly that tensor;
             the logits are checked to be bit-identical with and without the extra outputs,
             so the measurement does not disturb what it measures.
  simulated  ORT's qdq_loss_debug: the QDQ graph with every float tensor exposed, which stops
             ORT from fusing, so it computes in float - what an exact (VNNI, ARM) kernel gives.

A layer whose kernel SQNR is far below its simulated SQNR is where THIS CPU's kernels lose
signal (on x86 without VNNI: VPMADDUBSW saturation). Measured on EfficientNet-Lite0, AMD EPYC
AVX2: the simulated table is the same on every CPU (bn2.act 16.8 dB ...) while the kernel
table shows the saturating blocks.
"""
from __future__ import annotations

import ast
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.backends.onnx.quantize import BatchReader
from edgecls.imaging.preprocess import to_model_input
from edgecls.spec import ModelSpec


def torch_module_of(node) -> str:
    """The innermost torch module a dynamo-exported ONNX node came from."""
    meta = {p.key: p.value for p in node.metadata_props}
    scopes = meta.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            names = ast.literal_eval(scopes)
            modules = [n for n in names[:-1] if n]  # the last entry is the aten op itself
            if modules:
                return modules[-1]
            return f"forward: {names[-1]}"  # an op in the model's own forward()
        except (ValueError, SyntaxError):
            pass
    return node.name


def worst_onnx_layers(int8_path: Path, fp32_path: Path, spec: ModelSpec, pixels: np.ndarray,
                      count: int = 10) -> tuple[list[dict[str, Any]], str]:
    """(rows sorted by kernel SQNR, the method). `fp32_path` must come from the exporter
    that made the INT8 model's parent (ExportSource.onnx()), so that tensor names match."""
    import onnx

    x = to_model_input(pixels, spec.derive(layout="NCHW", normalization_in_graph=False))
    fp32 = onnx.load(str(fp32_path))
    clamps = activation_clamps(fp32)
    simulated = _simulated_sqnr(int8_path, fp32_path, x, clamps)
    kernel, method = _kernel_sqnr(int8_path, fp32_path, x, clamps)
    producers = {out: node for node in fp32.graph.node for out in node.output}
    rows = []
    for name in sorted(set(kernel) | set(simulated)):
        node = producers.get(name)
        rows.append({"tensor": name, "module": torch_module_of(node) if node else name,
                     "op": node.op_type if node else "?",
                     "sqnr_db": kernel.get(name, simulated.get(name)),
                     "kernel_sqnr_db": kernel.get(name), "simulated_sqnr_db": simulated.get(name)})
    if not rows:
        raise RuntimeError("no tensor of the INT8 model matched the FP32 model")
    return sorted(rows, key=lambda r: r["sqnr_db"])[:count], method


def activation_clamps(fp32) -> dict[str, tuple[float, float]]:
    """float tensor -> (low, high) of the Relu or Clip that is its only reader in the FP32
    model. What reaches the next layer is the activation's output, and ONNX Runtime's QDQ
    quantizer gives such a tensor the activation's range (or drops the Relu): its int8 values
    never held what the activation discards. Both SQNRs compare the tensors through the
    activation; compared before it, every discarded negative counted as noise
    (EfficientNet-Lite2, ORT INT8 that passes at KL 0.009: 0.1 - 0.5 dB for ten ReLU6 layers)."""
    from onnx import numpy_helper
    constants = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    for node in fp32.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    readers: dict[str, list] = {}
    for node in fp32.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def bound(node, index: int, default: float) -> float | None:
        if len(node.input) <= index or not node.input[index]:
            return default
        value = constants.get(node.input[index])
        return None if value is None or value.size != 1 else float(value)

    found = {}
    for name, nodes in readers.items():
        if len(nodes) != 1 or nodes[0].op_type not in ("Relu", "Clip") or nodes[0].input[0] != name:
            continue
        node = nodes[0]
        low, high = ((0.0, np.inf) if node.op_type == "Relu"
                     else (bound(node, 1, -np.inf), bound(node, 2, np.inf)))
        if low is not None and high is not None:
            found[name] = (low, high)
    return found


def _through(clamp: tuple[float, float] | None, values):
    """`values` (an array or a list of arrays) through the activation `clamp`, if any."""
    if clamp is None:
        return values
    if isinstance(values, np.ndarray):
        return np.clip(values, *clamp)
    return [np.clip(v, *clamp) for v in values]


def _simulated_sqnr(int8_path: Path, fp32_path: Path, x: np.ndarray,
                    clamps: dict[str, tuple[float, float]]) -> dict[str, float]:
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations,
                                                         compute_activation_error,
                                                         create_activation_matching,
                                                         modify_model_output_intermediate_tensors)

    batches = [x[i:i + 1] for i in range(len(x))]
    with tempfile.TemporaryDirectory(prefix="edgecls-sqnr-") as work:
        acts = {}
        for tag, src in (("float", fp32_path), ("qdq", int8_path)):
            aug = Path(work) / f"{tag}.aug.onnx"
            modify_model_output_intermediate_tensors(str(src), str(aug))
            acts[tag] = collect_activations(str(aug), BatchReader(batches))
        matching = create_activation_matching(acts["qdq"], acts["float"])
        for name, match in matching.items():
            for key in ("pre_qdq", "post_qdq", "float"):
                if match.get(key):
                    match[key] = _through(clamps.get(name), match[key])
        errors = compute_activation_error(matching)
    return {name: float(err["xmodel_err"]) for name, err in errors.items() if "xmodel_err" in err}


def _kernel_sqnr(int8_path: Path, fp32_path: Path, x: np.ndarray,
                 clamps: dict[str, tuple[float, float]]) -> tuple[dict[str, float], str]:
    """SQNR of every QuantizeLinear output as the fused integer kernels computed it."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(int8_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantized = {n.output[0]: (n.input[0], inits[n.input[1]], inits[n.input[2]])
                 for n in model.graph.node if n.op_type == "QuantizeLinear"
                 and n.input[1] in inits and len(n.input) > 2 and n.input[2] in inits
                 and inits[n.input[1]].size == 1}
    if not quantized:
        return {}, "simulated QDQ only (no quantized activations to read)"
    plain = _run(ort, model.SerializeToString(), x, [model.graph.output[0].name])[0]
    for name in quantized:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    names = [model.graph.output[0].name] + list(quantized)
    values = _run(ort, model.SerializeToString(), x, names)
    if not np.array_equal(plain, values[0]):   # the extra outputs changed the fusion
        return {}, ("simulated QDQ only: exposing the int8 tensors changed ONNX Runtime's "
                    "fusion, so they would not be the ones that run")
    fp32 = onnx.load(str(fp32_path))
    for float_name, _, _ in quantized.values():
        fp32.graph.output.append(onnx.ValueInfoProto(name=float_name))
    float_names = [f for f, _, _ in quantized.values()]
    reference = dict(zip(float_names, _run(ort, fp32.SerializeToString(), x, float_names,
                                           optimize=False)))
    result = {}
    for (q_name, (float_name, scale, zero)), value in zip(quantized.items(), values[1:]):
        clamp = clamps.get(float_name)
        got = _through(clamp, (value.astype(np.float32) - np.float32(zero)) * np.float32(scale))
        want = _through(clamp, reference[float_name])
        noise = float(((want - got) ** 2).sum())
        result[float_name] = float(10 * np.log10(float((want ** 2).sum()) / max(noise, 1e-30)))
    return result, ("kernel SQNR: read from the int8 outputs of the fused integer kernels ONNX "
                    "Runtime runs on this CPU (logits unchanged by reading them); simulated "
                    "SQNR: ORT's qdq_loss_debug, float QDQ as exact kernels compute it")


def _run(ort, model: bytes, x: np.ndarray, outputs: list[str], optimize: bool = True):
    options = ort.SessionOptions()
    if not optimize:   # keep every FP32 tensor exactly as the graph names it
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(outputs, {session.get_inputs()[0].name: x})
