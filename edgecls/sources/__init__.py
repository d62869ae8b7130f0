"""Model sources: what `edgecls export MODEL` (and `edgecls.export(model)`) starts from.

One table of rows, tried in order; the first whose prefix, suffix or pattern matches the
text resolves it:

    timm:mobilenetv4_conv_small     any timm classifier; preprocessing from its pretrained_cfg
    torchvision:regnet_y_400mf      any torchvision classifier; preprocessing from its weights
    model.pt2                       a torch.export program, loaded without running pickled code
    their_model.onnx                an FP32 ONNX file: the parent of every artifact, and the
                                    reference parity runs (in ONNX Runtime)
    model.pt / .pth / .ts ...       TorchScript or a pickled module: loading runs code from the
                                    file, so only with --trust-remote-code
    mypkg.models:build              a function returning a torch module, called with --kwargs
    mobilenet_v3_small              a zoo name (`edgecls models`)

A resolver ("module:function", imported when used: the table itself needs no torch) turns
the text into a Resolved: the torch module or the ONNX graph, and a ModelSpec with the
model's own preprocessing. resolve() then lays the user's preprocessing over it, checks the
model against it (one forward pass, or the ONNX graph's shapes) and records in
spec.reference where the FP32 reference comes from, so that parity can build it again
(edgecls.sources.reference).
"""
from __future__ import annotations

from typing import Any

from edgecls.backends.base import import_attribute
from edgecls.errors import SourceError, UnsupportedOptionError
from edgecls.formats import FORMATS
from edgecls.imaging.options import FIELDS
from edgecls.sources.kinds import (BY_NAME, KINDS, MODULE, Resolved, SourceKind,  # noqa: F401
                                        SourceRequest, fit_classes, kind_of, parse_kwargs,
                                        record)


def resolve(model: Any, request: SourceRequest | None = None,
            kind: SourceKind | None = None) -> Resolved:
    """The model source `model` (a text the table knows, or a torch module with
    request.spec) resolved, its spec final and its reference recorded. With `kind` (a
    recorded kind: parity's rebuild), the text is resolved as that kind, never as another
    its shape suggests, and must really be of it."""
    request = request or SourceRequest()
    recorded, kind = kind is not None, kind or kind_of(model)
    text = str(model) if kind is not MODULE else "a torch module"
    if recorded and kind is not MODULE and not kind.accepts(text):
        raise SourceError(f"{text[:200]!r} is not a {kind.name} source ({kind.description})")
    request.check_for(kind, text)
    resolved: Resolved = import_attribute(kind.resolver)(model if kind is MODULE else text, request)
    spec = resolved.spec
    if request.like is not None:     # a rebuilt reference takes the artifact's preprocessing
        spec = spec.derive(name=request.like.name, labels=list(request.like.labels),
                           **{f: getattr(request.like, f) for f in FIELDS})
    resolved.spec = request.preprocessing.apply(spec)
    resolved.finish(request)
    resolved.spec.reference = record(resolved, text, request)
    return resolved


_WHAT = {"torch": "a torch model", "onnx": "an ONNX file"}


def refuse_format(kind: SourceKind, model: Any, fmt) -> None:
    """A format whose exporter cannot start from what this source gives (TFLite and the
    .pt2 program need a torch module; an ONNX file gives none): one line naming the ways."""
    if kind.input in fmt.starts_from:
        return
    able = [f.name for f in FORMATS.values() if f.exporter and kind.input in f.starts_from]
    needs = " or ".join(_WHAT.get(s, s) for s in fmt.starts_from)
    given = _WHAT.get(kind.input, kind.input)
    hint = (f". For {fmt.name}, start from the torch model (a zoo name, timm:NAME, "
            "torchvision:NAME, a .pt2 program or module:function)"
            if "torch" in fmt.starts_from else "")
    raise UnsupportedOptionError(f"--to {fmt.name} needs {needs}, and {model} is {given}; from "
                                 f"{given} edgecls exports to {', '.join(able) or 'nothing'}"
                                 f"{hint}")


__all__ = ["KINDS", "MODULE", "SourceKind", "SourceRequest", "Resolved", "resolve", "kind_of",
           "parse_kwargs", "fit_classes", "refuse_format"]
