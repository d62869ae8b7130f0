"""ExecuTorch beside ONNX Runtime, OpenVINO and TFLite: FP32 and INT8, one table per model.

    python benchmarks/executorch_table.py [--models efficientnet_lite0 mobilenet_v2 ...]
        [--artifacts out/et-table/artifacts] [--out out/et-table] [--seconds 4] [--threads 2]

Everything goes through the command line a user has:
  1. `edgecls export M --to onnx,openvino,tflite,executorch [--int8 --calib photos]` for
     each model whose artifacts are not in --artifacts yet (EfficientNet-Lite0 with its real
     weights and the INT8 search; models without offline weights with --weights none and
     --no-search: a search on random weights ranks noise);
  2. `edgecls bench` (edgecls.bench.bench, what the command runs): the model's eight
     artifacts in ONE process, interleaved, batch 1 - so report ratios to ORT FP32 of the same
     run, never milliseconds across runs or machines;
  3. `edgecls parity ... --data photos` (the verification photos: 351 crops of 9 photos
     that neither calibrated nor chose anything) for agreement and KL to the torch FP32
     reference;
  4. the .pte's delegation facts from its spec (`edgecls info`) and the size on disk.

Writes OUT/executorch_table.{md,json}. Random weights: agreement and KL then say only that
the artifact computes what the random model computes (near-uniform logits make KL tiny).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

MODELS = ("efficientnet_lite0", "mobilenet_v2", "mobilenet_v3_large")
REAL_WEIGHTS = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
FORMATS = ("onnx", "openvino", "tflite", "executorch")
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite", "executorch": ".pte"}
NAME = {"onnx": "ORT", "openvino": "OpenVINO", "tflite": "TFLite", "executorch": "ExecuTorch"}
EDGECLS = [sys.executable, "-m", "edgecls"]


def artifacts(model: str, folder: Path) -> dict[tuple[str, str], Path]:
    return {(fmt, p): folder / f"{model}{'' if p == 'fp32' else '.int8'}{SUFFIX[fmt]}"
            for p in ("fp32", "int8") for fmt in FORMATS}


def export(model: str, folder: Path) -> None:
    """The CLI exports of a model's missing artifacts (one command per precision)."""
    paths = artifacts(model, folder)
    for precision in ("fp32", "int8"):
        missing = [f for f in FORMATS if not paths[f, precision].is_file()]
        if not missing:
            continue
        cmd = [*EDGECLS, "export", model, "--to", ",".join(missing), "-o", f"{folder}/"]
        if model not in REAL_WEIGHTS:
            cmd += ["--weights", "none"]
        if precision == "int8":
            cmd += ["--int8", "--calib", "photos"]
            if model not in REAL_WEIGHTS:
                cmd += ["--no-search"]
        print("+", " ".join(cmd[2:]), file=sys.stderr)
        subprocess.run(["nice", "-n", "5", *cmd], check=True)


def size_mb(path: Path) -> float:
    extra = [path.with_suffix(".bin")] if path.suffix == ".xml" else []
    return sum(p.stat().st_size for p in (path, *extra)) / 1e6


def parity(model: str, paths: list[Path], out: Path, limit: int | None) -> dict[str, Any]:
    """`edgecls parity` on the verification photos; its report.json's row per artifact."""
    folder = out / "parity" / model
    cmd = [*EDGECLS, "parity", *map(str, paths), "--data", "photos", "-o", str(folder)]
    if limit:
        cmd += ["--limit", str(limit)]
    proc = subprocess.run(["nice", "-n", "5", *cmd], capture_output=True, text=True)
    if proc.returncode not in (0, 1, 3):     # 1 / 3: a candidate fails / is inconclusive
        raise RuntimeError(f"parity {model}: {proc.stderr.strip()[-500:]}")
    report = json.loads((folder / "report.json").read_text())
    return {Path(r["path"]).name: r for r in report["results"]}


def methods(q: dict[str, Any] | None) -> str:
    """What was applied beyond min/max calibration, from the artifact's spec."""
    from edgecls.backends.onnx.torch_start import METHOD_WORDS
    q = q or {}
    done = [METHOD_WORDS["rounding"]] if q.get("rounding") else []
    corrected = q.get("bias_correction")
    if isinstance(corrected, dict):
        done.append(f"bias correction ({corrected.get('layers')} layers)")
    elif corrected:          # a sentence: why it was not applied
        done.append(f"bias correction: {corrected}")
    if q.get("input"):
        done.append(METHOD_WORDS["input"])
    if q.get("activation_ranges"):
        done.append(f"ranges: {q['activation_ranges']}")
    kept = q.get("kept_in_float") or []
    if kept:
        done.append(f"{len(kept)} layer(s) in float")
    search = q.get("search") or {}
    if search.get("candidates"):
        done.append(f"search over {len(search['candidates'])} candidates")
    return "; ".join(done) or "min/max only"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--artifacts", type=Path, default=Path("out/et-table/artifacts"))
    p.add_argument("--out", type=Path, default=Path("out/et-table"))
    p.add_argument("--seconds", type=float, default=4.0, help="timing per artifact")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, help="parity on at most this many crops")
    args = p.parse_args(argv)
    from edgecls import hardware
    from edgecls.bench import bench
    from edgecls.formats import read_spec

    machine = hardware.cpu().summary()
    rows: list[dict[str, Any]] = []
    args.artifacts.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        export(model, args.artifacts)
        paths = artifacts(model, args.artifacts)
        timed = bench(list(paths.values()), threads=args.threads, seconds=args.seconds)
        p50 = {r.artifact: r.p50_ms for r in timed.rows}
        base = p50[paths["onnx", "fp32"].name]
        judged = parity(model, list(paths.values()), args.out, args.limit)
        for (fmt, precision), path in paths.items():
            r = judged.get(path.name, {})
            spec = read_spec(path)
            facts = spec.notes.get("executorch", {}) if fmt == "executorch" else {}
            rows.append({
                "model": model, "weights": "real" if model in REAL_WEIGHTS else "random",
                "backend": NAME[fmt], "precision": precision,
                "runs_as": r.get("precision_used"),
                "speed_vs_ort_fp32": base / p50[path.name], "p50_ms": p50[path.name],
                "agreement": r.get("agreement"), "decisive_agreement": r.get("decisive_agreement"),
                "kl": r.get("kl_mean"), "kl_ci": r.get("kl_ci"), "outcome": r.get("outcome"),
                "n": r.get("n"), "size_mb": size_mb(path),
                "delegated_share": facts.get("delegated_share"),
                "portable_ops": facts.get("portable_ops"),
                "recipe": (spec.quantization or {}).get("method") if precision == "int8" else None,
                "methods": methods(spec.quantization) if precision == "int8" else None,
            })
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "executorch_table.json").write_text(json.dumps(
        {"machine": hardware.describe(), "threads": args.threads, "rows": rows}, indent=2))
    (args.out / "executorch_table.md").write_text(render(rows, machine, args.threads))
    print(render(rows, machine, args.threads))
    return 0


def render(rows: list[dict[str, Any]], machine: str, threads: int) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"{machine}, {threads} threads; speed = ORT FP32 p50 / p50, batch 1, one "
             "interleaved run per model (> 1: faster)", "",
             "| model | artifact | runs as | recipe | speed vs ORT FP32 | agreement | decisive "
             "| KL to FP32 [95% CI] | verdict | delegated | size MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        model = r["model"] + (" (random weights)" if r["weights"] == "random" else "")
        kl = "-" if r["kl"] is None else f"{r['kl']:.2g}"
        if r["kl"] is not None and r.get("kl_ci"):
            kl += f" [{r['kl_ci'][0]:.2g}, {r['kl_ci'][1]:.2g}]"
        recipe = f"{r['recipe']}: {r['methods']}" if r.get("recipe") else ""
        lines.append(f"| {model} | {r['backend']} {r['precision'].upper()} | {r['runs_as']} | "
                     f"{recipe} | "
                     f"{r['speed_vs_ort_fp32']:.2f}x | {pct(r['agreement'])} | "
                     f"{pct(r['decisive_agreement'])} | {kl} | {r['outcome']} | "
                     f"{pct(r['delegated_share']) if r['delegated_share'] is not None else ''} | "
                     f"{r['size_mb']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
