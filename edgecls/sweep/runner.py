"""`edgecls sweep`: models x formats x precisions (x calibration recipes) on Ray.

Each cell is two Ray tasks: build (export + parity; one CPU, many at once) and time (the
artifact alone, in a fresh Python process, while the task holds `threads` CPUs and the
node's one `edgecls_timing` resource, so timings never overlap each other or, on the CPUs
they hold, an export). `ray.init()` starts a local Ray by default; `address` joins a
cluster, whose nodes must each declare the timing resource:

    ray start --address HEAD:6379 --resources '{"edgecls_timing": 1}'

Finished stages are cached by content hash in `<out>/cache`: an interrupted sweep resumes,
a repeated one skips what is done. A failing cell records its one-line error. Every entry
read back is checked first (cache.py); a bad one is recomputed, with a warning.

Security. The local Ray listens on loopback only, with token authentication (Ray >= 2.59
turns it on for a cluster ray.init() starts; a RAY_AUTH_MODE other than token is refused),
both checked once it is up: a sweep refuses a local Ray on a network address or without
the token. The token is in ~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH), mode 0600 in a 0700
folder; Ray's session files are in a private temporary folder, removed afterwards; the
workers start in that folder, not in the working folder, so nothing planted where the sweep
was started is imported by them. On loopback every local user can still reach the ports:
the token is what keeps them out.

A cluster (`address`) is trusted whole. Anyone who can submit work to it runs code on every
node and reads what the sweep sends: its models (pickled: a node unpickles what the driver
sent, and the driver unpickles the results nodes send back) and, packed, its --calib and
--data images. Its nodes run the export, parity and timing code of the edgecls they have
installed. So: start its nodes with token authentication (`RAY_AUTH_MODE=token`, the same
token on every node and on this machine, Ray >= 2.59), on a network only its members reach,
and join only a cluster whose every node and user you trust with this code and data. A
packed folder carries only its images (no dotfiles, no other files, no link that leaves the
folder), at most work.PACK_LIMIT bytes; a node unpacks only plain relative names.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from edgecls import hardware
from edgecls.errors import (DataError, MissingDependencyError, OutputError,
                            UnsupportedOptionError, one_line)
from edgecls.formats import get_format
from edgecls.imaging.datasets import BUILTIN
from edgecls.sweep.cache import STAGES, Cache
from edgecls.sweep.files import write_sweep
from edgecls.sweep.plan import Cell, Model, cells, export_key, models_of, parity_key, timing_key
from edgecls.sweep.table import SweepTable
from edgecls.sweep.work import Packed, Settings, build, time_artifact

log = logging.getLogger("edgecls")

TIMING_RESOURCE = "edgecls_timing"
#: the local Ray's shared-memory store: artifacts pass through it one or two at a time
OBJECT_STORE_BYTES = 512 * 2 ** 20
#: cells one build worker exports before it is replaced (converters keep memory)
BUILDS_PER_WORKER = 8


@dataclass
class CellResult:
    cell: Cell
    export: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None
    cached: list[str] = field(default_factory=list)      # the stages read from the cache
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def to_run(self) -> list[str]:
        """The stages the cache did not answer."""
        return [stage for stage in STAGES if stage not in self.cached]

    def artifact(self, cache: Cache) -> Path | None:
        if not self.export or "artifact" not in self.export:
            return None
        return cache.artifact(self.keys["export"], self.export["artifact"])


def sweep(models: Sequence[Any] = (), to: Sequence[str] = ("onnx",),
          precisions: Sequence[str] = ("fp32",), *, families: Sequence[str] = (),
          weights: str = "pretrained", calib: Any = None, calib_size: int = 300,
          recipes: Sequence[str] = ("",), data: Any = None, max_drop: float | None = None,
          out: str | Path = "reports/sweep", address: str | None = None, cpus: int | None = None,
          threads: int | None = None, batch: int = 8, seconds: float = 3.0,
          retry_failed: bool = False, progress: bool = True, dry_run: bool = False):
    """Run (or resume) a sweep; write the table to `out` (sweep.md/.csv/.json/.html) and
    return it (edgecls.sweep.table.SweepTable). `dry_run`: run nothing, start no Ray, write
    nothing; return the SweepPlan (every cell, and whether `out`'s cache already holds it)."""
    ray = None if dry_run else _import_ray()
    chosen = models_of(models, families)
    planned = cells(chosen, to, precisions, recipes or ("",))
    if any(c.precision == "int8" for c in planned) and calib is None:
        raise UnsupportedOptionError("int8 cells need calibration images: --calib DIR "
                                     "(or a built-in set: photos, digits)")
    for source in (calib, data):
        if source is not None and str(source) not in BUILTIN and not Path(str(source)).is_dir():
            raise DataError(f"{source}: not a folder of images (or one of the built-in sets: "
                            f"{', '.join(BUILTIN)})")
    threads = threads or hardware.cpu().cores
    where = address or f"local {hardware.cpu().summary()}"
    cache = Cache(Path(out) / "cache")
    results = [_from_cache(c, chosen, cache, weights, calib, calib_size, data, max_drop,
                           threads, batch, seconds, where, retry_failed) for c in planned]
    todo = [r for r in results if r.to_run]
    if dry_run:
        return SweepPlan(results, where)
    if todo:
        if address:    # cluster nodes may not see this machine's folders
            calib, data = (Packed.of(Path(s)) if s is not None and Path(str(s)).is_dir()
                           else s for s in (calib, data))
        else:          # the local workers do not start in this folder: no relative paths
            calib, data, weights = (_absolute(s) for s in (calib, data, weights))
        stop = _start_ray(ray, address, cpus, threads)
        try:
            settings = Settings(weights, calib, calib_size, data, max_drop, threads, batch, seconds)
            _run(ray, todo, {m.name: m for m in chosen}, settings, cache, progress)
        finally:
            if stop:
                stop()
    table = SweepTable.of(results, cache, {"threads": threads, "batch": batch,
                                           "seconds": seconds, "where": where,
                                           "cells_run": len(todo),
                                           "cells_cached": len(results) - len(todo)})
    write_sweep(table, Path(out))
    return table


@dataclass
class SweepPlan:
    """What a sweep would run (`edgecls sweep --dry-run`): each cell, cached or to run."""
    results: list[CellResult]
    where: str

    def print(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.table import Table
        console = console or Console()
        table = Table(title=f"sweep plan ({self.where})")
        for header in ("model", "family", "format", "precision", "calib", "status"):
            table.add_column(header)
        for r in self.results:
            c = r.cell
            status = f"to run ({', '.join(r.to_run)})" if r.to_run else "cached"
            table.add_row(c.model, c.family, c.format, c.precision, c.recipe or "-", status)
        console.print(table)
        done = sum(not r.to_run for r in self.results)
        console.print(f"{len(self.results)} cells: {done} cached, {len(self.results) - done} to run")


def _from_cache(cell: Cell, models: list[Model], cache: Cache, weights, calib, calib_size, data,
                max_drop, threads, batch, seconds, where, retry_failed) -> CellResult:
    model = next(m for m in models if m.name == cell.model)
    ek = export_key(cell, model, weights, calib, calib_size)
    result = CellResult(cell, keys={"export": ek, "parity": parity_key(ek, data, max_drop),
                                    "timing": timing_key(ek, threads, batch, seconds, where)})
    suffixes = get_format(cell.format).suffixes
    for stage in STAGES:
        found = cache.get(stage, result.keys[stage], suffixes=suffixes)
        if found is not None and not (retry_failed and "error" in found):
            setattr(result, stage, found)
            result.cached.append(stage)
    if result.export and "error" in result.export:      # nothing more can be done for it
        result.parity = result.timing = {"error": "not run: its export failed"}
        result.cached = list(STAGES)
    return result


def _run(ray, todo: list[CellResult], models: dict[str, Model], settings: Settings,
         cache: Cache, progress: bool) -> None:
    """Submit every unfinished stage; store each result as it arrives."""
    # a build worker is reused a few times (importing torch again for every cell is slow)
    build_task = ray.remote(num_cpus=1, num_returns=3, max_calls=BUILDS_PER_WORKER)(build)
    time_task = ray.remote(num_cpus=settings.threads, resources={TIMING_RESOURCE: 1})(_time_task)
    models = {name: _portable(ray, m) for name, m in models.items()}
    pending: dict[Any, tuple[CellResult, str, Any]] = {}
    for r in todo:
        files = None if r.export is None else ray.put(cache.files(r.keys["export"]))
        made = r.export
        if r.export is None or r.parity is None:
            files, made_ref, parity_ref = build_task.remote(
                r.cell, models[r.cell.model], settings, files,
                None if r.export is None else r.export["artifact"], r.parity is None)
            pending[made_ref] = (r, "export", files)
            pending[parity_ref] = (r, "parity", None)
            made = made_ref if r.export is None else made
        if r.timing is None:
            pending[time_task.remote(files, made, settings)] = (r, "timing", None)
    with _progress(progress, len(todo)) as bar:
        left = {id(r): sum(1 for v in pending.values() if v[0] is r) for r in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            r, stage, files = pending.pop(ready[0])
            _store(ray, r, stage, ready[0], files, cache)
            left[id(r)] -= 1
            if not left[id(r)]:
                bar.advance(r.cell.label)


def _store(ray, r: CellResult, stage: str, ref, files, cache: Cache) -> None:
    try:
        value = ray.get(ref)
    except Exception as e:       # the worker died (a crash, out of memory): the cell's error
        value = {"error": one_line(getattr(e, "cause", None) or e)}
    if value is None:            # the export was cached; only its parity ran
        return
    setattr(r, stage, value)
    if stage == "export" and "error" not in value:
        cache.put_files(r.keys["export"], ray.get(files))
    cache.put(stage, r.keys[stage], value)


def _portable(ray, model: Model) -> Model:
    """A torch module travels pickled and is unpickled by work.py after torchvision's shim:
    unpickling a torchvision model in a fresh worker would import torchvision unshimmed."""
    if model.module is None:
        return model
    return dataclasses.replace(model, module=ray.cloudpickle.dumps(model.module))


def _time_task(files, made, settings) -> dict[str, Any]:
    import ray
    if made is None or "error" in made:
        return {"error": "no artifact to time (its export failed)"}
    result = time_artifact(files, made["artifact"], settings)
    result["node"] = ray.get_runtime_context().get_node_id()
    return result


# -- Ray --------------------------------------------------------------------------------------
def _import_ray():
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("Ray (the sweep's task runner)", "sweep") from None
    return ray


def _start_ray(ray, address: str | None, cpus: int | None,
               threads: int) -> Callable[[], None] | None:
    """Start or join Ray unless this process already did; the function that stops what
    this call started, None when it started nothing."""
    if ray.is_initialized():
        _check_cluster(ray, threads)
        return None
    # Ray's session files, and the folder its workers start in (they put the folder they
    # start in first on their sys.path): private (0700), empty, removed when done
    place = Path(tempfile.mkdtemp(prefix="edgecls-ray-", dir=_SHORT_TMP))

    def stop() -> None:
        ray.shutdown()
        shutil.rmtree(place, ignore_errors=True)

    try:
        with _working_folder(place):
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                _token_auth()
                with _loopback_only():
                    ray.init(num_cpus=max(cpus or hardware.cpu().cores, threads),
                             resources={TIMING_RESOURCE: 1}, include_dashboard=False,
                             log_to_driver=False, object_store_memory=OBJECT_STORE_BYTES,
                             _temp_dir=str(place / "ray-session"))
                _check_loopback(ray)
                _check_token_auth(ray)
        _check_cluster(ray, threads)
    except BaseException:
        stop()
        raise
    return stop


#: Ray's socket paths must stay under ~100 characters: a short temporary folder
_SHORT_TMP = "/tmp" if os.name == "posix" and os.path.isdir("/tmp") else None
#: how Ray is told to use token authentication, and where it looks for the token
AUTH_MODE, AUTH_TOKEN, AUTH_TOKEN_PATH = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"


def token_path() -> Path:
    """Where Ray reads its token from when RAY_AUTH_TOKEN does not hold it."""
    given = os.environ.get(AUTH_TOKEN_PATH)
    return Path(given) if given else Path.home() / ".ray" / "auth_token"


def _token_auth() -> None:
    """Token authentication for the local Ray, its token private.

    Ray >= 2.59 turns token authentication on for a cluster ray.init() starts, unless
    RAY_AUTH_MODE says otherwise (a RAY_AUTH_MODE other than token is refused here), and
    writes a new token to ~/.ray/auth_token with the umask's mode (0644 on most systems:
    readable by every user of the machine). So the token is written here first: 0600, in a
    0700 folder (an existing one is narrowed to that); a RAY_AUTH_TOKEN_PATH file is made
    private the same way, a token held in RAY_AUTH_TOKEN stays the environment's.
    (RAY_AUTH_MODE is not set here: Ray reads it once, when it is imported, and switches
    itself over only when it is unset; _check_token_auth checks the outcome.)"""
    mode = os.environ.get(AUTH_MODE)
    if mode is not None and mode.strip().lower() != "token":
        raise UnsupportedOptionError(
            f"{AUTH_MODE}={mode[:20]!r}: edgecls sweep starts its local Ray with token "
            f"authentication only; unset {AUTH_MODE} (or start a cluster yourself and pass "
            "--address)")
    if os.environ.get(AUTH_TOKEN):
        return
    path = token_path()
    try:
        if AUTH_TOKEN_PATH not in os.environ:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path.parent, 0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            os.chmod(path, 0o600)           # a link: its file
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))      # as Ray's own: 256 random bits, hex
    except OSError as e:
        raise OutputError(f"cannot keep the Ray token {path} private: {one_line(e)}") from None


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """ray.init() with the node's address on loopback, which makes Ray bind its servers
    (GCS, raylet, workers, agents) to loopback: on a network address they listen on every
    interface. Ray maps a loopback address given to ray.init to the machine's network address
    unless it runs as a single machine, its default on Windows and macOS only
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, read once when ray is imported, into
    ray._private.ray_constants.ENABLE_RAY_CLUSTER). No public switch exists, so that constant
    is set for the length of ray.init; _check_loopback then checks the outcome, so a Ray
    that no longer reads it fails closed."""
    try:
        from ray._private import ray_constants
    except ImportError:     # checked after ray.init all the same
        yield
        return
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == "localhost"
    mapped = getattr(ip, "ipv4_mapped", None)    # ::ffff:127.0.0.1
    return (mapped or ip).is_loopback


def _check_loopback(ray) -> None:
    addresses = sorted({n.get("NodeManagerAddress") or "?" for n in ray.nodes() if n.get("Alive")})
    exposed = [a for a in addresses if not is_loopback(a)]
    if exposed or not addresses:
        raise UnsupportedOptionError(
            f"the local Ray came up on {', '.join(exposed) or 'no address'}, not on loopback "
            f"only (ray {getattr(ray, '__version__', '?')}): not running a sweep on it")


def _check_token_auth(ray) -> None:
    """Ray records the mode it started the cluster in as RAY_AUTH_MODE (when it switched
    token authentication on by default, it set it there itself)."""
    if os.environ.get(AUTH_MODE, "").strip().lower() != "token":
        raise UnsupportedOptionError(
            f"the local Ray (ray {getattr(ray, '__version__', '?')}) came up without token "
            "authentication: edgecls sweep needs ray>=2.59 (pip install 'edgecls[sweep]')")


@contextlib.contextmanager
def _working_folder(folder: Path) -> Iterator[None]:
    """ray.init() in `folder`: Ray starts its workers there and puts the folder ray.init ran
    in first on their sys.path. (The process's folder changes for that long.)"""
    here = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def _absolute(source: Any) -> Any:
    """A folder or file given relative to this folder, made absolute (a built-in set's name,
    "pretrained", "none" and None stay as they are)."""
    if source is None or str(source) in (*BUILTIN, "pretrained", "none") \
            or not Path(str(source)).exists():
        return source
    path = Path(str(source)).absolute()
    return str(path) if isinstance(source, str) else path


def _check_cluster(ray, threads: int) -> None:
    """Timing tasks wait forever for a resource no node has: refuse that up front."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fit = [n for n in nodes if n["Resources"].get(TIMING_RESOURCE)
           and n["Resources"].get("CPU", 0) >= threads]
    if not fit:
        raise UnsupportedOptionError(
            f"no Ray node has the {TIMING_RESOURCE!r} resource and {threads} CPUs for timing: "
            f"start nodes with `ray start ... --resources '{{\"{TIMING_RESOURCE}\": 1}}'`"
            " (or lower --threads)")


class _progress:
    """A rich progress bar over cells (nothing when `enabled` is False)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self) -> "_progress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self._bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.description}"))
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total)
        return self

    def advance(self, label: str) -> None:
        if self.enabled:
            self._bar.update(self._task, advance=1, description=f"done: {label}")

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self._bar.stop()


__all__ = ["sweep", "CellResult", "TIMING_RESOURCE", "token_path", "is_loopback"]
