"""ModelSpec: the preprocessing + labels + provenance contract that travels inside every artifact.

Modelled on timm's PretrainedCfg and torchvision's Weights.meta. Serialised as one JSON
string under the key SPEC_KEY in whatever metadata slot a format has (ONNX metadata_props,
OpenVINO rt_info, TFLite metadata, a sidecar for TensorRT), so `Classifier(path)` needs
nothing else.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from edgecls.errors import REEXPORT, ArtifactError

SPEC_KEY = "edgecls.spec"
SPEC_VERSION = 1


#: the values of fields that choose a code path (anything else would fail far from here)
CHOICES = {"interpolation": ("bilinear", "bicubic", "nearest"), "layout": ("NCHW", "NHWC"),
           "channel_order": ("RGB", "BGR"), "output": ("logits", "probabilities")}
#: the largest input side a spec may ask for (a bigger one would allocate gigabytes per image)
MAX_SIDE = 8192


def _field_problem(values: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a spec read from JSON, or None."""
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    def numbers(x: Any, n: int) -> bool:
        return isinstance(x, list) and len(x) == n and all(number(v) for v in x)

    kinds = {"name": str, "architecture": str, "interpolation": str, "channel_order": str,
             "layout": str, "input_dtype": str, "output": str, "precision": str, "format": str,
             "weights": str, "normalization_in_graph": bool, "trained": bool, "tools": dict,
             "notes": dict, "exported_from": (str, type(None)),
             "quantization": (dict, type(None)), "parent": (dict, type(None)),
             "reference": (dict, type(None))}
    for key, kind in kinds.items():
        if key in values and not isinstance(values[key], kind):
            return f"{key} is {type(values[key]).__name__}"
    for key in ("num_classes", "resize", "spec_version"):
        if key == "resize" and values.get(key, 0) is None:   # a plain resize, no crop
            continue
        if key in values and (not isinstance(values[key], int) or isinstance(values[key], bool)
                              or not 1 <= values[key] <= 10 ** 7):
            return f"{key} must be a whole number from 1, not {values[key]!r}"
    if "channels" in values and values["channels"] not in (1, 3):
        return f"channels must be 1 or 3, not {values['channels']!r}"
    if "labels" in values and not (isinstance(values["labels"], list)
                                   and all(isinstance(x, str) for x in values["labels"])):
        return "labels must be a list of strings"
    if "input_size" in values and not (numbers(values["input_size"], 2) and all(
            isinstance(v, int) and 1 <= v <= MAX_SIDE for v in values["input_size"])):
        return f"input_size must be [height, width] within 1..{MAX_SIDE}"
    channels = values.get("channels", 3)
    for key in ("mean", "std"):
        if key in values and not numbers(values[key], channels):
            return f"{key} must be {channels} number(s), one per channel"
    if "std" in values and not all(values["std"]):
        return "std must not be 0"
    for key, allowed in CHOICES.items():
        if key in values and values[key] not in allowed:
            return f"{key} must be one of {', '.join(allowed)}, not {values[key]!r}"
    return None


@dataclass
class ModelSpec:
    name: str
    architecture: str
    num_classes: int
    labels: list[str]
    input_size: tuple[int, int] = (224, 224)       # H, W fed to the network
    # shorter side before the centre crop; None: a plain resize to input_size (no crop)
    resize: int | None = 256
    interpolation: str = "bilinear"                # bilinear | bicubic | nearest | area | lanczos
    # one value per channel, in [0, 1] pixel units (the CLI also takes 0-255 units and
    # converts them: edgecls.preprocessing)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"                     # of colour input: RGB | BGR
    channels: int = 3                              # 3 (colour) | 1 (grayscale, ITU-R 601 luma)
    layout: str = "NCHW"                           # of the artifact's input tensor
    input_dtype: str = "float32"                   # of the artifact's input tensor
    # Set when the artifact normalises itself (e.g. OpenVINO PrePostProcessor): the
    # caller then feeds resized, cropped uint8 pixels in `layout` and skips mean/std.
    normalization_in_graph: bool = False
    output: str = "logits"                         # logits | probabilities
    precision: str = "fp32"                        # fp32 | fp16 | int8
    format: str = "torch"
    weights: str = "pretrained"                    # pretrained:<source> | file:<path> | none
    trained: bool = True
    exported_from: str | None = None               # torch | onnx
    quantization: dict[str, Any] | None = None     # method, calibration size + hash, ...
    parent: dict[str, Any] | None = None           # path, sha256, precision, accuracy
    # where the FP32 reference comes from, for parity to rebuild it: the model source
    # (zoo name, timm:/torchvision: name, file + sha256, module:function + kwargs) and its
    # weights (+ sha256); see edgecls.source_kinds.reference
    reference: dict[str, Any] | None = None
    tools: dict[str, str] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    spec_version: int = SPEC_VERSION

    # -- serialisation -------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "artifact") -> "ModelSpec":
        """The spec an artifact carries. Its JSON is untrusted: every field is checked for
        its type (and the few that pick code paths, for their choices) so that a damaged or
        hostile spec is an ArtifactError here, never a crash later."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError) as e:
            raise ArtifactError(f"{source}: its edgecls spec is not valid JSON "
                                f"({str(e)[:120]}); {REEXPORT}") from None
        if not isinstance(data, dict):
            raise ArtifactError(f"{source}: its edgecls spec is not a JSON object "
                                f"(found {type(data).__name__}); {REEXPORT}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        missing = [n for n, f in fields.items() if n not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ArtifactError(f"{source}: its edgecls spec is incomplete (no "
                                f"{', '.join(missing)}); {REEXPORT}")
        values = {k: v for k, v in data.items() if k in fields}
        problem = _field_problem(values)
        if problem:
            raise ArtifactError(f"{source}: its edgecls spec is invalid ({problem}); {REEXPORT}")
        unknown = set(data) - set(fields)
        if unknown:  # written by a newer edgecls: keep what we understand, say so in notes
            values["notes"] = {**values.get("notes", {}), "unknown_spec_fields": sorted(unknown)}
        for key in ("input_size", "mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def derive(self, **changes: Any) -> "ModelSpec":
        """A deep copy with some fields changed (used for every derived artifact), so an
        exporter filling in its copy's notes or tools never touches the original."""
        return dataclasses.replace(copy.deepcopy(self), **changes)

    # -- convenience ---------------------------------------------------------------------
    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        h, w = self.input_size
        c = self.channels
        return (batch, c, h, w) if self.layout == "NCHW" else (batch, h, w, c)

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)

    def summary(self) -> dict[str, Any]:
        """What `edgecls info` shows first (labels abbreviated)."""
        d = dataclasses.asdict(self)
        d["labels"] = f"{len(self.labels)} labels: {', '.join(self.labels[:5])}" + (
            ", ..." if len(self.labels) > 5 else "")
        return d
