"""Export time to ONNX and ONNX Runtime latency (batch 1, FP32 and INT8), per model.

    python benchmarks/export_and_latency.py --models mobilenet_v3_large resnet18 --threads 2

Export time is wall time of edgecls.export (build + torch.onnx dynamo export + checker + the
check against PyTorch). Latency comes from edgecls.bench, which times the FP32 and INT8
artifacts of one model interleaved, so the INT8/FP32 ratio is measured in one run.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

MODELS = ("mobilenet_v3_large", "mobilenet_v2", "resnet18", "efficientnet_lite0")


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from edgecls.bench import bench
    from edgecls.exporting import export

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    table = Table("model", "weights", "export s (fp32)", "export s (int8)", "FP32 p50 ms",
                  "INT8 p50 ms", "INT8 speed-up", title=f"ONNX Runtime, batch 1, {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            weights = "pretrained" if model == "efficientnet_lite0" else "none"
            t = time.perf_counter()
            fp32 = export(model, to="onnx", out=Path(tmp) / f"{model}.onnx", weights=weights)
            t_fp32 = time.perf_counter() - t
            t = time.perf_counter()
            int8 = export(model, to="onnx", out=Path(tmp) / f"{model}.int8.onnx", weights=weights,
                          precision="int8", calib="photos")
            t_int8 = time.perf_counter() - t
            rows = bench([fp32, int8], threads=args.threads, seconds=args.seconds).rows
            table.add_row(model, weights, f"{t_fp32:.1f}", f"{t_int8:.1f}", f"{rows[0].p50_ms:.2f}",
                          f"{rows[1].p50_ms:.2f}", f"{rows[0].p50_ms / rows[1].p50_ms:.2f}x")
    Console(width=150).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
