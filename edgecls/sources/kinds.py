"""The table of model sources and the types resolving one produces (see the package's
docstring): SourceKind rows, SourceRequest (what the user asked for), Resolved (the model and
its spec) and the record of where the FP32 reference comes from. Resolvers import this
module, never the package front that calls them."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecls.backends.base import import_attribute
from edgecls.errors import SourceError, UnsupportedOptionError, first_line
from edgecls.imaging.options import PreprocessingOptions
from edgecls.io import sha256
from edgecls.sources.export_source import ExportSource
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
        return not self.known or bool(import_attribute(self.known)(text))

    @property
    def is_file(self) -> bool:
        return bool(self.suffixes)


_TORCH = "edgecls.sources.torch_models"
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
               "ONNX Runtime", "edgecls.sources.onnx_file:onnx_file", suffixes=(".onnx",),
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
        classes = probe(self.model, self.spec)
        self.spec = fit_classes(self.spec, classes, request)

    def source(self, workdir: Path):
        """The ExportSource the exporters start from."""
        return ExportSource(self.model, self.spec, workdir)


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


#: hex characters of a recorded file's sha256
HASH_CHARS = 16


def record(resolved: Resolved, text: str, request: SourceRequest) -> dict[str, Any]:
    """spec.reference for a source just resolved."""
    kind = resolved.kind
    rec: dict[str, Any] = {"kind": kind.name}
    if resolved.file is not None:
        rec.update(source=str(resolved.file), sha256=sha256(resolved.file, HASH_CHARS))
    elif kind is not MODULE:
        rec["source"] = text
    if kind.takes_weights:
        weights = request.weights
        if weights not in ("pretrained", "none"):
            path = Path(weights).resolve()
            weights = str(path)
            rec["weights_sha256"] = sha256(path, HASH_CHARS)
        rec["weights"] = weights
    if request.kwargs:
        rec["kwargs"] = request.kwargs
    return rec


def probe(model, spec: ModelSpec) -> int:
    """One forward pass at the spec's input shape: the model must take it and give logits
    (N x classes). Returns the number of classes."""
    import torch
    shape = spec.derive(layout="NCHW").input_shape(1)
    try:
        with torch.no_grad():
            out = model(torch.zeros(shape))
    except Exception as e:  # any failure of the model's own forward
        raise SourceError(f"{spec.name} does not run on a {'x'.join(map(str, shape[1:]))} input "
                          f"({type(e).__name__}: {first_line(e, 200)}); check --input-size and "
                          "--channels") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SourceError(f"{spec.name} returns {got}, not logits (N x classes)")
    return int(out.shape[1])


__all__ = ["KINDS", "MODULE", "BY_NAME", "SourceKind", "SourceRequest", "Resolved", "kind_of",
           "parse_kwargs", "fit_classes", "record", "probe", "HASH_CHARS"]
