"""`edgecls export --qat`: train once per family of the formats asked for, export each."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgecls.errors import UnsupportedOptionError
from edgecls.exporting import QAT_TAG, check_output, export, options_for, output_for, planned_output
from edgecls.formats import get_format
from edgecls.qat_training.families import resolve
from edgecls.qat_training.training import default_checkpoint, qat
from edgecls.sources import SourceRequest, resolve as resolve_source


def export_with_qat(model: Any, to: str | Sequence[str], out: str | Path | None = None, *,
                    spec=None, weights: str = "pretrained", num_classes: int | None = None,
                    labels: list[str] | None = None, calib: Any = None, train: Any = None,
                    target: str | None = None, epochs: int = 3, lr: float | None = None,
                    seed: int = 0, resume: bool = False, calib_size: int = 300,
                    check: bool = True, options: dict[str, Any] | None = None,
                    strict: bool = False, preprocessing: dict[str, Any] | None = None,
                    model_kwargs: dict[str, Any] | None = None,
                    trust_remote_code: bool = False, force: bool = False) -> list[Path]:
    """QAT INT8 artifacts of a model source (edgecls.sources: a zoo name, timm:/
    torchvision: names, a .pt2 program, a factory; or a torch module with `spec`) for every
    format in `to`; formats of one family share one student. `out`: the artifact's path for
    one format, a folder for several (default out/). Checkpoints go next to the artifacts.
    Every artifact's files are checked before training: one that exists is refused unless
    `force`, one that is an input always."""
    to = to.split(",") if isinstance(to, str) else list(to)
    options = dict(options or {})
    target = options.pop("target", None) or target
    destination = output_for(out, to)
    resolved = resolve_source(model, SourceRequest.of(
        weights=weights, num_classes=num_classes, labels=labels, model_kwargs=model_kwargs,
        trust_remote_code=trust_remote_code, preprocessing=preprocessing, spec=spec))
    if resolved.model is None:
        raise UnsupportedOptionError(f"--qat trains a torch model, and {model} is an ONNX file; "
                                     "start from the torch model (or use PTQ: --int8)")
    source, model, spec = model, resolved.model, resolved.spec
    outs = {fmt: planned_output(destination, get_format(fmt), spec, QAT_TAG) for fmt in to}
    for fmt, out in outs.items():      # before any training
        check_output(out, get_format(fmt), force=force,
                     inputs=(source, weights, calib, train, options.get("select"),
                             options.get("data")))
    students: dict[str, Any] = {}
    written = []
    for fmt in to:
        family, _ = resolve(fmt, target)
        if family.name not in students:
            students[family.name] = qat(
                model, spec, calib=calib, train=train, data=options.get("data"),
                select=options.get("select"), to=fmt,
                target=target, epochs=epochs, lr=lr, seed=seed, resume=resume, size=calib_size,
                checkpoint=default_checkpoint(spec, family, outs[fmt].parent))
        written.append(export(students[family.name], to=fmt, out=outs[fmt], precision="int8",
                              spec=spec, calib_size=calib_size, check=check,
                              options=options_for(fmt, options, to), strict=strict,
                              force=force))
    return written
