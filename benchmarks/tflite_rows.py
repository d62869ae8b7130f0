"""TFLite benchmark rows: FP32 and full-INT8 (XNNPACK, 1 and 2 threads) per zoo model.

    python benchmarks/tflite_rows.py --out out/bench-tflite [--models mobilenet_v2 resnet18]
        [--calib photos] [--calib-size 64] [--runs 30] [--json rows.json]

Plugging in (benchmarks/compare_backends.py): `rows(models, workdir)` yields plain dicts with
the keys model, backend ("tflite"), precision, threads, device, latency_ms_p50,
latency_ms_p90, throughput_ips (batch 1), size_mb, export_s, weights, artifact, error (None
or one line) - one row per (model, precision, threads). A model that fails to export gives rows
with `error` set instead of stopping the table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

import numpy as np

MODELS = ("mobilenet_v3_large", "mobilenet_v2", "shufflenet_v2_x1_0", "squeezenet1_1",
          "resnet18", "efficientnet_lite0")
PRECISIONS = ("fp32", "int8")
THREADS = (1, 2)


def export_artifact(model: str, precision: str, workdir: Path, calib: str = "photos",
                    calib_size: int = 64) -> tuple[Path, float, str]:
    """Pretrained weights where they can be had; else random ones (latency is the same)."""
    from edgecls.errors import WeightsError
    from edgecls.exporting import export
    out = workdir / f"{model}{'' if precision == 'fp32' else '.' + precision}.tflite"
    t = time.perf_counter()
    weights = "pretrained"
    if not out.exists():
        kwargs = dict(to="tflite", out=out, precision=precision,
                      calib=calib if precision == "int8" else None, calib_size=calib_size,
                      check=precision != "int8")
        try:
            export(model, weights=weights, **kwargs)
        except WeightsError:
            weights = "none"
            export(model, weights=weights, **kwargs)
    else:
        from edgecls.runtimes.base import read_spec
        weights = read_spec(out).weights
    return out, time.perf_counter() - t, weights


def measure(path: Path, threads: int, runs: int = 30, warmup: int = 5) -> dict[str, float]:
    """Batch-1 latency of one session on a real-looking preprocessed input."""
    from edgecls.calibration.preprocess import to_model_input
    from edgecls.exporting import sample_inputs
    from edgecls.runtimes.base import open_session
    with open_session(path, device="cpu", threads=threads, interpreters=1) as s:
        x = to_model_input(sample_inputs(s.spec, 1), s.spec)
        for _ in range(warmup):
            s.run(x)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            s.run(x)
            times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return {"latency_ms_p50": float(np.percentile(ms, 50)),
            "latency_ms_p90": float(np.percentile(ms, 90)),
            "throughput_ips": float(1e3 / np.median(ms))}


def rows(models=MODELS, workdir: Path = Path("out/bench-tflite"), precisions=PRECISIONS,
         threads=THREADS, runs: int = 30, calib: str = "photos",
         calib_size: int = 64) -> Iterator[dict[str, Any]]:
    workdir.mkdir(parents=True, exist_ok=True)
    for model in models:
        for precision in precisions:
            base = {"model": model, "backend": "tflite", "precision": precision,
                    "device": "cpu (xnnpack)"}
            try:
                path, export_s, weights = export_artifact(model, precision, workdir, calib,
                                                          calib_size)
            except Exception as e:  # a row, not a crash
                line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                for n in threads:
                    yield {**base, "threads": n, "error": f"export: {line}"}
                continue
            for n in threads:
                row = {**base, "threads": n, "artifact": str(path), "export_s": round(export_s, 1),
                       "weights": weights,
                       "size_mb": round(path.stat().st_size / 2 ** 20, 2), "error": None}
                try:
                    row.update(measure(path, n, runs))
                except Exception as e:
                    row["error"] = f"run: {(str(e).strip().splitlines() or ['?'])[0][:200]}"
                yield row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--out", type=Path, default=Path("out/bench-tflite"))
    p.add_argument("--calib", default="photos")
    p.add_argument("--calib-size", type=int, default=64)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    table = []
    print(f"{'model':20} {'prec':5} {'thr':>3} {'p50 ms':>8} {'p90 ms':>8} {'MB':>6}  note")
    for row in rows(a.models, a.out, runs=a.runs, calib=a.calib, calib_size=a.calib_size):
        table.append(row)
        if row.get("error"):
            print(f"{row['model']:20} {row['precision']:5} {row['threads']:>3}  {row['error']}")
        else:
            print(f"{row['model']:20} {row['precision']:5} {row['threads']:>3} "
                  f"{row['latency_ms_p50']:8.2f} {row['latency_ms_p90']:8.2f} "
                  f"{row['size_mb']:6.2f}  export {row['export_s']}s, weights {row['weights']}")
        sys.stdout.flush()
    if a.json:
        a.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        traceback.print_exc()
        sys.exit(130)
