"""The contracts every backend fills: its Format row, its export options, its Exporter, its
Container and its Session.

A backend is a package whose __init__ defines FORMAT, a Format row. The row and the export
options class import nothing heavy, so the format table, `edgecls formats` and the CLI's
flags cost nothing; the code that does the work is named by "module:attribute" strings and
imported when an artifact of that format is made or opened, so a missing library is an
error that names its pip extra.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from edgecls import hardware, targets
from edgecls.errors import (ArtifactError, DeviceUnavailableError, MissingDependencyError,
                            UnknownFormatError, UnsupportedOptionError)
from edgecls.options import Declared, ExportOptions, flag_of, option  # noqa: F401
from edgecls.spec import ModelSpec

if TYPE_CHECKING:
    from edgecls.backends.recipes import HeldOut, Tuner
    from edgecls.imaging.datasets import CalibrationSet

DEVICES = ("cpu", "gpu", "npu", "auto")
PRECISIONS = ("fp32", "fp16", "int8")


# -- export options: declared in edgecls.options (the CLI and export() read them too) ----
@dataclass(frozen=True)
class TargetedOptions(ExportOptions):
    """The INT8 options every CPU backend takes (edgecls.targets, edgecls.search): which kind
    of device the recipe is for, and whether its measured search may change it."""
    target: str | None = option(
        "INT8 target: auto (this machine, the default) | x86-vnni | x86-avx2 | arm64 | portable "
        "| tensorrt (`edgecls hw` shows this machine)", int8_only=True)
    no_search: bool = option("INT8: write the target's recipe as it is, even when it misses "
                             "its tolerance on held-out images (no per-layer search)",
                             int8_only=True, default=False)


# -- exporting -----------------------------------------------------------------------------
class ExportContext(Protocol):
    """What an exporter may ask of the model it exports (edgecls.sources.export_source.ExportSource, a
    service above the backends, fills it): the torch model or a QAT student, the FP32 ONNX
    made from it at most once, the work folder of this export and the INT8 selection images."""
    model: Any                  # a torch module; None when the source is an ONNX file
    spec: ModelSpec
    workdir: Path               # lives as long as this export
    onnx_opset: int | None

    @property
    def student(self) -> Any: ...              # the QATStudent being exported, or None
    def onnx(self, opset: int | None = None) -> Path: ...
    def qat_onnx(self) -> Path: ...
    def held_out(self, calibration: Any = None) -> HeldOut | None: ...


class Exporter(Protocol):
    """What a row's `exporter` names. It writes one artifact to `out` (a temporary sibling
    of the final path, renamed by export() once the artifact passed its check) and fills in
    `spec` (tools, layout, quantization recipe ...) before embedding it. `calibration` is
    given exactly when precision is "int8"; `options` is the row's options class, parsed.
    A PTQ INT8 exporter writes nothing: it returns its Tuner (edgecls.backends.recipes), and
    the recipe search (edgecls.search) measures, chooses and writes with it. Every built-in
    backend's is an ExportPaths."""

    def __call__(self, source: ExportContext, spec: ModelSpec, out: Path, *, precision: str,
                 calibration: CalibrationSet | None, options: ExportOptions) -> Tuner | None: ...


class ExportPath(Protocol):
    """One way to an artifact: an Exporter whose precision is given by its name."""

    def __call__(self, source: ExportContext, spec: ModelSpec, out: Path, *,
                 calibration: CalibrationSet | None, options: Any) -> Tuner | None: ...


@dataclass(frozen=True)
class ExportPaths:
    """A backend's Exporter as its export paths, by the same names in every backend: one per
    precision its Format row lists - fp32 and fp16 write `out`; int8 returns the Tuner the
    recipe search runs (or writes `out` itself where there is nothing to search: TensorRT) -
    and qat, the INT8 artifact of a QAT student (edgecls.qat_training) with its trained
    scales, for the backends QAT trains for. A precision the backend lacks is not declared:
    the row's `precisions` say which there are, and `path` is the one place that picks."""
    fp32: ExportPath | None = None
    fp16: ExportPath | None = None
    int8: ExportPath | None = None
    qat: ExportPath | None = None

    def path(self, precision: str, qat: bool = False) -> ExportPath:
        """The path of a `precision` export; a QAT student's (always INT8) takes `qat`."""
        name = "qat" if qat else precision
        found = getattr(self, name) if name in ("qat",) + PRECISIONS else None
        if found is None:
            raise UnsupportedOptionError(f"this backend has no {'QAT' if qat else precision} "
                                         "export")
        return found

    def missing(self, precisions: tuple[str, ...]) -> list[str]:
        """The precisions of `precisions` this backend declares no path for."""
        return [p for p in precisions if getattr(self, p, None) is None]

    def __call__(self, source: ExportContext, spec: ModelSpec, out: Path, *, precision: str,
                 calibration: CalibrationSet | None, options: ExportOptions) -> Tuner | None:
        path = self.path(precision, qat=source.student is not None)
        return path(source, spec, out, calibration=calibration, options=options)


# -- the container: how an artifact carries its spec --------------------------------------------
class Container(Protocol):
    """What the module a Format row's `container` names implements, every backend's with
    the same names. It imports nothing heavy when imported (each function imports what it
    needs), so the format table can ask it what it can do for free."""
    #: whether copy_with_spec can give this format's artifacts a new spec (`--to best` writes
    #: its winner with the record of its choice, so it races only such formats)
    REWRITES_SPEC: bool

    def read_spec(self, path: Path) -> ModelSpec:
        """The spec embedded in the artifact at `path`, without running it (`edgecls info`)."""

    def spec_of(self, loaded: Any, path: Path) -> ModelSpec:
        """The spec in what the backend's runtime loaded from `path` (the file's bytes, an
        ORT session, an ov.Model, an open file ...): opening an artifact reads it once."""

    def copy_with_spec(self, src: Path, dst: Path, spec: ModelSpec) -> None:
        """The artifact `src` (and its companions) written to `dst` carrying `spec` instead
        of its own; an UnsupportedOptionError where REWRITES_SPEC is False."""


# -- the format row ------------------------------------------------------------------------
@dataclass(frozen=True)
class Format:
    """Everything edgecls knows about one kind of artifact; nothing else branches on format
    names. Modules are named as strings ("module" or "module:attribute")."""
    name: str
    suffixes: tuple[str, ...]          # the first one is used for new artifacts
    runtime: str                       # "module:Class", a Session
    requires: tuple[str, ...]          # modules the runtime needs ("a|b": either one)
    extra: str                         # the pip extra that brings them
    container: str                     # "module", a Container: how the artifact carries its spec
    container_requires: tuple[str, ...] = ()   # without running the artifact
    exporter: str | None = None        # "module:attribute", an Exporter (ExportPaths)
    export_requires: tuple[str, ...] = ()
    options: type[ExportOptions] = ExportOptions
    precisions: tuple[str, ...] = PRECISIONS
    devices: tuple[str, ...] = DEVICES
    companions: tuple[str, ...] = ()   # files that belong to the artifact (OpenVINO .bin)
    # what its exporter can start from: "torch" (ExportSource.model) and/or "onnx" (only
    # ExportSource.onnx(): a source that is an FP32 ONNX file has no torch model)
    starts_from: tuple[str, ...] = ("torch",)
    # "module:function" naming the INT8 layers that lose most signal against the FP32 model:
    # (int8_path, fp32_onnx_path, spec, pixels, count) -> rows
    int8_diagnostics: str | None = None
    description: str = ""

    def load_runtime(self) -> type[Session]:
        self._require(self.requires, f"the {self.name} runtime")
        return import_attribute(self.runtime)

    def load_exporter(self) -> Exporter:
        if self.exporter is None:
            raise UnknownFormatError(f"edgecls cannot export to {self.name}")
        self._require(self.export_requires, f"the {self.name} exporter")
        exporter = import_attribute(self.exporter)
        missing = exporter.missing(self.precisions) if isinstance(exporter, ExportPaths) else []
        if missing:     # the row's precisions are the truth: a plug-in that broke it
            raise UnknownFormatError(f"{self.exporter} has no {', '.join(missing)} export path, "
                                     f"which the {self.name} row lists")
        return exporter

    def load_container(self) -> Container:
        """The container module; importing it needs none of container_requires."""
        return importlib.import_module(self.container)

    def read_spec(self, path: Path) -> ModelSpec:
        """The spec embedded in an artifact, without running it (`edgecls info`)."""
        self._require(self.container_requires, f"reading {self.name} artifacts")
        return self.load_container().read_spec(path)

    def copy_with_spec(self, src: Path, dst: Path, spec: ModelSpec) -> None:
        """Write the artifact `src` to `dst` (and its companions) carrying `spec` instead of
        its own, e.g. with why `--to best` chose it."""
        self._require(self.container_requires, f"writing {self.name} artifacts")
        self.load_container().copy_with_spec(src, dst, spec)

    def load_int8_diagnostics(self) -> Any:
        return import_attribute(self.int8_diagnostics) if self.int8_diagnostics else None

    def default_device(self) -> str:
        return "cpu" if "cpu" in self.devices else "auto"

    def available(self) -> bool:
        return all(_installed(m) for m in self.requires)

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise UnsupportedOptionError(f"{self.name} artifacts cannot be {precision}; choose "
                                         f"from {', '.join(self.precisions)}")

    def _require(self, modules: tuple[str, ...], what: str) -> None:
        for module in modules:
            if not _installed(module):
                raise MissingDependencyError(f"{what} ({module.replace('|', ' or ')})",
                                             self.extra)


def _installed(module: str) -> bool:
    """True if the module (or one of "a|b" alternatives) can be imported."""
    return any(importlib.util.find_spec(m) is not None for m in module.split("|"))


def import_attribute(target: str) -> Any:
    """What a "module:attribute" string names: how the format rows (and the source kinds)
    name code that is imported only when it is used."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


# -- the runtime session -------------------------------------------------------------------
class Session(ABC):
    """An artifact opened for inference, after Polygraphy's BaseRunner.

        with open_session(path, device="cpu", threads=2) as s:
            logits = s.run(batch)          # validated here, executed by the backend's _run

    Opening reads the artifact ONCE: the backend's _open loads it, sets self.spec from what
    it loaded and makes it runnable. Devices are "cpu" | "gpu" | "npu" | "auto", mapped per
    backend. An absent device is a DeviceUnavailableError, never a silent fallback;
    `fallback=True` allows one and the session reports what it used in `device_used`.
    """
    #: the format row this session runs
    format: ClassVar[Format]
    #: backend name shown in reports ("onnxruntime", "openvino", ...)
    backend: ClassVar[str]
    #: False when the backend object must not be entered by two threads at once
    thread_safe: ClassVar[bool] = True
    #: the keyword options _open takes
    accepted_options: ClassVar[tuple[str, ...]] = ()
    #: True when the backend's CPU INT8 kernels add u8 x s8 products in pairs into saturating
    #: 16-bit integers on x86 CPUs without VNNI (ORT's MLAS and OpenVINO's oneDNN do;
    #: XNNPACK widens to 16 bits first and does not)
    saturating_int8_kernels: ClassVar[bool] = False
    #: how this backend can run such an artifact correctly anyway, for the warning
    int8_remedy: ClassVar[str] = ""

    spec: ModelSpec
    #: True when the session runs INT8 on exact (non-saturating) kernels whatever the CPU
    exact_int8: bool = False
    #: the runtime guard's warning, when the artifact's INT8 recipe is wrong on this CPU
    int8_warning: str | None = None

    def __init__(self, path: str | Path, device: str | None = None, threads: int | None = None,
                 fallback: bool = False, **options: Any):
        self.path: Path | None = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: no such file")
        self._prepare(device, threads, fallback, options)
        self._open(**options)
        self._check_int8_recipe()

    def _prepare(self, device: str | None, threads: int | None, fallback: bool,
                 options: dict[str, Any]) -> None:
        """Everything but the artifact: the device asked for, threads and options."""
        device = device or self.format.default_device()  # cpu, or auto where there is no cpu
        if device not in DEVICES:
            raise DeviceUnavailableError(f"unknown device {device!r}; use one of "
                                         f"{', '.join(DEVICES)}")
        if device not in self.format.devices:
            raise DeviceUnavailableError(f"{self.format.name} artifacts run on "
                                         f"{', '.join(self.format.devices)}, not {device}")
        unknown = set(options) - set(self.accepted_options)
        if unknown:
            raise UnsupportedOptionError(f"{self.backend} does not take option(s) "
                                         f"{', '.join(sorted(unknown))}")
        self.device = device
        self.threads = threads
        self.fallback = fallback
        self.device_used = device          # what the backend actually runs on
        self.precision_used: str | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- what a backend implements -----------------------------------------------------------
    @abstractmethod
    def _open(self, **options: Any) -> None:
        """Read the artifact once, set self.spec from it, make it runnable on self.device."""

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a validated, non-empty batch."""

    def _close(self) -> None:
        pass

    def _check_int8_recipe(self) -> None:
        """The runtime guard: one warning when an INT8 recipe is known to compute other
        numbers on this CPU than where it was checked (a VNNI recipe on an AVX2-only CPU).
        Nothing is changed silently: the warning names the fixes."""
        if (self.spec.precision != "int8" or self.device_used != "cpu"
                or not self.saturating_int8_kernels or self.exact_int8):
            return
        why = targets.mismatch(self.spec.quantization, hardware.runtime_isa(self.backend))
        if why:
            name = self.path.name if self.path else self.spec.name
            self.int8_warning = (f"{name}: {why}; re-export it on this machine with --target "
                                 f"auto{self.int8_remedy}")
            logging.getLogger("edgecls").warning(self.int8_warning)

    # -- the public side -------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N x classes, float32) for a batch already in the artifact's input form."""
        self._validate(batch)
        if not len(batch):     # answered here: not every backend can run an empty batch
            return np.empty((0, self.spec.num_classes), np.float32)
        if self.thread_safe:
            out = self._run(batch)
        else:
            with self._lock:
                out = self._run(batch)
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)

    def _validate(self, batch: np.ndarray) -> None:
        expected = self.spec.input_shape(batch=len(batch))
        if not isinstance(batch, np.ndarray) or batch.ndim != 4:
            raise ValueError(f"expected a 4-D batch {expected}, got "
                             f"{getattr(batch, 'shape', type(batch).__name__)}")
        if tuple(batch.shape) != expected:
            raise ValueError(f"expected a batch of shape {expected} ({self.spec.layout}), "
                             f"got {tuple(batch.shape)}")
        want = np.uint8 if self.spec.normalization_in_graph else np.float32
        if batch.dtype != want:
            raise ValueError(f"expected {np.dtype(want).name} input, got {batch.dtype}")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": self.device_used,
                "precision": self.precision_used or self.spec.precision,
                "threads": self.threads}
