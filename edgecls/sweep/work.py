"""What a cell's two tasks do, on whichever node runs them.

    build(cell)   export (unless its artifact is given) and parity against the PyTorch model;
                  the artifact's files travel back as bytes, so nodes need no shared disk
    time(files)   the artifact alone in a fresh Python process (edgecls.timing): Ray reuses
                  worker processes across functions, and one that exported before holds
                  the libraries (and OpenVINO's thread pool) of every backend it touched

Neither raises for a failing cell: the error becomes the cell's one-line result, and the
sweep goes on.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecls import zoo
from edgecls.errors import DataError, one_line
from edgecls.exporting import default_output, export
from edgecls.formats import format_for_path, get_format, read_spec
from edgecls.sweep.plan import Cell, Model, is_image
from edgecls.timing import in_subprocess
from edgecls.verification import parity
from edgecls.zoo.torchvision_shim import import_torchvision

#: the most bytes of images a packed folder carries (it travels through Ray's object store
#: to every node that calibrates or validates)
PACK_LIMIT = 1 << 30

#: what parity runs on when no --data is given (ImageNet photos; agreement only)
DEFAULT_DATA = "photos"


@dataclass(frozen=True)
class Settings:
    weights: str = "pretrained"
    calib: Any = None               # a folder, a built-in set, or a Packed folder (clusters)
    calib_size: int = 300
    data: Any = None
    max_drop: float | None = None
    threads: int | None = None
    batch: int = 8
    seconds: float = 3.0


@dataclass(frozen=True)
class Packed:
    """An image folder carried to a node that cannot see it: its images' bytes by relative
    path ("cat/1.png").

    What travels is the folder's images only: files with an image suffix, not dotfiles, not
    in dot folders; a link is followed only to a file inside the folder (one that leaves it
    is refused, never sent); at most `limit` bytes in all. Unpacking checks every name again
    (a relative path of plain parts: no "..", no absolute path, no backslash, no dot part)
    and writes only inside its own folder."""
    name: str
    files: dict[str, bytes]

    @classmethod
    def of(cls, folder: Path, limit: int = PACK_LIMIT) -> "Packed":
        root = Path(folder).resolve()     # "sub/.." names the folder, not ".."
        files: dict[str, bytes] = {}
        total = 0
        for here, dirs, names in os.walk(root):    # links to folders are not walked into
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                path = Path(here) / name
                rel = path.relative_to(root).as_posix()
                if name.startswith(".") or not is_image(name):
                    continue
                real = path.resolve()
                if path.is_symlink() and not real.is_relative_to(root):
                    raise DataError(f"{folder}: {rel} links outside the folder; a folder sent "
                                    "to the cluster's nodes may only hold its own files")
                if not real.is_file():
                    continue
                total += real.stat().st_size
                if total > limit:
                    raise DataError(f"{folder}: more than {limit / 2 ** 20:.0f} MiB of images to "
                                    "send to the cluster's nodes; use a smaller folder")
                files[rel] = real.read_bytes()
        return cls(root.name or "images", files)

    def unpack(self, where: Path, limit: int = PACK_LIMIT) -> Path:
        problem = _part_problem(self.name) if isinstance(self.name, str) else "not text"
        if problem:
            raise DataError(f"packed folder {str(self.name)[:60]!r}: {problem}")
        root = Path(where) / self.name
        root.mkdir(parents=True, exist_ok=True)
        base = root.resolve()
        total = 0
        for rel, data in self.files.items():
            problem = member_problem(rel) or (None if isinstance(data, bytes) else "not bytes")
            if problem:
                raise DataError(f"packed folder {self.name!r}: member {str(rel)[:80]!r}: {problem}")
            total += len(data)
            if total > limit:
                raise DataError(f"packed folder {self.name!r}: more than "
                                f"{limit / 2 ** 20:.0f} MiB")
            target = base.joinpath(*rel.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.parent.resolve().is_relative_to(base):
                raise DataError(f"packed folder {self.name!r}: member {rel[:80]!r} lands outside it")
            try:
                with open(target, "xb") as f:       # a name given twice is refused, not merged
                    f.write(data)
            except FileExistsError:
                raise DataError(f"packed folder {self.name!r}: member {rel[:80]!r} "
                                "given twice") from None
        return root


def _part_problem(part: str) -> str | None:
    if part in ("", ".", ".."):
        return f"{part!r} is not a name"
    if part.startswith("."):
        return "a dot name"
    if "/" in part or "\\" in part or any(ord(c) < 32 for c in part) \
            or (os.name == "nt" and ":" in part):      # "C:" would change the drive
        return "a separator or control character in a name"
    return None


def member_problem(rel: Any) -> str | None:
    """Why `rel` cannot be a packed folder's member (a relative path of plain parts ending
    in an image file's name), or None."""
    if not isinstance(rel, str) or not rel or len(rel) > 1024:
        return "not a relative path"
    if rel.startswith("/"):
        return "an absolute path"
    parts = rel.split("/")
    problem = next((p for p in map(_part_problem, parts) if p), None)
    if problem:
        return problem
    return None if is_image(parts[-1]) else "not an image file"


def build(cell: Cell, model: Model, settings: Settings, files: dict[str, bytes] | None,
          name: str | None, parity: bool) -> tuple[dict[str, bytes] | None, dict[str, Any] | None,
                                                   dict[str, Any] | None]:
    """(files, export result, parity result); the export result is None when `files` were
    given (a cached artifact named `name`), the parity result None when not asked for."""
    with tempfile.TemporaryDirectory(prefix="edgecls-cell-") as tmp:
        work = Path(tmp)
        try:
            torch_model, spec = _torch_model(model, settings.weights)
        except Exception as e:      # a model that cannot be built fails its cells only
            return None, {"error": one_line(e)}, None
        made = None
        if files is None:
            made = _export(cell, torch_model, spec, settings, work)
            if "error" in made:
                return None, made, None
            name = made["artifact"]
            files = {f.name: f.read_bytes() for f in _artifact_files(work / name)}
        else:
            _write(files, work)
        checked = _parity(work / name, torch_model, spec, settings, work) if parity else None
    return files, made, checked


def time_artifact(files: dict[str, bytes] | None, name: str | None,
                  settings: Settings) -> dict[str, Any]:
    if not files:
        return {"error": "no artifact to time (its export failed)"}
    with tempfile.TemporaryDirectory(prefix="edgecls-time-") as tmp:
        _write(files, Path(tmp))
        try:
            return in_subprocess(Path(tmp) / name, threads=settings.threads,
                                 batch=settings.batch, seconds=settings.seconds).to_dict()
        except Exception as e:
            return {"error": one_line(e)}


# -- the steps ---------------------------------------------------------------------------------
def _torch_model(model: Model, weights: str):
    if isinstance(model.module, bytes):          # pickled by the runner (see _portable)
        import pickle

        import_torchvision()
        return pickle.loads(model.module).eval(), model.spec
    if model.module is not None:
        return model.module.eval(), model.spec
    return zoo.build(model.name, weights)


def _export(cell: Cell, torch_model, spec, settings: Settings, work: Path) -> dict[str, Any]:
    out = default_output(spec, get_format(cell.format), cell.precision, work)
    int8 = cell.precision == "int8"       # calibration settings are refused elsewhere
    calib = _local(settings.calib, work) if int8 else None
    started = time.perf_counter()
    try:
        # an INT8 cell is judged by the parity step below, on the sweep's verification data
        export(torch_model, spec=spec, to=cell.format, out=out, precision=cell.precision,
               calib=calib, calib_size=settings.calib_size if int8 else None,
               options={"calib_method": cell.recipe} if cell.recipe else {}, check=not int8)
    except Exception as e:
        return {"error": one_line(e)}
    made = read_spec(out)
    search = (made.quantization or {}).get("search", {})
    return {"artifact": out.name, "export_s": round(time.perf_counter() - started, 1),
            "trained": made.trained,
            "recipe": search.get("chosen") or (made.quantization or {}).get("recipe")}


def _parity(path: Path, torch_model, spec, settings: Settings, work: Path) -> dict[str, Any]:
    if not spec.trained:
        return {"skipped": "random weights (--weights none): accuracy is not meaningful"}
    data = _local(settings.data, work) if settings.data is not None else DEFAULT_DATA
    try:
        report = parity([path], data=data, reference=torch_model, reference_spec=spec,
                        max_drop=settings.max_drop, sqnr=False, progress=False)
    except Exception as e:
        return {"error": one_line(e)}
    r, ref = report.results[0], report.reference
    return {"data": report.data["name"], "n": r.n, "labelled": report.data["labelled"],
            "top1": r.top1, "top1_ci": r.top1_ci, "top5": r.top5, "top5_ci": r.top5_ci,
            "agreement": r.agreement, "agreement_ci": r.agreement_ci, "top1_drop": r.top1_drop,
            "reference_top1": ref.get("top1"), "passed": r.passed, "outcome": r.outcome,
            "kl": r.kl_mean, "tolerance": r.tolerance, "failures": r.failures}


def _local(source: Any, work: Path) -> Any:
    return source.unpack(work / "images") if isinstance(source, Packed) else source


def _artifact_files(path: Path) -> list[Path]:
    return [path] + [path.with_suffix(s) for s in format_for_path(path).companions]


def _write(files: dict[str, bytes], folder: Path) -> None:
    """An artifact's files into `folder`: plain names only (cache.Cache.files gives no other)."""
    for file_name, data in files.items():
        if Path(file_name).name != file_name or file_name in ("", ".", ".."):
            raise DataError(f"artifact file {file_name[:80]!r} is not a plain file name")
        (folder / file_name).write_bytes(data)


__all__ = ["Settings", "Packed", "PACK_LIMIT", "member_problem", "build", "time_artifact"]
