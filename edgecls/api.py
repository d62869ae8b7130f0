"""edgecls.export(), the public entry point: `to` names one format (edgecls.exporting) or
"best" (edgecls.best: every backend installed here raced on the same images, the fastest
within tolerance written). The workflows below never import this module."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecls.best import BEST, export_best
from edgecls.errors import UnsupportedOptionError
from edgecls.exporting import export as export_one


def export(model: Any, to: str = "onnx", out: str | Path | None = None, *, check: bool = True,
           strict: bool = False, **kwargs: Any) -> Path:
    """Export `model` (a zoo/timm/torchvision name, a file, a module:function, an FP32 .onnx
    or a torch module with `spec`) to one format, or to the best of them; every keyword of
    edgecls.exporting.export. With to="best" the candidates are always judged and only a
    passing one is written, so `check=False` and `strict` would change nothing: refused."""
    if to == BEST:
        unused = [flag for flag, given in (("--no-check", not check), ("--strict", strict))
                  if given]
        if unused:
            raise UnsupportedOptionError(
                f"{', '.join(unused)}: --to best always judges its candidates and writes only "
                "one that meets the tolerance; drop the option")
        return export_best(model, out, **kwargs)
    return export_one(model, to, out, check=check, strict=strict, **kwargs)


__all__ = ["export"]
