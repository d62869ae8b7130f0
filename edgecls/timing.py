"""One artifact timed alone: latency percentiles, throughput, peak memory and size.

    python -I -m edgecls.timing model.onnx --threads 2 --batch 8 --seconds 3    # JSON on stdout

What `edgecls bench` does side by side, this does for one artifact in a process of its own,
so that no other runtime's thread pool shares the cores (ONNX Runtime's spinning workers made
OpenVINO's mobilenet_v3_large several times slower when the two were interleaved). The sweep
runs it in a Ray worker that exits after one cell; `--to best` in a subprocess per candidate.
Every such process is started isolated from the working folder (python_command).

Each measurement: the thread count pinned, warm-up runs, then runs until the median is
stable (its 95% confidence interval, from order statistics, within +-2%) or the time limit.
"""
from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import edgecls
from edgecls import formats, hardware
from edgecls.errors import first_line

#: the median's 95% CI half-width, relative to it, at which sampling stops
STABLE = 0.02
MIN_RUNS = 10


@dataclass
class Timing:
    artifact: str
    backend: str
    precision: str                  # what the runtime actually computes in (bf16 shows here)
    threads: int
    batch: int                      # the "batch N" of fps_batch
    p50_ms: float                   # batch 1
    p90_ms: float
    p99_ms: float
    fps_1: float                    # 1000 / p50 at batch 1
    fps_batch: float                # images / s at batch N (its median run)
    runs: int                       # batch-1 runs measured
    stable: bool                    # the batch-1 median met STABLE before the time limit
    peak_rss_mb: float              # the process's peak RSS over what it held before the runtime
    size_mb: float                  # the artifact's files on disk
    machine: dict[str, Any]         # hardware.describe(): numbers compare within one kind only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(path: str | Path, *, threads: int | None = None, batch: int = 8,
            seconds: float = 3.0, options: dict[str, Any] | None = None) -> Timing:
    """Time one artifact in this process (which should hold no other runtime)."""
    from edgecls.imaging.preprocess import to_model_input   # OpenCV: imaging.preprocess imports cv2

    path = Path(path)
    threads = threads or hardware.cpu().cores
    before = _rss_mb()
    fmt = formats.format_for_path(path)
    with formats.open_session(path, device=fmt.default_device(), threads=threads,
                      **(options or {})) as session:
        h, w = session.spec.input_size
        pixels = np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
        one, many = to_model_input(pixels[:1], session.spec), to_model_input(pixels, session.spec)
        single, stable = sample(lambda: session.run(one), seconds)
        batched, _ = sample(lambda: session.run(many), seconds / 2, min_runs=3)
        ms = np.asarray(single) * 1000
        p50 = float(np.percentile(ms, 50))
        return Timing(
            artifact=path.name, backend=session.backend,
            precision=str(session.precision_used or session.spec.precision), threads=threads,
            batch=batch, p50_ms=round(p50, 4), p90_ms=round(float(np.percentile(ms, 90)), 4),
            p99_ms=round(float(np.percentile(ms, 99)), 4), fps_1=round(1000 / p50, 2),
            fps_batch=round(batch / float(np.median(batched)), 2), runs=len(single),
            stable=stable, peak_rss_mb=round(_peak_rss_mb() - before, 1),
            size_mb=round(disk_mb(path, fmt.companions), 3), machine=hardware.describe())


def sample(run: Callable[[], Any], seconds: float, *, min_runs: int = MIN_RUNS,
           limit: float = 3.0) -> tuple[list[float], bool]:
    """Warm up, then time `run` for at least `seconds` and `min_runs`, and on until the median
    is stable or `limit` x `seconds` have passed; (seconds per run, stable)."""
    warm_end = time.perf_counter() + max(0.1, seconds / 5)
    for i in range(1000):
        run()
        if i >= 2 and time.perf_counter() > warm_end:
            break
    times: list[float] = []
    start = time.perf_counter()
    while True:
        times += timed_runs(run, 5)    # the stop rule is looked at every 5 runs
        elapsed = time.perf_counter() - start
        if len(times) >= min_runs and elapsed >= seconds:
            stable = median_halfwidth(times) <= STABLE
            if stable or elapsed >= limit * seconds:
                return times, stable


def timed_runs(run: Callable[[], Any], runs: int) -> list[float]:
    """Seconds each of `runs` calls of `run` took: the one timing loop (sample() here,
    `edgecls bench`'s bursts and parity's latency column all time through it)."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return times


def median_halfwidth(times: Sequence[float]) -> float:
    """Half the distribution-free 95% confidence interval of the median, relative to it."""
    a = np.sort(np.asarray(times))
    n = len(a)
    k = 1.96 * math.sqrt(n) / 2
    lo, hi = a[max(0, math.floor(n / 2 - k))], a[min(n - 1, math.ceil(n / 2 + k))]
    return float((hi - lo) / 2 / np.median(a))


def disk_mb(path: Path, companions: Sequence[str] = ()) -> float:
    files = [path] + [path.with_suffix(s) for s in companions]
    return sum(f.stat().st_size for f in files if f.is_file()) / 2 ** 20


def _rss_mb() -> float:
    """The RSS now, after resetting the process's high-water mark where Linux allows it
    (clear_refs 5), so that the peak read later is this measurement's own and not one left
    by whatever started the process."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:   # not Linux: the peak is then reported whole
        return 0.0


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024   # bytes vs KiB


#: Runs a module as `python -m` would, in an isolated interpreter (see python_command);
#: argv[1] is the folder holding the edgecls package, appended to sys.path only when edgecls
#: is not importable without it (a checkout run from source, not installed).
_BOOTSTRAP = ("import runpy, sys\n"
              "root = sys.argv.pop(1)\n"
              "try:\n"
              "    import edgecls\n"
              "except ImportError:\n"
              "    sys.path.append(root)\n"
              "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)\n")


def python_command(module: str, *args: str) -> list[str]:
    """The command line that runs `python -m <module> <args>` isolated from the folder it is
    started in: every Python process edgecls starts is started through this.

    `-I` (isolated mode) keeps the working folder (and the script's folder) off sys.path,
    ignores every PYTHON* environment variable (PYTHONPATH, PYTHONSTARTUP, PYTHONHOME...)
    and the user's site-packages: a planted `argparse.py` or `json.py` in the current folder,
    or a PYTHONPATH someone else set, cannot run in the child. `-P` alone would still honour
    PYTHONPATH, and `-E` alone would still put the folder first. Installed packages import
    as before (site-packages and its .pth files, editable installs included). Where edgecls
    is only importable from its source folder, that folder is appended to sys.path AFTER
    the standard library and site-packages, so nothing in it can shadow them."""
    root = str(Path(edgecls.__file__).resolve().parent.parent)
    return [sys.executable, "-I", "-c", _BOOTSTRAP, root, module, *args]


def in_subprocess(path: str | Path, *, threads: int | None = None, batch: int = 8,
                  seconds: float = 3.0, options: dict[str, Any] | None = None) -> Timing:
    """measure() in a fresh Python process: no runtime loaded by this one can interfere."""
    args = ["--batch", str(batch), "--seconds", str(seconds), "--options", json.dumps(options or {})]
    if threads:
        args += ["--threads", str(threads)]
    # "--": an artifact named "-x.onnx" is a path, not an option
    done = subprocess.run(python_command("edgecls.timing", *args, "--", str(path)),
                          capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(f"timing {Path(path).name} failed: {first_line(last)}")
    try:
        return Timing(**json.loads(done.stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError, TypeError) as e:    # something else printed last
        raise RuntimeError(f"timing {Path(path).name} printed no timing: {first_line(e)}") from None


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(description="time one artifact alone (JSON on stdout)")
    p.add_argument("artifact")
    p.add_argument("--threads", type=int)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--options", default="{}", help="session options as JSON")
    args = p.parse_args(argv)
    timing = measure(args.artifact, threads=args.threads, batch=args.batch,
                     seconds=args.seconds, options=json.loads(args.options))
    print(json.dumps(timing.to_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
