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


class _ListReader:
    """An ORT CalibrationDataReader (get_next) that is also iterable, as
    collect_activations wants."""

    def __init__(self, batches: list[np.ndarray]):
        self._batches = batches
        self._it = iter(batches)

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {"input": x}

    def __iter__(self):
        return ({"input": x} for x in self._batches)

    def rewind(self):
        self._it = iter(self._batches)


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


def worst_onnx_layers(int8_path: Path, model: Any, spec: ModelSpec, pixels: np.ndarray,
                      count: int = 10) -> list[dict[str, Any]]:
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations,
                                                         compute_activation_error,
                                                         create_activation_matching,
                                                         modify_model_output_intermediate_tensors)

    from edgecls.exporters.onnx import export_fp32

    batches = [to_model_input(pixels[i:i + 1], spec.derive(layout="NCHW")) for i in range(len(pixels))]
    with tempfile.TemporaryDirectory(prefix="edgecls-sqnr-") as work:
        work = Path(work)
        fp32 = work / "fp32.onnx"
        # The same exporter that made the quantized model's parent: same tensor names.
        export_fp32(model, spec.derive(format="onnx", precision="fp32", tools={}), fp32)
        acts = {}
        for tag, src in (("float", fp32), ("qdq", int8_path)):
            aug = work / f"{tag}.aug.onnx"
            modify_model_output_intermediate_tensors(str(src), str(aug))
            acts[tag] = collect_activations(str(aug), _ListReader(batches))
        errors = compute_activation_error(create_activation_matching(acts["qdq"], acts["float"]))
        producers = {out: node for node in onnx.load(str(fp32)).graph.node for out in node.output}

    rows = [{"tensor": name, "module": torch_module_of(producers[name]) if name in producers else name,
             "op": producers[name].op_type if name in producers else "?",
             "sqnr_db": float(err["xmodel_err"]), "qdq_sqnr_db": float(err["qdq_err"])}
            for name, err in errors.items() if "xmodel_err" in err]
    if not rows:
        raise RuntimeError("no tensor of the INT8 model matched the FP32 model")
    return sorted(rows, key=lambda r: r["sqnr_db"])[:count]
