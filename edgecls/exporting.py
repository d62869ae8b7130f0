"""`edgecls.export(...)`: zoo name or torch model in, verified artifact out.

    export("mobilenet_v3_large", to="onnx", out="out/mnv3.onnx")
    export("efficientnet_lite0", to="openvino", precision="int8", calib="photos")

Every artifact is written to a temporary sibling, checked against PyTorch (or, for INT8,
through parity on held-out data) and only then renamed into place: a failed export leaves
nothing behind.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.backends.base import ExportOptions, Format, option
from edgecls.errors import ExportMismatchError, UnsupportedOptionError
from edgecls.formats import format_for_path, get_format, open_session
from edgecls.io import atomic_paths
from edgecls.sources import ExportSource
from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")

# Export check: the artifact must pick the same top-1 as PyTorch on every sample, and its
# logits must be within this many units of the largest |logit| (relative max-abs error).
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}
# Deep models with random weights amplify rounding; these get a looser relative bound.
MODEL_TOLERANCE = {"vgg19": 5e-3, "vgg19_bn": 5e-3, "densenet201": 5e-3, "inception_v3": 5e-3}


@dataclass(frozen=True)
class CheckOptions(ExportOptions):
    """export()'s own options, for the INT8 check of every format. A backend that uses one
    too (OpenVINO's accuracy control) declares it as well, and then receives it."""
    data: Any = option("INT8: held-out images the recipe is measured and checked on (a folder, "
                       "photos, digits); default: what --calib leaves", int8_only=True)
    max_drop: float | None = option("INT8: the drop allowed, in points: of top-1 accuracy with "
                                    "labelled --data, of agreement with FP32 without",
                                    int8_only=True)


def default_output(spec: ModelSpec, fmt: Format, precision: str, folder: Path = Path("out")) -> Path:
    tag = "" if precision == "fp32" else f".{precision}"
    return folder / f"{spec.name}{tag}{fmt.suffixes[0]}"


def export(model: Any, to: str = "onnx", out: str | Path | None = None, *,
           precision: str = "fp32", weights: str = "pretrained", num_classes: int | None = None,
           labels: list[str] | None = None, calib: Any = None, calib_size: int = 300,
           check: bool = True, options: dict[str, Any] | None = None,
           spec: ModelSpec | None = None, strict: bool = False) -> Path:
    """Export a zoo model (by name) or a torch module (with `spec`) to one artifact;
    `to="best"`: the fastest within tolerance of every backend installed (edgecls.best)."""
    from edgecls import zoo
    from edgecls.best import BEST
    if to == BEST:
        from edgecls.best import export_best
        return export_best(model, out, precision=precision, weights=weights,
                           num_classes=num_classes, labels=labels, calib=calib,
                           calib_size=calib_size, options=options, spec=spec)

    fmt = get_format(to)
    fmt.check_precision(precision)
    given = dict(options or {})
    checking = CheckOptions.parse({k: given[k] for k in CheckOptions.names() if k in given},
                                  precision, fmt.name)
    for name in CheckOptions.names() - fmt.options.names():   # the check's alone
        given.pop(name, None)
    backend_options = fmt.options.parse(given, precision, fmt.name)
    if precision == "int8" and calib is None:
        raise UnsupportedOptionError("--int8 needs calibration images: --calib DIR "
                                     "(or a built-in set: photos, digits)")
    exporter = fmt.load_exporter()
    if isinstance(model, str):
        torch_model, base_spec = zoo.build(model, weights, num_classes, labels)
    elif spec is None:
        raise TypeError("export(torch_module, ...) needs spec=ModelSpec(...)")
    else:
        torch_model, base_spec = model.eval(), spec
    calibration = None
    if precision == "int8":
        from edgecls.calibration.datasets import CalibrationSet
        calibration = CalibrationSet.from_source(calib, base_spec, size=calib_size)

    out = Path(out) if out else default_output(base_spec, fmt, precision)
    if out.suffix.lower() not in fmt.suffixes:
        raise UnsupportedOptionError(f"{out}: a {fmt.name} artifact must end in "
                                     f"{' or '.join(fmt.suffixes)}")
    spec_out = base_spec.derive(format=fmt.name, precision=precision, tools=dict(base_spec.tools))
    finals = [out] + [out.with_suffix(s) for s in fmt.companions]
    with tempfile.TemporaryDirectory(prefix="edgecls-") as work, atomic_paths(*finals) as temps:
        source = ExportSource(torch_model, base_spec, Path(work), validation=checking.data,
                              max_drop=checking.max_drop)
        exporter(source, spec_out, temps[0], precision=precision, calibration=calibration,
                 options=backend_options)
        if check and precision != "int8":
            report_check(check_against_torch(temps[0], torch_model, base_spec), spec_out)
        if check and precision == "int8":
            check_int8(temps[0], out.name, source, calibration, strict)
    log.info("wrote %s", out)
    return out


def check_int8(path: Path, name: str, source: ExportSource, calibration, strict: bool) -> None:
    """Parity of a fresh INT8 artifact on the held-out images its recipe was judged on,
    opened as its recipe was measured (e.g. with exact kernels for a VNNI target made on an
    AVX2 CPU); loud on failure, fatal with strict."""
    from edgecls.errors import ParityFailedError
    from edgecls.verification import parity
    spec = source.spec
    if not spec.trained:
        # random weights give near-constant logits whose top-1 is arbitrary: agreement
        # between FP32 and INT8 would measure nothing
        log.warning("%s has random weights (--weights none): INT8 parity check skipped", spec.name)
        return
    held_out = source.held_out(calibration)
    if held_out is None:
        log.warning("no held-out images to check the INT8 artifact on: pass --data DIR")
        return
    fmt = format_for_path(path)
    recipe = fmt.read_spec(path).quantization or {}
    measured_with = recipe.get("search", {}).get("measured_with", {})
    report = parity([path], data=held_out.images, reference=source.model, reference_spec=spec,
                    max_drop=source.max_drop, sqnr=False, progress=False,
                    device=fmt.default_device(), options=measured_with)
    report.results[0].name = name
    report.print()
    if not report:
        message = f"INT8 parity failed: {'; '.join(report.failures)}"
        if strict:
            raise ParityFailedError(message + " (--strict: nothing was written)")
        log.error("%s - the artifact is written anyway; inspect it with `edgecls parity`", message)


@dataclass
class CheckResult:
    max_abs: float
    rel_error: float
    agreement: float
    n: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.agreement == 1.0 and self.rel_error <= self.tolerance


def sample_inputs(spec: ModelSpec, n: int = 8) -> np.ndarray:
    """Deterministic smooth random images (uint8 NHWC) - no data needed to check an export."""
    import cv2
    rng = np.random.default_rng(0)
    h, w = spec.input_size
    small = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    return np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_CUBIC) for im in small])


def check_against_torch(path: Path, model: Any, spec: ModelSpec, pixels: np.ndarray | None = None,
                        tolerance: float | None = None) -> CheckResult:
    """Run the artifact and the torch model on the same inputs; compare logits."""
    from edgecls.backends.torch.runtime import TorchSession
    from edgecls.calibration.preprocess import to_model_input

    pixels = sample_inputs(spec) if pixels is None else pixels
    with TorchSession.of_module(model, spec) as reference:
        ref = reference.run(to_model_input(pixels, reference.spec))
    with open_session(path, device=format_for_path(path).default_device()) as session:
        got = session.run(to_model_input(pixels, session.spec))
        artifact_precision = session.spec.precision if session.spec.precision in TOLERANCE else "fp32"
    max_abs = float(np.abs(got - ref).max())
    scale = max(1.0, float(np.abs(ref).max()))
    precision = spec.precision if spec.precision in TOLERANCE else "fp32"
    if tolerance is None:
        tolerance = MODEL_TOLERANCE.get(spec.name, TOLERANCE[precision])
        tolerance = max(tolerance, TOLERANCE[artifact_precision])
    agreement = float((got.argmax(1) == ref.argmax(1)).mean())
    return CheckResult(max_abs, max_abs / scale, agreement, len(pixels), tolerance)


def report_check(result: CheckResult, spec: ModelSpec) -> None:
    line = (f"{spec.name} {spec.format} {spec.precision}: max-abs {result.max_abs:.2e} "
            f"(relative {result.rel_error:.2e}, tolerance {result.tolerance:.0e}), "
            f"top-1 agreement {result.agreement:.0%} on {result.n} inputs")
    log.info("export check: %s", line)
    if not result.ok:
        raise ExportMismatchError(f"export check failed: {line}; nothing was written")
