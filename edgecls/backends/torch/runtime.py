"""PyTorch session: a .pt2 program (torch.export) or an in-memory torch.nn.Module.

    with TorchSession("model.pt2") as s: ...                    # an artifact, like any other
    ref = TorchSession.of_module(model, spec)                    # parity's PyTorch reference

Input is what the module takes: NCHW float32, normalised as the spec says. Devices: "cpu",
"gpu" (CUDA, when this torch has it), "auto" (CUDA if present, else CPU). `threads` sets
torch's intra-op threads, which are process-wide in PyTorch.

A .pt2 is loaded without running code from the file (backends/torch/program.py: tensors
only; an archive holding pickled Python objects is refused).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgecls.backends.base import Session
from edgecls.backends.torch import FORMAT
from edgecls.backends.torch.container import spec_of
from edgecls.backends.torch.program import load_program
from edgecls.errors import DeviceUnavailableError
from edgecls.spec import ModelSpec


class TorchSession(Session):
    format = FORMAT
    backend = "torch"

    @classmethod
    def of_module(cls, module: Any, spec: ModelSpec, device: str | None = None,
                  threads: int | None = None) -> TorchSession:
        """A session over a module in memory, fed as `spec` preprocesses (NCHW float)."""
        session = cls.__new__(cls)
        session.path = None
        session._prepare(device, threads, fallback=False, options={})
        session.spec = spec.derive(format="torch", layout="NCHW", normalization_in_graph=False,
                                   input_dtype="float32")
        session._start(module)
        return session

    def _open(self) -> None:
        with open(self.path, "rb") as f:     # read once: the spec, then the program
            self.spec = spec_of(f, self.path)
            f.seek(0)
            program = load_program(f, self.path)
        self._start(program.module())

    def _start(self, module: Any) -> None:
        import torch
        self._torch = torch
        if self.threads:
            torch.set_num_threads(int(self.threads))
        cuda = torch.cuda.is_available()
        if self.device == "gpu" and not cuda and not self.fallback:
            raise DeviceUnavailableError("this torch has no CUDA GPU; use --device cpu, or "
                                         "allow --fallback")
        self.device_used = "gpu" if cuda and self.device in ("gpu", "auto") else "cpu"
        self._target = torch.device("cuda" if self.device_used == "gpu" else "cpu")
        self._module = module.to(self._target)
        self.precision_used = "fp32"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            x = self._torch.from_numpy(batch).to(self._target)
            return self._module(x).float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "torch": self._torch.__version__}
