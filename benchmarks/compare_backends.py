"""ONNX Runtime vs OpenVINO vs TFLite, FP32 and INT8, on the same CPU in one interleaved run.

    python benchmarks/compare_backends.py --seconds 5 --threads 2 --out out/bench

Every iteration runs each backend once, round-robin (batch 1, then batch 16), so background
noise - other processes, turbo, thermal - falls on all backends alike and the ratios
against ONNX Runtime FP32 stay meaningful on a busy machine.

A backend is a row of BACKENDS: a name, how to make its artifact, how to open it. Rows that
share an artifact (OpenVINO FP32 with the f32 hint and with its default precision) make it
once. TFLite rows run at the --threads given and at 1 thread (XNNPACK).

Weights: pretrained weights cannot be downloaded here, so models run with random weights
(latency does not depend on them) except efficientnet_lite0, whose real weights ship
offline; INT8 is calibrated on the built-in `photos`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

MODELS = ("mobilenet_v3_large", "mobilenet_v2", "shufflenet_v2_x1_0", "squeezenet1_1",
          "resnet18", "efficientnet_lite0")
REAL_WEIGHTS = {"efficientnet_lite0": "pretrained"}
BATCH = 16
SETTLE_S = 0.05


@dataclass
class Backend:
    name: str
    make: Callable[[str, Path], Path]                 # (model, folder) -> artifact
    open: Callable[[Path, int], Any]                  # (artifact, threads) -> Session
    needs: Callable[[], str | None] = lambda: None    # a reason to skip, or None


def _export(to: str, precision: str) -> Callable[[str, Path], Path]:
    """edgecls.exporting.export, cached on disk: rows sharing an artifact make it once."""
    def make(model: str, folder: Path) -> Path:
        from edgecls.exporting import export
        from edgecls.formats import get_format
        tag = "" if precision == "fp32" else f".{precision}"
        out = folder / f"{model}{tag}{get_format(to).suffixes[0]}"
        if out.is_file():
            return out
        weights = REAL_WEIGHTS.get(model, "none")
        # INT8 parity against a random-weight model compares near-zero logits: meaningless
        # (and slow), so it runs only for the model with real weights.
        return export(model, to=to, out=out, precision=precision, weights=weights,
                      calib="photos" if precision == "int8" else None,
                      check=precision != "int8" or weights != "none")
    return make


def _session(fixed_threads: int | None = None, **options: Any) -> Callable[[Path, int], Any]:
    def open_(path: Path, threads: int):
        from edgecls.formats import open_session
        return open_session(path, device="cpu", threads=fixed_threads or threads, **options)
    return open_


def _module(name: str, why: str) -> Callable[[], str | None]:
    return lambda: None if importlib.util.find_spec(name) else why


BACKENDS = [
    Backend("ORT FP32", _export("onnx", "fp32"), _session()),
    Backend("ORT INT8", _export("onnx", "int8"), _session()),
    Backend("OV FP32 (f32 hint)", _export("openvino", "fp32"),
            _session(inference_precision="f32")),
    Backend("OV default precision", _export("openvino", "fp32"),
            _session(inference_precision="auto")),
    Backend("OV INT8", _export("openvino", "int8"), _session()),
    *[Backend(f"TFLite {p.upper()}{suffix}", _export("tflite", p), _session(fixed_threads=t),
              needs=_module("litert_torch", "pip install 'edgecls[tflite]'"))
      for p in ("fp32", "int8") for t, suffix in ((None, ""), (1, " 1 thread"))],
]
BASELINE = "ORT FP32"


@dataclass
class Result:
    model: str
    backend: str
    precision_used: str | None
    latency_ms: list[float] = field(default_factory=list)
    batch_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latency_ms)
        return {"model": self.model, "backend": self.backend,
                "precision_used": self.precision_used,
                "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
                "img_s": BATCH / float(np.median(self.batch_s)), "iterations": len(lat)}


def prepare(model: str, folder: Path, threads: int, backends: list[Backend]):
    """Open every backend's session for one model; a row that cannot be made is skipped."""
    sessions = {}
    for b in backends:
        reason = b.needs()
        try:
            if reason is None:
                sessions[b.name] = b.open(b.make(model, folder), threads)
        except Exception as e:  # one backend failing must not stop the comparison
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        if reason:
            print(f"skip {model} / {b.name}: {reason}", file=sys.stderr)
    return sessions


def measure(model: str, sessions: dict[str, Any], seconds: float) -> list[Result]:
    """Round-robin: each iteration times every backend at batch 1, then at batch 16."""
    from edgecls.imaging.preprocess import to_model_input
    any_spec = next(iter(sessions.values())).spec
    h, w = any_spec.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (BATCH, h, w, 3), dtype=np.uint8)
    inputs = {n: (to_model_input(pixels[:1], s.spec), to_model_input(pixels, s.spec))
              for n, s in sessions.items()}
    results = {n: Result(model, n, s.precision_used) for n, s in sessions.items()}
    for n, s in sessions.items():  # warm-up: first runs allocate and compile kernels
        for _ in range(3):
            s.run(inputs[n][0])
        s.run(inputs[n][1])
    end = time.perf_counter() + seconds
    # A backend's worker threads keep spinning for a while after a run (ONNX Runtime's
    # intra-op pool does by default); a short pause stops them from stealing the next
    # backend's cores, which otherwise makes whoever runs second look several times slower.
    settle = lambda: time.sleep(SETTLE_S)  # noqa: E731
    while time.perf_counter() < end or len(next(iter(results.values())).batch_s) < 5:
        for n, s in sessions.items():
            settle()
            t = time.perf_counter()
            s.run(inputs[n][0])
            results[n].latency_ms.append((time.perf_counter() - t) * 1000)
        for n, s in sessions.items():
            settle()
            t = time.perf_counter()
            s.run(inputs[n][1])
            results[n].batch_s.append(time.perf_counter() - t)
    return list(results.values())


def render(rows: list[dict[str, Any]], threads: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "backend", "runs as", "b1 p50 ms", "b1 p90 ms", f"b{BATCH} img/s",
                  "p50 vs ORT FP32", "img/s vs ORT FP32",
                  title=f"edgecls backends on CPU, {threads} threads (ratios > 1: faster)")
    base = {r["model"]: r for r in rows if r["backend"] == BASELINE}
    for r in rows:
        b = base.get(r["model"])
        speed = f"{b['p50_ms'] / r['p50_ms']:.2f}x" if b else "-"
        thru = f"{r['img_s'] / b['img_s']:.2f}x" if b else "-"
        table.add_row(r["model"], r["backend"], str(r["precision_used"]), f"{r['p50_ms']:.2f}",
                      f"{r['p90_ms']:.2f}", f"{r['img_s']:.1f}", speed, thru)
    Console(width=max(Console().width, 150)).print(table)  # pipes get 80 columns otherwise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0, help="measuring time per model")
    p.add_argument("--out", type=Path, help="folder for compare_backends.json (and artifacts)")
    args = p.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="edgecls-bench-") as tmp:
        folder = args.out / "artifacts" if args.out else Path(tmp)
        rows = []
        for model in args.models:
            sessions = prepare(model, folder, args.threads, BACKENDS)
            if sessions:
                rows += [r.summary() for r in measure(model, sessions, args.seconds)]
            for s in sessions.values():
                s.close()
    render(rows, args.threads)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare_backends.json").write_text(json.dumps(
            {"threads": args.threads, "seconds": args.seconds, "batch": BATCH, "rows": rows},
            indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
