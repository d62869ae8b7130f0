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
from dataclasses import dataclass, field
from typing import Any

from edgecls.errors import ArtifactError

SPEC_KEY = "edgecls.spec"
SPEC_VERSION = 1


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
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"{source}: its edgecls spec is not valid JSON ({e})") from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:  # written by a newer edgecls: keep what we understand, say so in notes
            data.setdefault("notes", {})["unknown_spec_fields"] = sorted(unknown)
        for key in ("input_size", "mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as e:
            raise ArtifactError(f"{source}: its edgecls spec is incomplete ({e})") from None

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
