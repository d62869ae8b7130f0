"""`edgecls.export(...)`: a model source (edgecls.sources) in, verified artifact out.

    export("mobilenet_v3_large", to="onnx", out="out/mnv3.onnx")
    export("efficientnet_lite0", to="openvino", precision="int8", calib="photos")
    export("timm:mobilenetv4_conv_small", weights="ckpt.pth", num_classes=37,
           preprocessing={"input_size": 160}, to="openvino")
    export("their_model.onnx", to="onnx", precision="int8", calib="data/calib")

Every artifact is written to a temporary sibling, checked against its reference (PyTorch,
or the source ONNX file in ONNX Runtime; for INT8, through parity on held-out data) and
only then renamed into place: a failed export leaves nothing behind.

No silent loss: an output that is one of the export's inputs (the same path, or a hard or
symbolic link to it) is refused, even with force=True (--force); an output that exists -
any file of the artifact, an OpenVINO .bin included - is refused unless force=True. Both
are checked before any model work.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from edgecls.backends.base import ExportOptions, Format, option
from edgecls.errors import (ExportMismatchError, OutputError, ParityFailedError,
                            UnsupportedOptionError)
from edgecls.formats import format_for_path, get_format, open_session
from edgecls.imaging.datasets import CalibrationSet, check_source, selection_for, verification_for
from edgecls.imaging.preprocess import to_model_input
from edgecls.io import atomic_paths
from edgecls.qat_training.comparison import ptq_options
from edgecls.qat_training.student import QATStudent
from edgecls.search import export_int8
from edgecls.sources import SourceRequest, kind_of, refuse_format, resolve
from edgecls.sources.export_source import ExportSource
from edgecls.spec import ModelSpec
from edgecls.verdict import FAIL
from edgecls.verification import parity

log = logging.getLogger("edgecls")

# Export check: the artifact must pick the same top-1 as PyTorch on every sample, and its
# logits must be within this many units of the largest |logit| (relative max-abs error).
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}
# Deep models with random weights amplify rounding; these get a looser relative bound.
MODEL_TOLERANCE = {"vgg19": 5e-3, "vgg19_bn": 5e-3, "densenet201": 5e-3, "inception_v3": 5e-3}


@dataclass(frozen=True)
class CheckOptions(ExportOptions):
    """export()'s own options: the images of the two roles calibration does not play, and
    the INT8 tolerance. A backend that uses one too (OpenVINO's accuracy control) declares
    it as well, and then receives it."""
    select: Any = option("INT8: selection images - the recipe search and the layers kept in "
                         "float are ranked on them, nothing is judged on them (a folder, "
                         "photos-select, digits); default: what --calib leaves (with --calib "
                         "photos: the selection photos)", int8_only=True)
    data: Any = option("INT8: verification images - the finished artifact is judged on them "
                       "and no choice sees them (a folder, labelled for accuracy; photos-verify); "
                       "default with --calib photos: the verification photos", int8_only=True)
    max_drop: float | None = option("INT8: the drop allowed, in points: of top-1 accuracy with "
                                    "labelled --data, of agreement with FP32 without",
                                    int8_only=True)

#: calibration images drawn when --calib-size is not given
DEFAULT_CALIB_SIZE = 300
#: errno values that mean "the output cannot be written here", not a bug
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES,
                 errno.EPERM}


#: the tag of a QAT artifact's default name (a PTQ one's is its precision: "int8")
QAT_TAG = "int8-qat"


def default_output(spec: ModelSpec, fmt: Format, tag: str, folder: Path = Path("out")) -> Path:
    """The one naming rule of artifacts: <model>[.<tag>]<suffix> in `folder`, where the tag is
    the precision ("fp16", "int8", QAT_TAG ...), and none for FP32."""
    name = str(spec.name)
    if not name or name in (".", "..") or Path(name).name != name or "/" in name or "\\" in name:
        # the spec's name becomes a file name: it must not lead out of the folder
        raise OutputError(f"the model's name {name!r} is not a plain file name; give the "
                          "artifact's path with -o")
    tagged = "" if tag == "fp32" else f".{tag}"
    return Path(folder) / f"{name}{tagged}{fmt.suffixes[0]}"


def planned_output(out: str | Path | None, fmt: Format, spec: ModelSpec, tag: str, *,
                   format_decides_suffix: bool = False) -> Path:
    """The path export() writes for `out`: `out` itself, or the default name in the folder
    `out` names (an existing folder, or a path ending in a separator: made when the
    artifact is written) - in out/ without `out`. With `format_decides_suffix` (`--to best`,
    whose -o is given before the winning format is known) a file `out` takes fmt's suffix."""
    if out is None or _is_folder(out, fmt):
        return default_output(spec, fmt, tag, Path(out) if out else Path("out"))
    if format_decides_suffix and Path(out).suffix.lower() not in fmt.suffixes:
        return Path(out).with_suffix(fmt.suffixes[0])
    return Path(out)


def artifact_files(out: Path, fmt: Format) -> list[Path]:
    """Every file the artifact at `out` is: `out`, then its companions (an OpenVINO .bin)."""
    out = Path(out)
    return [out] + [out.with_suffix(s) for s in fmt.companions]


def refuse_loss(finals: Sequence[Path], inputs: Iterable[Any] = (), force: bool = False) -> None:
    """No silent loss: a file about to be written that IS one of `inputs` (the same path, or
    the same file through a hard or symbolic link) is refused, even with `force`; one that
    exists is refused unless `force`. Inputs that are not paths of existing files (a zoo
    name, a torch module, "photos") are passed over."""
    sources = [Path(i) for i in inputs
               if isinstance(i, (str, os.PathLike)) and str(i) and os.path.isfile(i)]
    for final in finals:
        for source in sources:
            if _same_file(final, source):
                raise OutputError(f"{final} is the input {source}: -o another path (--force "
                                  "never replaces an input)")
    if force:
        return
    for final in finals:
        if os.path.lexists(final):
            whose = "" if final == finals[0] else f" (a file of the artifact {finals[0].name})"
            raise OutputError(f"{final} exists{whose}: pass --force to replace it, or -o "
                              "another path")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)     # st_dev + st_ino: hard links and symlinks too
    except OSError:                       # `a` does not exist (or cannot be looked at)
        return False


def as_folder(path: str | Path) -> str:
    """`path` spelled as a folder (a trailing separator): export() writes its default file
    name in it, making the folder only when the artifact is written."""
    return os.path.join(str(path), "")


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


def output_for(out: str | Path | None, formats: list[str]) -> str | Path | None:
    """export()'s `out` for each of `formats`: the path given for one format; for several, a
    folder that export() fills with default names (spelled with a trailing separator, so
    that it needs not exist: nothing is made before the first artifact is written)."""
    if out is None or len(formats) == 1:
        return out if out else None
    if Path(out).suffix:
        raise UnsupportedOptionError(f"-o {out}: with several formats, -o names a folder")
    return as_folder(out)


def export(model: Any, to: str = "onnx", out: str | Path | None = None, *,
           precision: str = "fp32", weights: str = "pretrained", num_classes: int | None = None,
           labels: list[str] | None = None, calib: Any = None, calib_size: int | None = None,
           check: bool = True, options: dict[str, Any] | None = None,
           spec: ModelSpec | None = None, strict: bool = False,
           preprocessing: dict[str, Any] | None = None, model_kwargs: dict[str, Any] | None = None,
           trust_remote_code: bool = False, force: bool = False) -> Path:
    """Export a model source (a zoo name, "timm:NAME", "torchvision:NAME", a .pt2 program,
    "module:function" with `model_kwargs`, an FP32 .onnx file) or a torch module (with
    `spec`) to one artifact. `preprocessing` overrides the model's own (PreprocessingOptions:
    input_size, resize, mean, std, interpolation, channel_order, channels). `to` is one format
    (`to="best"` is edgecls.api.export's, above this module).
    `out`: the artifact's path, or a folder for the default name (an existing one, or a path
    ending in a separator). An `out` that exists is refused unless `force` (one that is an
    input, always)."""
    fmt = get_format(to)
    fmt.check_precision(precision)
    student = model if isinstance(model, QATStudent) else None
    if student is not None:
        student.check_export(fmt.name, precision)
    given = dict(options or {})
    _refuse_unused(precision, calib, calib_size, check, strict, given, fmt)
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
    inputs = (model, weights, calib, checking.select, checking.data)
    if out is not None and not _is_folder(out, fmt):  # fails before any model work
        check_output(Path(out), fmt, force=force, inputs=inputs)
    if precision == "int8":
        for images in (calib, checking.select, checking.data):
            check_source(images)
    exporter = fmt.load_exporter()
    if student is not None:   # the teacher is the reference; its training images calibrated
        # fed as the student is (pixels - 128 where training folded the normalisation in)
        base_spec = (spec or student.spec).derive(mean=student.spec.mean, std=student.spec.std)
        calibration = student.calibration()
        make_source = lambda work: ExportSource(student, base_spec, work)  # noqa: E731
    else:
        refuse_format(kind_of(model), model, fmt)
        resolved = resolve(model, SourceRequest.of(
            weights=weights, num_classes=num_classes, labels=labels, model_kwargs=model_kwargs,
            trust_remote_code=trust_remote_code, preprocessing=preprocessing, spec=spec))
        base_spec, make_source = resolved.spec, resolved.source
        calibration = None

    if out is None or _is_folder(out, fmt):  # the default name, in out/ or the folder given
        out = planned_output(out, fmt, base_spec, QAT_TAG if student is not None else precision)
        check_output(out, fmt, force=force, inputs=inputs)   # before calibrating
    if student is None and precision == "int8":
        calibration = CalibrationSet.from_source(calib, base_spec,
                                                 size=calib_size or DEFAULT_CALIB_SIZE)
    out = Path(out)
    finals = artifact_files(out, fmt)
    spec_out = base_spec.derive(format=fmt.name, precision=precision, tools=dict(base_spec.tools))
    try:
        with tempfile.TemporaryDirectory(prefix="edgecls-") as work, \
                atomic_paths(*finals, overwrite=force) as temps:
            source = make_source(Path(work))
            source.max_drop = checking.max_drop
            source.selection = selection_for(checking.select, calib)
            source.verification = (verification_for(checking.data, calib) if student is None
                                   else checking.data or student.split.verification)
            tuner = exporter(source, spec_out, temps[0], precision=precision,
                             calibration=calibration, options=backend_options)
            if tuner is not None:     # an INT8 recipe to measure, search and write
                export_int8(tuner, source, calibration, temps[0],
                            search=not getattr(backend_options, "no_search", False))
            if check and precision != "int8":
                report_check(check_against_reference(temps[0], source), spec_out)
            if check and precision == "int8":
                shown, alongside = out.name, {}
                if student is not None:    # QAT earns its place, or its PTQ twin is written
                    twin = ptq_twin(student, fmt, Path(work), given,
                                    calib_size or DEFAULT_CALIB_SIZE)
                    shown, alongside = write_the_closer(temps, twin, Path(work), fmt, out.name,
                                                        source, student)
                check_int8(temps[0], shown, source, calibration, strict, alongside)
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        raise OutputError(f"cannot write {out}: {e.strerror or e} (errno {e.errno}); free some "
                          "space or choose another -o; nothing was written") from None
    log.info("wrote %s", out)
    return out


def _refuse_unused(precision: str, calib: Any, calib_size: int | None, check: bool,
                   strict: bool, given: dict[str, Any], fmt: Format) -> None:
    """Options that would change nothing are refused, never ignored: calibration settings
    without --int8, and --strict without the INT8 check it makes fatal (--data / --max-drop
    still steer the INT8 recipe search with --no-check)."""
    if precision != "int8":
        unused = [flag for flag, value in (("--calib", calib), ("--calib-size", calib_size),
                                           ("--strict", strict)) if value not in (None, False)]
        if unused:
            raise UnsupportedOptionError(f"{', '.join(unused)} apply only to --int8 (this "
                                         f"export is {precision})")
    if calib_size is not None and (isinstance(calib_size, bool) or not isinstance(calib_size, int)
                                   or calib_size < 1):
        raise UnsupportedOptionError(f"--calib-size must be a whole number >= 1, not {calib_size!r}")
    if not check and strict:
        raise UnsupportedOptionError("--strict makes the INT8 check fatal, and --no-check skips "
                                     "it; give one of them")


def _is_folder(out: str | Path, fmt: Format) -> bool:
    """-o names a folder: a path ending in a separator (`-o new/`; --to a,b with -o DIR), or
    an existing folder not named like an artifact. The default file name is written in it."""
    text = os.fspath(out)
    if text.endswith(tuple(s for s in (os.sep, os.altsep) if s)):
        return True
    return Path(out).is_dir() and Path(out).suffix.lower() not in fmt.suffixes


def check_output(out: Path, fmt: Format, *, force: bool = False, inputs: Iterable[Any] = ()) -> None:
    """The artifact can be written at `out`: the format's suffix, not a folder, in a folder
    (or one that can be made) this process can write in; none of its files is one of
    `inputs`, nor (unless `force`) exists. Nothing is created here (the folders are made
    when the artifact is written)."""
    if out.suffix.lower() not in fmt.suffixes:
        raise UnsupportedOptionError(f"{out}: a {fmt.name} artifact must end in "
                                     f"{' or '.join(fmt.suffixes)}")
    finals = artifact_files(out, fmt)
    for final in finals:
        if final.is_dir():
            raise OutputError(f"{final} is a folder; give the artifact's file name, e.g. "
                              f"{final / ('model' + final.suffix if final.suffix else 'model.onnx')}")
    folder = finals[0].parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"cannot write {finals[0]}: {folder} is a file, not a folder")
    try:   # the real test (os.access is wrong for root, ACLs and read-only mounts)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputError(f"cannot write in {folder}: {e.strerror or e}; choose another -o") \
            from None
    refuse_loss(finals, inputs, force)


def check_int8(path: Path, name: str, source: ExportSource, calibration, strict: bool,
               alongside: dict[str, Path] | None = None) -> None:
    """Parity of a fresh INT8 artifact against the source's reference (the torch module, or
    the FP32 ONNX file the source is) on the verification images (source.verification),
    opened as its recipe was measured (e.g. with exact kernels for a VNNI target made on an
    AVX2 CPU); loud on failure, fatal with strict. Without verification images it reports on
    the selection images, and says that those chose the recipe. The artifacts `alongside`
    (by the name to show) share its table, for comparison; only the fresh one is judged."""
    alongside = alongside or {}
    spec = source.spec
    if not spec.trained:
        # random weights give near-constant logits whose top-1 is arbitrary: agreement
        # between FP32 and INT8 would measure nothing
        log.warning("%s has random weights (--weights none): INT8 parity check skipped", spec.name)
        return
    if source.verification is not None:
        data, role = source.verification, "verification"
    else:
        held_out = source.held_out(calibration)
        if held_out is None:
            log.warning("no images to check the INT8 artifact on: pass --data DIR")
            return
        data, role = held_out.images, "selection"
        log.warning("no verification images (--data): the INT8 check below reports on the "
                    "selection images %s, which chose the recipe - optimistic, not a verdict; "
                    "judge it with `edgecls parity %s --data DIR`", held_out.name, name)
    fmt = format_for_path(path)
    report = judge({name: path, **alongside}, source, data, role=role,
                   options=fmt.read_spec(path).measured_with(), device=fmt.default_device())
    result = report.results[0]
    if not result.passed:       # fail, or inconclusive: both named with their criteria
        failed = result.outcome == FAIL
        message = (f"INT8 parity {'failed' if failed else 'inconclusive'} on the {role} "
                   f"images: {'; '.join(result.failures if failed else result.undecided)}")
        if strict:
            raise ParityFailedError(message + " (--strict: nothing was written)")
        (log.error if failed else log.warning)(
            "%s - the artifact is written anyway; inspect it with `edgecls parity`", message)


def judge(artifacts: dict[str, Path], source: ExportSource, data: Any, *,
          role: str = "verification", options: dict[str, Any] | None = None,
          device: str | None = None):
    """Parity of `artifacts` (by the name to show) against the source's reference on `data`,
    printed: the INT8 check's table and `--to best`'s verdict on its winner. The report."""
    report = parity(list(artifacts.values()), data=data, role=role, reference=source.reference,
                    reference_spec=source.spec, max_drop=source.max_drop, sqnr=False,
                    progress=False, device=device, options=options)
    for result, shown in zip(report.results, artifacts):
        result.name = shown
    report.print()
    return report


def refuse_ptq_options(options: ExportOptions, fmt: Format) -> None:
    """A QAT student's quantization is trained: the options of a PTQ recipe do not apply."""
    given = [d.flag for d in options.given() if d.int8_only]
    if given:
        raise UnsupportedOptionError(f"{', '.join(given)}: a QAT student's quantization is "
                                     f"trained; {fmt.name}'s PTQ options do not apply to it")


def write_the_closer(temps: Sequence[Path], twin: Path, work: Path, fmt: Format, name: str,
                     source: ExportSource, student) -> tuple[str, dict[str, Path]]:
    """Keep the QAT artifact in `temps` or put its PTQ `twin` there: whichever is closer to
    the teacher (mean KL) on the selection images the student's epoch was chosen on, never
    on the verification images that judge it; QAT keeps ties. Both are measured with the
    twin's session options (the target's kernels, as its recipe was chosen). Returns the
    written artifact's name and the other one's, for the check's table; the log says why.
    `work`: a scratch folder, for the QAT artifact when the twin takes its place."""
    report = parity([temps[0], twin], data=student.split.validation, role="selection",
                    reference=source.reference, reference_spec=source.spec, sqnr=False,
                    progress=False, device=fmt.default_device(),
                    options=fmt.read_spec(twin).measured_with())
    qat_kl, ptq_kl = (r.kl_mean for r in report.results)
    measured = f"selection KL QAT {qat_kl:.4g}, PTQ {ptq_kl:.4g}"
    if qat_kl <= ptq_kl:
        log.info("QAT is closer to the teacher than its PTQ twin on the selection images "
                 "(%s): writing the QAT artifact", measured)
        return f"{name} (QAT)", {"PTQ twin, not written": twin}
    log.warning("QAT is not closer to the teacher than its PTQ twin on the selection images "
                "(%s): writing the PTQ twin instead; more epochs or another --lr may change "
                "that", measured)
    qat_copy = work / "qat" / name           # kept for the check's table
    qat_copy.parent.mkdir(parents=True, exist_ok=True)
    for temp, kept, twin_file in zip(temps, artifact_files(qat_copy, fmt),
                                     artifact_files(Path(twin), fmt)):
        shutil.copyfile(temp, kept)
        shutil.copyfile(twin_file, temp)
    return f"{name} (PTQ twin)", {"QAT, not written": qat_copy}


def ptq_twin(student, fmt: Format, work: Path, options: dict[str, Any], calib_size: int) -> Path:
    """The PTQ artifact of the same format, target and images that a QAT artifact is compared
    with: the teacher calibrated on the student's training images."""
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


def check_against_reference(path: Path, source: ExportSource, pixels: np.ndarray | None = None,
                            tolerance: float | None = None) -> CheckResult:
    """Run the artifact and the source's reference (the torch model, or the FP32 ONNX file
    the source is) on the same inputs; compare logits."""
    spec = source.spec
    pixels = sample_inputs(spec) if pixels is None else pixels
    with source.reference_session() as reference:
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
