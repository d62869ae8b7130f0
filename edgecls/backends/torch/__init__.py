"""PyTorch itself as a backend: a torch.nn.Module, or a .pt2 program (torch.export), run
through the same Session / Classifier as every artifact. Parity's reference is a session of
this backend; `edgecls export --to torch` writes the .pt2 (with the spec inside)."""
from __future__ import annotations

from edgecls.backends.base import Format

FORMAT = Format(
    "torch", (".pt2",),
    runtime="edgecls.backends.torch.runtime:TorchSession", requires=("torch",), extra="torch",
    container="edgecls.backends.torch.container",   # a zip archive: read without torch
    exporter="edgecls.backends.torch.export:export", export_requires=("torch",),
    precisions=("fp32",), devices=("cpu", "gpu", "auto"),
    description="PyTorch: a torch.export program (.pt2), CPU or CUDA")
