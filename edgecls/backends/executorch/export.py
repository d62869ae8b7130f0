"""PyTorch -> ExecuTorch .pte: torch.export -> to_edge_transform_and_lower (XNNPACK
partitioner) -> to_executorch(); INT8 through PT2E with ExecuTorch's XNNPACK quantizer.

    fp32  the float program, every op the partitioner supports delegated to XNNPACK
    int8  XNNPACKQuantizer: int8 symmetric per-channel weights, int8 asymmetric per-tensor
          static activations calibrated on the CalibrationSet (global min/max by default, or
          quantiles of each image's extremes, backends/ranges.py; --calib-method histogram
          for the quantizer's own observer), then lowered: XNNPACK
          runs the quantized convolutions, adds, multiplies and pools as integer kernels.
          Searched like the other backends (tuning.py) when it misses its tolerance.

The batch is fixed at 1 and the session loops over a batch: with a dynamic batch the
partitioner leaves the flatten (view_copy) and sym_size nodes to the portable CPU kernels,
which splits the program into two XNNPACK subgraphs; with batch 1 it is one delegate.

Lowering and the .pte bytes: program.py; INT8: quantize.py, searched by tuning.py.
The spec is a constant method of the program (container.py). Which nodes XNNPACK took and
which fell back to the portable kernels goes into spec.notes["executorch"]; a program that
is not fully delegated logs a warning that names the fallbacks.
"""
from __future__ import annotations

from pathlib import Path

from edgecls import targets
from edgecls.backends.base import ExportPaths
from edgecls.backends.executorch import ExecuTorchOptions
from edgecls.backends.executorch.program import finish, lower, versions, warn_if_partial
from edgecls.backends.executorch.tuning import ExecuTorchTuner
from edgecls.backends.onnx.torch_start import starts
from edgecls.backends.pixel_input import pixel_starts
from edgecls.errors import DataError
from edgecls.spec import ModelSpec


# -- the export paths (base.ExportPaths), the format table's exporter for "executorch"
def _describe(spec: ModelSpec) -> None:
    """The spec's fields every path shares."""
    spec.layout = "NCHW"
    spec.exported_from = "torch"
    spec.input_dtype = "float32"
    spec.tools.update(versions())
    spec.notes["batch"] = "fixed 1 (the session loops over a batch)"


def _write(model, spec: ModelSpec, out: Path) -> None:
    program, facts = lower(model, spec)
    spec.notes["executorch"] = facts
    warn_if_partial(spec.name, facts)
    Path(out).write_bytes(finish(program, spec))


def fp32(source, spec: ModelSpec, out: Path, *, calibration, options: ExecuTorchOptions) -> None:
    _describe(spec)
    _write(source.model, spec, out)


def int8(source, spec: ModelSpec, out: Path, *, calibration, options: ExecuTorchOptions):
    """The Tuner (the XNNPACK PT2E quantizer) the recipe search runs."""
    _describe(spec)
    if not len(calibration):
        raise DataError("the calibration set is empty")
    # PT2E quantizes copies of the model: bias-corrected (NNCF), and adaptively rounded
    # first when the search is to choose; they take pixels - 128 (scaled) where the first
    # convolution can take the normalisation (XNNPACK quantizes the input too)
    found = pixel_starts(starts(source, calibration, rounding=not options.no_search),
                         source.spec, spec, calibration)
    return ExecuTorchTuner(found, spec, calibration, targets.resolve(options.target),
                           observer=options.calib_method or "minmax",
                           keep_float=tuple(options.keep_float or ()))


def qat(source, spec: ModelSpec, out: Path, *, calibration, options: ExecuTorchOptions) -> None:
    """Lowers the trained scales."""
    _describe(spec)
    source.student.record(spec, "executorch")
    spec.tools.update(versions())
    _write(source.student.converted(fold_quantize=True), spec, out)


export = ExportPaths(fp32=fp32, int8=int8, qat=qat)


__all__ = ["export"]
