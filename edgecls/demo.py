"""`make demo`: the main job on the built-in default, offline.

This machine (its INT8 instruction set decides the INT8 recipes) -> EfficientNet-Lite0 with
its real ImageNet weights -> FP32, FP16 and INT8 artifacts for every backend installed here,
each INT8 recipe measured and chosen for this CPU (--target auto) -> the recipes chosen,
with their speed-up over ONNX Runtime FP32 -> Classifier on the photos that ship with
scikit-image / scikit-learn / matplotlib (PyTorch top-1 vs each artifact's top-1) -> the
parity verdict on the verification photos (351 crops of 9 photos that neither calibrated
nor selected anything) -> QAT for the INT8 format furthest from FP32.
"""
from __future__ import annotations

import logging
from pathlib import Path

from edgecls import hardware, zoo
from edgecls.formats import FORMATS, read_spec

log = logging.getLogger("edgecls")

MODEL = "efficientnet_lite0"
# (format, precision) pairs the demo makes, in this order, when the backend is installed
PLAN = [("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"),
        ("openvino", "fp32"), ("openvino", "int8"), ("tflite", "fp32"), ("tflite", "int8")]


def demo(out: Path = Path("out/demo")) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    # OpenCV (imaging, classifier, exporting) only when the demo runs: the CLI imports demo
    from edgecls.imaging.datasets import photo_originals
    from edgecls.classifier import Classifier, softmax
    from edgecls.exporting import default_output, export
    from edgecls.verification import parity

    console = Console(width=max(Console().width, 150))
    console.rule(f"this machine: {hardware.cpu().summary()}")
    model, spec = zoo.build(MODEL)   # once: every export and the reference share it
    artifacts = []
    for fmt_name, precision in PLAN:
        fmt = FORMATS[fmt_name]
        if not fmt.available():
            console.print(f"[yellow]skipping {fmt_name}: pip install 'edgecls[{fmt.extra}]'[/yellow]")
            continue
        path = default_output(spec, fmt, precision, out)
        console.rule(f"export {MODEL} -> {fmt_name} {precision}")
        # by its zoo name, so each artifact records a reference `edgecls parity` can rebuild
        # on its own (a module in memory would need --reference); the demo folder is the
        # demo's own: a second `make demo` replaces what the first wrote there
        artifacts.append(export(MODEL, to=fmt_name, out=path, precision=precision,
                                calib="photos" if precision == "int8" else None, force=True))

    int8_recipes(artifacts, console)
    photos = photo_originals()
    crops = photos.crops(spec)
    from edgecls.imaging.preprocess import to_model_input
    with torch.no_grad():
        ref = softmax(model(torch.from_numpy(to_model_input(crops, spec))).numpy())
    table = Table(title=f"{MODEL} on the bundled photos: PyTorch vs each artifact (top-1, score)")
    table.add_column("photo")
    table.add_column("PyTorch")
    for a in artifacts:
        table.add_column(a.name.removeprefix(f"{MODEL}."))
    rows = [[item.key.split(":")[1], f"{spec.label(int(p.argmax()))} {p.max():.2f}"]
            for item, p in zip(photos.items, ref)]
    for a in artifacts:
        with Classifier(a) as clf:
            probs = clf.probabilities([item.rgb() for item in photos.items])
        for row, p, r in zip(rows, probs, ref):
            same = "[green]=[/green]" if p.argmax() == r.argmax() else "[red]≠[/red]"
            row.append(f"{same} {spec.label(int(p.argmax()))} {p.max():.2f}")
    for row in rows:
        table.add_row(*row)
    console.print(table)

    console.rule("the verdict: parity on the verification photos (no calibration or selection "
                 "image shows one of them)")
    report = parity(artifacts, data="photos", reference=model, reference_spec=spec,
                    out=out / "report")
    report.print(console)
    console.print(f"reports: {out / 'report'}/report.{{json,md,html}}")
    qat_row(model, spec, report, out, console)
    return 0


def int8_recipes(artifacts: list[Path], console) -> None:
    """What each INT8 export chose on this machine, from the artifacts' own specs."""
    from rich.table import Table

    table = Table("artifact", "target", "recipe chosen", "KL on selection images", "vs ORT FP32",
                  "why", title="INT8 recipes chosen for this CPU (--target auto), on the "
                               "selection photos: how they were chosen, not the verdict")
    for path in artifacts:
        q = read_spec(path).quantization or {}
        search = q.get("search", {})
        if read_spec(path).precision != "int8" or "chosen" not in search:
            continue
        chosen = search["candidates"][search["chosen_index"]]
        table.add_row(path.name, q["target"], search["chosen"], f"{chosen['kl']:.4f}",
                      f"{chosen['speedup_vs_fp32']:.2f}x" if chosen["speedup_vs_fp32"] else "-",
                      search["reason"])
    console.print(table)


def qat_row(model, spec, report, out: Path, console) -> Path | None:
    """Quantization-aware training for the INT8 format whose PTQ falls short on this machine
    (the furthest from FP32 by KL of those that did not pass). The student trains on the
    calibration photos and keeps the epoch the selection photos prefer; its export writes
    the closer of QAT and its PTQ twin on the selection photos and shows both on the
    verification photos."""
    # OpenCV and torch (exporting, qat_training) only when the demo runs
    from edgecls.exporting import export
    from edgecls.qat_training.training import qat

    short = [r for r in report.results if r.precision == "int8" and not r.passed]
    if not short:
        console.print("every INT8 artifact meets its tolerance here: no QAT row")
        return None
    worst = max(short, key=lambda r: r.kl_mean)
    console.rule(f"QAT for {worst.format}: its PTQ artifact is at KL {worst.kl_mean:.4f} from FP32")
    student = qat(model, spec, calib="photos", to=worst.format, epochs=3,
                  checkpoint=out / f"{spec.name}.{worst.format}-qat.pt")
    return export(student, to=worst.format, out=out, precision="int8", spec=spec, force=True)


__all__ = ["demo"]
