"""`edgecls export --qat`: train once per family of the formats asked for, export each."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgecls.qat_training.families import resolve
from edgecls.qat_training.training import default_checkpoint, qat


def export_with_qat(model: Any, to: str | Sequence[str], out: str | Path | None = None, *,
                    spec=None, weights: str = "pretrained", num_classes: int | None = None,
                    labels: list[str] | None = None, calib: Any = None, train: Any = None,
                    target: str | None = None, epochs: int = 3, lr: float = 1e-5,
                    seed: int = 0, resume: bool = False, calib_size: int = 300,
                    check: bool = True, options: dict[str, Any] | None = None,
                    strict: bool = False) -> list[Path]:
    """QAT INT8 artifacts of a zoo model (or a torch module with `spec`) for every format in
    `to`; formats of one family share one student. `out`: the artifact's path for one
    format, a folder for several (default out/). Checkpoints go next to the artifacts."""
    from edgecls import zoo
    from edgecls.exporting import export, options_for, output_for

    to = to.split(",") if isinstance(to, str) else list(to)
    options = dict(options or {})
    target = options.pop("target", None) or target
    destination = output_for(out, to)
    if isinstance(model, str):
        model, spec = zoo.build(model, weights, num_classes, labels)
    elif spec is None:
        raise TypeError("export_with_qat(torch_module, ...) needs spec=ModelSpec(...)")
    folder = destination if destination is None or len(to) > 1 else destination.parent
    students: dict[str, Any] = {}
    written = []
    for fmt in to:
        family, _ = resolve(fmt, target)
        if family.name not in students:
            students[family.name] = qat(
                model, spec, calib=calib, train=train, data=options.get("data"), to=fmt,
                target=target, epochs=epochs, lr=lr, seed=seed, resume=resume, size=calib_size,
                checkpoint=default_checkpoint(spec, family, folder or Path("out")))
        written.append(export(students[family.name], to=fmt, out=destination, precision="int8",
                              spec=spec, calib_size=calib_size, check=check,
                              options=options_for(fmt, options, to), strict=strict))
    return written
