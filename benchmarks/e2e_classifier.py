"""End to end: images/s of Classifier against a PIL + torchvision-transforms + ONNX Runtime
loop on the same model and images, and Classifier's overhead over the raw runtime call.

    python benchmarks/e2e_classifier.py [--model out/e2e/efficientnet_lite0.int8.onnx] [--seconds 5]

Images: the photos bundled with scikit-image / scikit-learn / matplotlib written as JPEG
files at their own size (0.1-0.9 MP), and the same photos at camera size (4x per side,
2-14 MP), where decoding dominates and reduced-scale JPEG decoding applies.

    baseline      PIL open + convert, torchvision Resize/CenterCrop/ToTensor/Normalize, one
                  onnxruntime InferenceSession.run per image (what most scripts do)
    predict       Classifier.predict(path), one image at a time
    predict_iter  Classifier.predict_iter(paths, workers=N): decoding overlaps inference
    overhead      what Classifier.predict(rgb array) adds to preprocess + the raw
                  InferenceSession.run on the same session, batch 1: the median of paired
                  differences (<= 5% is the goal)

Every loop uses the same ORT session settings (all cores). Each measurement runs alone, one
after the other; compare the ratios of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def image_sets(folder: Path) -> dict[str, list[Path]]:
    from edgecls.imaging.datasets import photo_originals
    sets: dict[str, list[Path]] = {"native": [], "camera (4x)": []}
    for item in photo_originals().items:
        bgr = cv2.cvtColor(item.rgb(), cv2.COLOR_RGB2BGR)
        name = item.key.split(":")[1]
        for kind, img in (("native", bgr),
                          ("camera (4x)", cv2.resize(bgr, None, fx=4, fy=4,
                                                     interpolation=cv2.INTER_CUBIC))):
            path = folder / f"{name}-{kind.split()[0]}.jpg"
            cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            sets[kind].append(path)
    return sets


def rate(step, items: list, seconds: float) -> float:
    """Items per second of `step(item)` cycling over `items` for about `seconds`."""
    step(items[0])
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < len(items):
        step(items[n % len(items)])
        n += 1
    return n / (time.perf_counter() - start)


def baseline(model: Path, spec, threads: int):
    """The PIL + torchvision + ORT loop's step."""
    import onnxruntime as ort
    from PIL import Image

    from edgecls.zoo.torchvision_shim import import_torchvision
    T = import_torchvision().transforms
    import torch
    # the transforms' tensor ops on one thread: torch's OpenMP workers otherwise spin after
    # each op and take the cores from ONNX Runtime (3.8 instead of ~11 img/s here)
    torch.set_num_threads(1)
    interpolation = {"bilinear": T.InterpolationMode.BILINEAR,
                     "bicubic": T.InterpolationMode.BICUBIC}[spec.interpolation]
    transform = T.Compose([T.Resize(spec.resize, interpolation=interpolation),
                           T.CenterCrop(spec.input_size), T.ToTensor(),
                           T.Normalize(spec.mean, spec.std)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def step(path: Path):
        with Image.open(path) as im:
            x = transform(im.convert("RGB")).numpy()[None]
        return session.run(None, {name: x})[0]
    return step


def overhead(clf, images: list[np.ndarray], rounds: int = 400) -> tuple[float, float, float]:
    """(raw ms, Classifier's added ms, ratio) at batch 1: medians over adjacent pairs of calls,
    in alternating order, so that machine noise and order effects cancel in the differences."""
    from edgecls.imaging.preprocess import preprocess
    raw_session = clf.session._session          # the very ORT session the Classifier runs
    name = raw_session.get_inputs()[0].name
    calls = {"raw": lambda img: raw_session.run(None, {name: preprocess([img], clf.spec)}),
             "ours": clf.predict}
    raw, added = [], []
    for i in range(rounds):
        img = images[i % len(images)]
        took = {}
        for who in (("raw", "ours") if i % 2 else ("ours", "raw")):
            t = time.perf_counter()
            calls[who](img)
            took[who] = time.perf_counter() - t
        raw.append(took["raw"])
        added.append(took["ours"] - took["raw"])
    r, a = float(np.median(raw)) * 1000, float(np.median(added)) * 1000
    return r, a, (r + a) / r


def model_path(given: str | None, out: Path) -> Path:
    if given:
        return Path(given)
    path = out / "efficientnet_lite0.int8.onnx"
    if not path.is_file():
        from edgecls.exporting import export
        export("efficientnet_lite0", to="onnx", precision="int8", calib="photos", out=path)
    return path


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    from edgecls import hardware
    from edgecls.classifier import Classifier
    from edgecls.formats import read_spec
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="an ONNX artifact (default: EfficientNet-Lite0 INT8, made once)")
    p.add_argument("--out", default="out/e2e")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=hardware.cpu().cores)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = model_path(args.model, out)
    spec = read_spec(model)
    console = Console(width=150)
    console.rule(f"{model.name} on {hardware.cpu().summary()}; load average "
                 f"{os.getloadavg()[0]:.1f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, paths in image_sets(Path(tmp)).items():
            base = rate(baseline(model, spec, args.threads), paths, args.seconds)
            with Classifier(model, threads=args.threads) as clf:
                single = rate(clf.predict, paths, args.seconds)
                start = time.perf_counter()
                n = 0
                while time.perf_counter() - start < args.seconds:
                    n += sum(1 for _ in clf.predict_iter(paths * 4, workers=args.workers))
                piped = n / (time.perf_counter() - start)
            rows.append({"images": kind, "baseline_img_s": round(base, 1),
                         "predict_img_s": round(single, 1), "predict_iter_img_s": round(piped, 1),
                         "speedup_predict": round(single / base, 2),
                         "speedup_predict_iter": round(piped / base, 2)})
        with Classifier(model, threads=args.threads) as clf:
            from edgecls.imaging.preprocess import load_rgb
            arrays = [load_rgb(p) for p in sorted(Path(tmp).glob("*-native.jpg"))]
            raw_ms, added_ms, ratio = overhead(clf, arrays)
    table = Table("images", "PIL+torchvision+ORT img/s", "Classifier.predict img/s",
                  f"predict_iter (workers={args.workers}) img/s", "predict vs baseline",
                  "predict_iter vs baseline",
                  title=f"end-to-end, {model.name}, {args.threads} threads")
    for r in rows:
        table.add_row(r["images"], f"{r['baseline_img_s']:.1f}", f"{r['predict_img_s']:.1f}",
                      f"{r['predict_iter_img_s']:.1f}", f"{r['speedup_predict']:.2f}x",
                      f"{r['speedup_predict_iter']:.2f}x")
    console.print(table)
    console.print(f"Classifier.predict(rgb) adds {added_ms:+.3f} ms (median of paired "
                  f"differences) to preprocess + the raw InferenceSession.run ({raw_ms:.2f} ms) "
                  f"at batch 1: {ratio:.3f}x")
    (out / "e2e_classifier.json").write_text(json.dumps(
        {"machine": hardware.describe(), "model": str(model), "rows": rows,
         "overhead": {"raw_ms": raw_ms, "classifier_added_ms": added_ms, "ratio": ratio},
         "load_average": os.getloadavg()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
