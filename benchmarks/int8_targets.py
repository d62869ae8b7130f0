"""INT8 made for THIS machine, per backend: the recipe the search chose, its agreement / drop,
the layers it changed, and its batch-1 latency against ONNX Runtime FP32 of the same model.

    python benchmarks/int8_targets.py [--out out/int8-targets] [--models efficientnet_lite0 ...]

EfficientNet-Lite0 uses its real ImageNet weights on the photo crops (unlabelled: agreement);
mobilenet_v2 / mobilenet_v3_large have no offline weights, so they are trained here on
scikit-learn's digits (64 px, a few epochs) and judged on held-out digits (labelled: drop).
Each INT8 artifact is timed in its own process beside the ORT FP32 artifact (two sessions,
idle threads not spinning), so the ratios of one backend never share a process with another
backend's thread pool. Compare ratios, not milliseconds, and only within one CPU kind: the
machine is printed first.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

FORMATS = ("onnx", "openvino", "tflite")
DIGITS_EPOCHS = 6
DIGITS_SIZE = 64


def digits_model(name: str, work: Path):
    """A zoo architecture trained from scratch on the digits at 64 px; (model, spec, calib,
    val)."""
    import numpy as np
    import torch

    from edgecls import zoo
    from edgecls.imaging.datasets import digits
    from edgecls.imaging.preprocess import resize_crop, to_model_input

    model, spec = zoo.build(name, weights="none", num_classes=10,
                            labels=[str(i) for i in range(10)])
    spec = spec.derive(input_size=(DIGITS_SIZE, DIGITS_SIZE), resize=DIGITS_SIZE,
                       weights="file:trained-in-benchmark", trained=True)
    full = digits()
    calib, val = full.split(calib_size=200, val_size=400, seed=0)
    train = [i for i in full.items if i.key not in calib.keys() | val.keys()]
    x = torch.from_numpy(to_model_input(np.stack([resize_crop(i.rgb(), spec) for i in train]), spec))
    y = torch.tensor([i.label for i in train])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for epoch in range(DIGITS_EPOCHS):
        model.train()
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        print(f"  {name} epoch {epoch + 1}/{DIGITS_EPOCHS}", flush=True)
    return model.eval(), spec, calib, val


def export_all(name: str, out: Path) -> tuple[Path, list[Path], dict]:
    from edgecls import zoo
    from edgecls.exporting import export

    if name == "efficientnet_lite0":
        model, spec = zoo.build(name)
        calib, data = "photos", None
    else:
        model, spec, calib, data = digits_model(name, out)
    fp32 = export(model, to="onnx", out=out / f"{name}.onnx", spec=spec)
    int8 = []
    for fmt in FORMATS:
        suffix = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}[fmt]
        int8.append(export(model, to=fmt, out=out / f"{name}.int8{suffix}", spec=spec,
                           precision="int8", calib=calib, options={"data": data} if data else {}))
    return fp32, int8, {"calibration": str(calib) if isinstance(calib, str) else calib.name}


def time_pair(fp32: Path, int8: Path) -> dict:
    """Batch-1 p50 of both, interleaved, in a fresh process."""
    code = ("import json, sys; from edgecls.bench import bench; "
            "r = bench(sys.argv[1:], seconds=4.0); "
            "print(json.dumps([x.p50_ms for x in r.rows]))")
    out = subprocess.run([sys.executable, "-c", code, str(fp32), str(int8)], check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    fp32_ms, int8_ms = json.loads(out)
    return {"ort_fp32_ms": round(fp32_ms, 2), "int8_ms": round(int8_ms, 2),
            "speedup_vs_ort_fp32": round(fp32_ms / int8_ms, 2)}


def summary(path: Path) -> dict:
    from edgecls.formats import read_spec
    q = read_spec(path).quantization
    search = q.get("search", {})
    chosen = next((c for c in search.get("candidates", []) if c["recipe"] == search.get("chosen")), {})
    changed = {k: len(q.get(k) or []) for k in ("u8u8_weights", "kept_in_float", "float_ops")
               if q.get(k)}
    return {"target": q["target"], "recipe": search.get("chosen", q.get("recipe")),
            "agreement": chosen.get("agreement"), "top1_drop": chosen.get("top1_drop"),
            "passed": chosen.get("passed"), "candidates": len(search.get("candidates", [])),
            "changed_layers": changed}


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    from edgecls import hardware
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/int8-targets")
    p.add_argument("--models", nargs="+", default=["efficientnet_lite0", "mobilenet_v2",
                                                   "mobilenet_v3_large"])
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(width=180)
    console.rule(f"machine: {hardware.cpu().summary()}")
    rows = []
    for name in args.models:
        fp32, int8, _ = export_all(name, out)
        for path in int8:
            rows.append({"model": name, "artifact": path.name, **summary(path),
                         **time_pair(fp32, path)})
    table = Table("model", "artifact", "target", "recipe chosen", "agreement", "drop pt",
                  "met", "changed", "ORT FP32 ms", "INT8 ms", "vs ORT FP32",
                  title=f"INT8 made for this machine ({hardware.cpu().summary()})")
    for r in rows:
        table.add_row(r["model"], r["artifact"], r["target"], r["recipe"],
                      "-" if r["agreement"] is None else f"{100 * r['agreement']:.1f}%",
                      "-" if r["top1_drop"] is None else f"{r['top1_drop']:+.2f}",
                      "yes" if r["passed"] else "NO", json.dumps(r["changed_layers"]),
                      f"{r['ort_fp32_ms']:.2f}", f"{r['int8_ms']:.2f}",
                      f"{r['speedup_vs_ort_fp32']:.2f}x")
    console.print(table)
    (out / "int8_targets.json").write_text(json.dumps(
        {"machine": hardware.describe(), "rows": rows}, indent=2))
    console.print(f"wrote {out / 'int8_targets.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
