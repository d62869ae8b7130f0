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
    data: Any = option("labelled validation images for the INT8 check (a folder, photos, "
                       "digits)")
    max_drop: float | None = option("INT8: the top-1 accuracy drop allowed, in points")


def default_output(spec: ModelSpec, fmt: Format, precision: str, folder: Path = Path("out")) -> Path:
    tag = "" if precision == "fp32" else f".{precision}"
    return folder / f"{spec.name}{tag}{fmt.suffixes[0]}"


def options_for(fmt: str, options: dict[str, Any], formats: list[str]) -> dict[str, Any]:
    """With several formats in one command (--to onnx,openvino), each takes the options it
    (or export's check) declares; an option none of them takes is an error, said once."""
    if len(formats) == 1:
        return options
    names = {f: get_format(f).options.names() | CheckOptions.names() for f in formats}
    unused = [k for k, v in options.items() if v not in (None, False, [], ())
              and not any(k in n for n in names.values())]
    if unused:
        raise UnsupportedOptionError(f"none of {', '.join(formats)} takes "
                                     f"{', '.join('--' + u.replace('_', '-') for u in unused)}")
    return {k: v for k, v in options.items() if k in names[fmt]}


def output_for(out: str | Path | None, formats: list[str]) -> Path | None:
    """export()'s `out` for each of `formats`: the path given for one format; for several, a
    folder (made here) that export() fills with default names."""
    if out is None or len(formats) == 1:
        return Path(out) if out else None
    folder = Path(out)
    if folder.suffix:
        raise UnsupportedOptionError(f"-o {out}: with several formats, -o names a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def export(model: Any, to: str = "onnx", out: str | Path | None = None, *,
           precision: str = "fp32", weights: str = "pretrained", num_classes: int | None = None,
           labels: list[str] | None = None, calib: Any = None, calib_size: int = 300,
           check: bool = True, options: dict[str, Any] | None = None,
           spec: ModelSpec | None = None, strict: bool = False) -> Path:
    """Export a zoo model (by name) or a torch module (with `spec`) to one artifact."""
    from edgecls import zoo

    from edgecls.qat_training.student import QATStudent

    fmt = get_format(to)
    fmt.check_precision(precision)
    student = model if isinstance(model, QATStudent) else None
    if student is not None:
        student.check_export(fmt.name, precision)
    given = dict(options or {})
    checking = CheckOptions.parse({k: given[k] for k in CheckOptions.names() if k in given},
                                  precision, fmt.name)
    # the check's alone (and a QAT student's: no backend recipe of its own uses them)
    for name in CheckOptions.names() - (set() if student else fmt.options.names()):
        given.pop(name, None)
    backend_options = fmt.options.parse(given, precision, fmt.name)
    if student is not None:
        refuse_ptq_options(backend_options, fmt)
    elif precision == "int8" and calib is None:
        raise UnsupportedOptionError("--int8 needs calibration images: --calib DIR "
                                     "(or a built-in set: photos, digits)")
    exporter = fmt.load_exporter()
    if student is not None:    # the teacher is the reference; the training images calibrated
        torch_model, base_spec, calibration = student.teacher, spec or student.spec, \
            student.calibration()
    elif isinstance(model, str):
        torch_model, base_spec = zoo.build(model, weights, num_classes, labels)
    elif spec is None:
        raise TypeError("export(torch_module, ...) needs spec=ModelSpec(...)")
    else:
        torch_model, base_spec = model.eval(), spec
    if precision == "int8" and student is None:
        from edgecls.calibration.datasets import CalibrationSet
        calibration = CalibrationSet.from_source(calib, base_spec, size=calib_size)
    elif student is None:
        calibration = None

    tag = "int8-qat" if student is not None else precision
    out = Path(out) if out else default_output(base_spec, fmt, tag)
    if out.is_dir():
        out = default_output(base_spec, fmt, tag, out)
    if out.suffix.lower() not in fmt.suffixes:
        raise UnsupportedOptionError(f"{out}: a {fmt.name} artifact must end in "
                                     f"{' or '.join(fmt.suffixes)}")
    spec_out = base_spec.derive(format=fmt.name, precision=precision, tools=dict(base_spec.tools))
    finals = [out] + [out.with_suffix(s) for s in fmt.companions]
    with tempfile.TemporaryDirectory(prefix="edgecls-") as work, atomic_paths(*finals) as temps:
        source = ExportSource(student or torch_model, base_spec, Path(work))
        exporter(source, spec_out, temps[0], precision=precision, calibration=calibration,
                 options=backend_options)
        if check and precision != "int8":
            report_check(check_against_torch(temps[0], torch_model, base_spec), spec_out)
        if check and precision == "int8":
            # a QAT artifact is shown next to the PTQ one of the same format and target
            alongside = {} if student is None else {
                "PTQ, same target and images": ptq_twin(student, fmt, Path(work), given,
                                                        calib_size)}
            check_int8(temps[0], out.name, torch_model, base_spec, calibration, checking.data,
                       checking.max_drop, strict, alongside)
    log.info("wrote %s", out)
    return out


def check_int8(path: Path, name: str, model: Any, spec: ModelSpec, calibration, data: Any,
               max_drop: float | None, strict: bool,
               alongside: dict[str, Path] | None = None) -> None:
    """Parity of a fresh INT8 artifact on held-out data; loud on failure, fatal with strict.
    The artifacts `alongside` (by the name to show) share its table, for comparison; only
    the fresh one is judged."""
    alongside = alongside or {}
    from edgecls.errors import ParityFailedError
    from edgecls.verification import parity
    if not spec.trained:
        # random weights give near-constant logits whose top-1 is arbitrary: agreement
        # between FP32 and INT8 would measure nothing
        log.warning("%s has random weights (--weights none): INT8 parity check skipped", spec.name)
        return
    val = calibration.held_out(data, spec)
    if val is None or not len(val):
        log.warning("no held-out images to check the INT8 artifact on: pass --data DIR")
        return
    report = parity([path, *alongside.values()], data=val, reference=model,
                    reference_spec=spec, max_drop=max_drop, sqnr=False, progress=False,
                    device=format_for_path(path).default_device())
    for result, shown in zip(report.results, [name, *alongside]):
        result.name = shown
    report.print()
    if not report.results[0].passed:
        message = f"INT8 parity failed: {'; '.join(report.results[0].failures)}"
        if strict:
            raise ParityFailedError(message + " (--strict: nothing was written)")
        log.error("%s - the artifact is written anyway; inspect it with `edgecls parity`", message)


def refuse_ptq_options(options: ExportOptions, fmt: Format) -> None:
    """A QAT student's quantization is trained: the options of a PTQ recipe do not apply."""
    given = [d.flag for d in options.given() if d.int8_only]
    if given:
        raise UnsupportedOptionError(f"{', '.join(given)}: a QAT student's quantization is "
                                     f"trained; {fmt.name}'s PTQ options do not apply to it")


def ptq_twin(student, fmt: Format, work: Path, options: dict[str, Any], calib_size: int) -> Path:
    """The PTQ artifact of the same format, target and images that a QAT artifact is compared
    with: the teacher calibrated on the student's training images."""
    from edgecls.qat_training.comparison import ptq_options
    out = default_output(student.spec, fmt, "int8-ptq", work / "ptq")
    return export(student.teacher, to=fmt.name, out=out, precision="int8", spec=student.spec,
                  calib=student.calibration(), calib_size=calib_size, check=False,
                  options={**ptq_options(student, fmt), **options})


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
