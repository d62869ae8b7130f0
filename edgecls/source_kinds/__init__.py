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
(edgecls.source_kinds.reference).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecls.errors import SourceError, UnsupportedOptionError
from edgecls.preprocessing import FIELDS, PreprocessingOptions
from edgecls.spec import ModelSpec


@dataclass(frozen=True)
class SourceKind:
    name: str
    example: str
    description: str
    resolver: str                        # "module:function": (text, SourceRequest) -> Resolved
    prefix: str = ""
    suffixes: tuple[str, ...] = ()       # a file of this kind
    pattern: str = ""                    # a regular expression the whole text matches
    input: str = "torch"                 # what the exporters get: a torch module, or "onnx"
    takes_weights: bool = False          # an architecture: --weights pretrained|none|PATH
    # parity may build it again from an artifact's spec alone: loading it runs no code that
    # the spec names (a module:function or a pickle must be named by the user again)
    rebuildable: bool = True
    # what a text of this kind must look like when the kind is recorded rather than guessed
    # from the text (an artifact's spec.reference): a regular expression the whole text
    # matches, besides matches(); and "module:function" (text) -> bool, a table it must be in
    shape: str = r"[^\x00-\x1f]{1,4096}"
    known: str = ""

    def matches(self, text: str) -> bool:
        if self.prefix:
            return text.startswith(self.prefix)
        if self.suffixes:
            return text.lower().endswith(self.suffixes)
        return re.fullmatch(self.pattern, text) is not None

    def accepts(self, text: str) -> bool:
        """Whether `text` really is a source of this kind: what a recorded kind's text is
        checked with before it is resolved as that kind (never as whatever its shape says)."""
        if not (self.matches(text) and re.fullmatch(self.shape, text)):
            return False
        from edgecls.backends.base import _import
        return not self.known or bool(_import(self.known)(text))

    @property
    def is_file(self) -> bool:
        return bool(self.suffixes)


_TORCH = "edgecls.source_kinds.torch_models"
_PLAIN = r"[A-Za-z0-9_][A-Za-z0-9_.]{0,199}"      # a library's model name: no path, no ':'
KINDS: tuple[SourceKind, ...] = (
    SourceKind("timm", "timm:mobilenetv4_conv_small",
               "any timm classifier (preprocessing from its pretrained_cfg)",
               f"{_TORCH}:timm_model", prefix="timm:", takes_weights=True,
               shape=f"timm:{_PLAIN}"),
    SourceKind("torchvision", "torchvision:regnet_y_400mf",
               "any torchvision classifier (preprocessing from its weights' transforms)",
               f"{_TORCH}:torchvision_model", prefix="torchvision:", takes_weights=True,
               shape=f"torchvision:{_PLAIN}"),
    SourceKind("program", "model.pt2", "a torch.export program (torch.export.save)",
               f"{_TORCH}:program", suffixes=(".pt2",)),
    SourceKind("onnx", "their_model.onnx", "an FP32 ONNX file; parity's reference runs it in "
               "ONNX Runtime", "edgecls.source_kinds.onnx_file:onnx_file", suffixes=(".onnx",),
               input="onnx"),
    SourceKind("module-file", "model.pt",
               "TorchScript or a pickled torch module: loading it runs code from the file, so "
               "only with --trust-remote-code", f"{_TORCH}:module_file",
               suffixes=(".pt", ".pth", ".pkl", ".pickle", ".jit", ".ts", ".ptl", ".torchscript"),
               rebuildable=False),
    SourceKind("factory", "mypkg.models:build",
               "a function returning a torch module, called with --kwargs JSON",
               f"{_TORCH}:factory", pattern=r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", takes_weights=True,
               rebuildable=False),
    SourceKind("zoo", "mobilenet_v3_small", "an edgecls zoo name (`edgecls models`)",
               f"{_TORCH}:zoo_model", pattern=r".+", takes_weights=True, shape=_PLAIN,
               known=f"{_TORCH}:in_zoo"),
)
#: a torch module handed to edgecls.export() in Python, with its spec
MODULE = SourceKind("module", "export(module, spec=ModelSpec(...))",
                    "a torch module given in Python", f"{_TORCH}:given_module",
                    takes_weights=False, rebuildable=False)
BY_NAME = {k.name: k for k in KINDS + (MODULE,)}


def kind_of(model: Any) -> SourceKind:
    if not isinstance(model, (str, Path)):
        return MODULE
    text = str(model)
    return next(k for k in KINDS if k.matches(text))


@dataclass(frozen=True)
class SourceRequest:
    """What the user said about the model besides its name."""
    weights: str = "pretrained"
    num_classes: int | None = None
    labels: list[str] | None = None
    kwargs: dict[str, Any] | None = None
    trust_remote_code: bool = False
    preprocessing: PreprocessingOptions = field(default_factory=PreprocessingOptions)
    spec: ModelSpec | None = None        # the spec of a torch module given in Python
    like: ModelSpec | None = None        # parity's rebuild: the artifact's spec to match

    @classmethod
    def of(cls, *, weights: str = "pretrained", num_classes: int | None = None,
           labels: list[str] | None = None, model_kwargs: dict[str, Any] | None = None,
           trust_remote_code: bool = False, preprocessing: dict[str, Any] | None = None,
           spec: ModelSpec | None = None) -> "SourceRequest":
        """The request from export()'s own arguments (the names export, --to best and --qat
        share)."""
        return cls(weights=weights, num_classes=num_classes, labels=labels, kwargs=model_kwargs,
                   trust_remote_code=trust_remote_code, spec=spec,
                   preprocessing=PreprocessingOptions.of(preprocessing))

    def check_for(self, kind: SourceKind, text: str) -> None:
        """Options that do not apply to this kind of source are refused, never ignored."""
        if self.kwargs is not None and kind.name != "factory":
            raise UnsupportedOptionError(f"--kwargs applies to module:function sources, not to "
                                         f"{text}")
        if not kind.takes_weights and self.weights != "pretrained":
            raise UnsupportedOptionError(f"--weights does not apply to {text}: its weights are "
                                         "inside it")


def parse_kwargs(text: str | None) -> dict[str, Any] | None:
    """--kwargs: a JSON object of keyword arguments for a module:function source."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UnsupportedOptionError(f"--kwargs is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise UnsupportedOptionError(f"--kwargs must be a JSON object ({{\"name\": value, ...}}), "
                                     f"not {type(value).__name__}")
    return value


@dataclass
class Resolved:
    """A model source, resolved: the torch module (or, for ONNX, see onnx_file), its spec
    and what it was made from."""
    kind: SourceKind
    spec: ModelSpec
    model: Any = None
    file: Path | None = None             # the source file, for file kinds

    def finish(self, request: SourceRequest) -> None:
        """Check the model against its final spec: one forward pass gives the classes."""
        from edgecls.source_kinds.torch_models import probe
        classes = probe(self.model, self.spec)
        self.spec = fit_classes(self.spec, classes, request)

    def source(self, workdir: Path):
        """The ExportSource the exporters start from."""
        from edgecls.sources import ExportSource
        return ExportSource(self.model, self.spec, workdir)


def resolve(model: Any, request: SourceRequest | None = None,
            kind: SourceKind | None = None) -> Resolved:
    """The model source `model` (a text the table knows, or a torch module with
    request.spec) resolved, its spec final and its reference recorded. With `kind` (a
    recorded kind: parity's rebuild), the text is resolved as that kind, never as another
    its shape suggests, and must really be of it."""
    from edgecls.backends.base import _import   # "module:attribute", as the format rows
    request = request or SourceRequest()
    recorded, kind = kind is not None, kind or kind_of(model)
    text = str(model) if kind is not MODULE else "a torch module"
    if recorded and kind is not MODULE and not kind.accepts(text):
        raise SourceError(f"{text[:200]!r} is not a {kind.name} source ({kind.description})")
    request.check_for(kind, text)
    resolved: Resolved = _import(kind.resolver)(model if kind is MODULE else text, request)
    spec = resolved.spec
    if request.like is not None:     # a rebuilt reference takes the artifact's preprocessing
        spec = spec.derive(name=request.like.name, labels=list(request.like.labels),
                           **{f: getattr(request.like, f) for f in FIELDS})
    resolved.spec = request.preprocessing.apply(spec)
    resolved.finish(request)
    from edgecls.source_kinds.reference import record
    resolved.spec.reference = record(resolved, text, request)
    return resolved


def fit_classes(spec: ModelSpec, classes: int, request: SourceRequest) -> ModelSpec:
    """num_classes and labels from the model's output size, --num-classes and --labels."""
    if request.num_classes is not None and request.num_classes != classes:
        raise SourceError(f"{spec.name} outputs {classes} classes, not --num-classes "
                          f"{request.num_classes}")
    labels = request.labels if request.labels is not None else spec.labels
    if request.labels is not None and len(labels) != classes:
        raise SourceError(f"{len(labels)} labels given for a model with {classes} classes")
    if len(labels) != classes:
        labels = [str(i) for i in range(classes)]
    return spec.derive(num_classes=classes, labels=list(labels))


_WHAT = {"torch": "a torch model", "onnx": "an ONNX file"}


def refuse_format(kind: SourceKind, model: Any, fmt) -> None:
    """A format whose exporter cannot start from what this source gives (TFLite and the
    .pt2 program need a torch module; an ONNX file gives none): one line naming the ways."""
    if kind.input in fmt.starts_from:
        return
    from edgecls.formats import FORMATS
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
