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
    simulated = _simulated_sqnr(int8_path, fp32_path, x)
    kernel, method = _kernel_sqnr(int8_path, fp32_path, x)
    producers = {out: node for node in onnx.load(str(fp32_path)).graph.node for out in node.output}
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


def _simulated_sqnr(int8_path: Path, fp32_path: Path, x: np.ndarray) -> dict[str, float]:
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
        errors = compute_activation_error(create_activation_matching(acts["qdq"], acts["float"]))
    return {name: float(err["xmodel_err"]) for name, err in errors.items() if "xmodel_err" in err}


def _kernel_sqnr(int8_path: Path, fp32_path: Path, x: np.ndarray) -> tuple[dict[str, float], str]:
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
        got = (value.astype(np.float32) - np.float32(zero)) * np.float32(scale)
        want = reference[float_name]
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
