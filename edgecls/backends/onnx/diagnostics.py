"""Layer-level INT8 diagnostics: which tensors lose the most signal, and which torch module
made them. Uses ONNX Runtime's qdq_loss_debug; edgecls only names the layers."""
from __future__ import annotations

import ast
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.calibration.preprocess import to_model_input
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
                      count: int = 10) -> list[dict[str, Any]]:
    """`fp32_path` must come from the exporter that made the INT8 model's parent
    (ExportSource.onnx()), so that tensor names match."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations,
                                                         compute_activation_error,
                                                         create_activation_matching,
                                                         modify_model_output_intermediate_tensors)

    from edgecls.backends.onnx.quantize import BatchReader

    batches = [to_model_input(pixels[i:i + 1], spec.derive(layout="NCHW")) for i in range(len(pixels))]
    with tempfile.TemporaryDirectory(prefix="edgecls-sqnr-") as work:
        work = Path(work)
        acts = {}
        for tag, src in (("float", fp32_path), ("qdq", int8_path)):
            aug = work / f"{tag}.aug.onnx"
            modify_model_output_intermediate_tensors(str(src), str(aug))
            acts[tag] = collect_activations(str(aug), BatchReader(batches))
        errors = compute_activation_error(create_activation_matching(acts["qdq"], acts["float"]))
        producers = {out: node for node in onnx.load(str(fp32_path)).graph.node for out in node.output}

    rows = [{"tensor": name, "module": torch_module_of(producers[name]) if name in producers else name,
             "op": producers[name].op_type if name in producers else "?",
             "sqnr_db": float(err["xmodel_err"]), "qdq_sqnr_db": float(err["qdq_err"])}
            for name, err in errors.items() if "xmodel_err" in err]
    if not rows:
        raise RuntimeError("no tensor of the INT8 model matched the FP32 model")
    return sorted(rows, key=lambda r: r["sqnr_db"])[:count]
