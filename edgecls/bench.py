"""`edgecls bench`: latency, throughput and memory of artifacts, measured interleaved.

Artifacts are timed round-robin (one burst each, repeatedly) so that noise from a shared
machine lands on all of them alike; report ratios from one run, never absolute promises.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgecls import hardware
from edgecls.formats import format_for_path, open_session
from edgecls.imaging.preprocess import to_model_input
from edgecls.timing import timed_runs


def _rss_mb() -> float:
    try:
        import psutil
        return psutil.Process(os.getpid()).memory_info().rss / 2 ** 20
    except ImportError:  # psutil is optional: memory is then not reported
        return float("nan")


@dataclass
class BenchRow:
    artifact: str
    backend: str
    precision: str
    batch: int
    p50_ms: float
    p90_ms: float
    throughput: float           # images / s
    memory_mb: float            # RSS growth when the session was opened and run
    samples: list[float] = field(default_factory=list, repr=False)


@dataclass
class BenchResult:
    rows: list[BenchRow]
    # the machine the numbers come from: they compare only with numbers from the same kind
    machine: dict[str, Any] = field(default_factory=lambda: hardware.describe())

    def print(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.table import Table
        console = console or Console()
        table = Table("artifact", "backend", "precision", "batch", "p50 ms", "p90 ms", "img/s",
                      "vs first", "RSS MB",
                      title=f"edgecls bench (interleaved) on {hardware.cpu().summary()}")
        for r in self.rows:
            first = next((b for b in self.rows if b.batch == r.batch), r)
            table.add_row(r.artifact, r.backend, r.precision, str(r.batch), f"{r.p50_ms:.2f}",
                          f"{r.p90_ms:.2f}", f"{r.throughput:.1f}",
                          f"{first.p50_ms / r.p50_ms:.2f}x", f"{r.memory_mb:.0f}")
        console.print(table)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict
        return {"machine": self.machine,
                "rows": [{k: v for k, v in asdict(r).items() if k != "samples"} for r in self.rows]}


def bench(artifacts: Sequence[str | Path], batch_sizes: Sequence[int] = (1,), threads: int | None = None,
          device: str | None = None, seconds: float = 3.0, warmup: int = 3,
          options: dict[str, Any] | None = None) -> BenchResult:
    """`options` are session options, each given to the backends that take it."""
    options = dict(options or {})
    if len(artifacts) > 1:
        # sessions sharing the process must not spin their idle threads: ORT's spinning
        # workers took the cores from the others (ORT FP32 read 64 ms instead of 12.5 ms)
        options.setdefault("spin", False)
    sessions, memory = [], []
    for path in artifacts:
        before = _rss_mb()
        accepted = format_for_path(path).load_runtime().accepted_options
        s = open_session(path, device=device, threads=threads,
                         **{k: v for k, v in options.items() if k in accepted})
        sessions.append(s)
        memory.append(before)
    rows = []
    rng = np.random.default_rng(0)
    for batch in batch_sizes:
        inputs = []
        for i, s in enumerate(sessions):
            h, w = s.spec.input_size
            x = to_model_input(rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8), s.spec)
            for _ in range(warmup):
                s.run(x)
            inputs.append(x)
            if batch == batch_sizes[0]:
                memory[i] = _rss_mb() - memory[i]
        samples: list[list[float]] = [[] for _ in sessions]
        deadline = time.perf_counter() + seconds * len(sessions)
        while time.perf_counter() < deadline:
            for s, x, acc in zip(sessions, inputs, samples):  # one burst each, round robin
                acc += timed_runs(partial(s.run, x), 3)
        for s, acc, mem in zip(sessions, samples, memory):
            a = np.array(acc) * 1000
            rows.append(BenchRow(s.path.name, s.backend, str(s.precision_used or s.spec.precision),
                                 batch, float(np.percentile(a, 50)), float(np.percentile(a, 90)),
                                 batch * 1000 / float(np.mean(a)), mem, list(a)))
    for s in sessions:
        s.close()
    return BenchResult(rows)
