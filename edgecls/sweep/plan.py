"""The cells of a sweep and the content hashes that name their results.

A cell is one (model, format, precision, calibration recipe). Its results are cached under
hashes of everything that decides them, so an interrupted sweep resumes and a repeated one
skips what is done:

    export   the model (zoo name + weights, or a torch module's state), the format, precision,
             recipe, calibration images (their bytes), and the versions of the tools involved
    parity   the export's hash + the validation images (their bytes) + the tolerance
    timing   the export's hash + threads, batch, seconds and where (this CPU, or the cluster)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence

from edgecls import zoo
from edgecls.errors import UnsupportedOptionError
from edgecls.formats import get_format
from edgecls.imaging.datasets import IMAGE_SUFFIXES
from edgecls.io import sha256

#: the cell every model gets, requested or not: the other cells' speed is a ratio to it
BASELINE = ("onnx", "fp32")
#: distributions whose versions decide an artifact (absent ones are skipped)
TOOLS = ("edgecls", "torch", "torchvision", "timm", "onnx", "onnxruntime", "openvino", "nncf",
         "litert-torch", "ai-edge-quantizer", "ai-edge-litert")


@dataclass(frozen=True)
class Model:
    """A model of the sweep: a zoo name, or a torch module with its spec (Python API)."""
    name: str
    family: str
    resolution: int
    module: Any = None              # torch module, when not a zoo name
    spec: Any = None                # its ModelSpec

    def identity(self, weights: str) -> dict[str, Any]:
        if self.module is None:
            return {"zoo": self.name, "weights": _weights_identity(weights)}
        return {"module": self.spec.architecture, "state": _state_digest(self.module),
                "spec": self.spec.to_json()}


@dataclass(frozen=True)
class Cell:
    model: str
    family: str
    resolution: int
    format: str
    precision: str
    recipe: str = ""                # the INT8 calibration method, "" for the format's default
    requested: bool = True          # False: the ORT FP32 baseline, added for the ratio

    @property
    def label(self) -> str:
        recipe = f" [{self.recipe}]" if self.recipe else ""
        return f"{self.model} {self.format} {self.precision}{recipe}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def models_of(names: Sequence[Any], families: Sequence[str] = ()) -> list[Model]:
    """Zoo names (and (module, spec) pairs), plus every zoo model of `families` ("all": every
    family), in the zoo's order after the names given."""
    chosen: dict[str, Model] = {}
    for item in names:
        if isinstance(item, tuple):
            module, spec = item
            chosen[spec.name] = Model(spec.name, spec.architecture, spec.input_size[0], module, spec)
        else:
            e = zoo.get_entry(item)
            chosen[e.name] = Model(e.name, e.family, e.input_size)
    wanted = {f.lower() for f in families}
    known = {e.family.lower() for e in zoo.list_models()}
    unknown = wanted - known - {"all"}
    if unknown:
        raise UnsupportedOptionError(f"unknown famil{'ies' if len(unknown) > 1 else 'y'} "
                                     f"{', '.join(sorted(unknown))}; choose from "
                                     f"{', '.join(sorted({e.family for e in zoo.list_models()}))} or all")
    for e in zoo.list_models():
        if "all" in wanted or e.family.lower() in wanted:
            chosen.setdefault(e.name, Model(e.name, e.family, e.input_size))
    if not chosen:
        raise UnsupportedOptionError("name at least one model, or --families")
    return list(chosen.values())


def cells(models: Sequence[Model], formats: Sequence[str], precisions: Sequence[str],
          recipes: Sequence[str] = ("",)) -> list[Cell]:
    """Every combination a format can make (a precision it cannot is refused up front), the
    ORT FP32 baseline of each model first. Recipes multiply INT8 cells only."""
    for name in formats:
        fmt = get_format(name)
        if fmt.exporter is None:
            raise UnsupportedOptionError(f"edgecls cannot export to {fmt.name}")
        for precision in precisions:
            fmt.check_precision(precision)
    out = []
    for m in models:
        wanted = [(f, p, r) for f in formats for p in precisions
                  for r in (recipes if p == "int8" else ("",))]
        baseline = (*BASELINE, "")
        out.append(Cell(m.name, m.family, m.resolution, *baseline, requested=baseline in wanted))
        out += [Cell(m.name, m.family, m.resolution, f, p, r) for f, p, r in wanted
                if (f, p, r) != baseline]
    return out


# -- content hashes ----------------------------------------------------------------------------
def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:20]


def export_key(cell: Cell, model: Model, weights: str, calib: Any, calib_size: int) -> str:
    int8 = cell.precision == "int8"
    return digest({"model": model.identity(weights), "format": cell.format,
                   "precision": cell.precision, "recipe": cell.recipe,
                   "calib": source_digest(calib) if int8 else None,
                   "calib_size": calib_size if int8 else None, "tools": tool_versions()})


def parity_key(export: str, data: Any, max_drop: float | None) -> str:
    return digest({"export": export, "data": source_digest(data), "max_drop": max_drop})


def timing_key(export: str, threads: int, batch: int, seconds: float, where: str) -> str:
    """`where`: the cluster's address, or this machine's CPU for a local sweep."""
    return digest({"export": export, "threads": threads, "batch": batch, "seconds": seconds,
                   "where": where})


def is_image(name: str) -> bool:
    """Whether a file of this name is an image to the data loaders (by its suffix)."""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def source_digest(source: Any) -> str | None:
    """An image source by content: a folder's images (names and bytes; other files are not
    read by the loaders, so they do not count), or a built-in set's name (its images come
    with the installed packages, whose versions are in the key)."""
    if source is None:
        return None
    path = Path(str(source))
    if not path.is_dir():
        return str(source)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if is_image(p.name) and p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:20]


def tool_versions() -> dict[str, str]:
    found = {}
    for dist in TOOLS:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found


def _weights_identity(weights: str) -> str:
    path = Path(weights)
    if weights not in ("pretrained", "none") and path.is_file():
        return f"file:{sha256(path)}"
    return weights


def _state_digest(module: Any) -> str:
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


__all__ = ["Model", "Cell", "BASELINE", "models_of", "cells", "export_key", "parity_key",
           "timing_key", "source_digest", "is_image"]
