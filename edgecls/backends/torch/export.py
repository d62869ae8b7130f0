"""PyTorch -> .pt2: the torch.export program (dynamic batch), the spec as an extra file."""
from __future__ import annotations

from pathlib import Path

from edgecls.backends.base import ExportOptions, ExportPaths
from edgecls.spec import SPEC_KEY, ModelSpec


def fp32(source, spec: ModelSpec, out: Path, *, calibration, options: ExportOptions) -> None:
    import torch

    h, w = spec.input_size
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(source.model, (torch.randn(2, spec.channels, h, w),),
                                  dynamic_shapes=({0: batch},))
    spec.exported_from = "torch"
    spec.tools["torch"] = torch.__version__
    torch.export.save(program, str(out), extra_files={SPEC_KEY: spec.to_json()})


#: the format table's exporter for "torch" (FP32 only)
export = ExportPaths(fp32=fp32)
