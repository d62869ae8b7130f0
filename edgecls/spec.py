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
import re
from dataclasses import dataclass, field
from typing import Any

from edgecls.errors import REEXPORT, ArtifactError

SPEC_KEY = "edgecls.spec"
SPEC_VERSION = 1


#: the values of fields that choose a code path (anything else would fail far from here)
CHOICES = {"interpolation": ("bilinear", "bicubic", "nearest"), "layout": ("NCHW", "NHWC"),
           "channel_order": ("RGB", "BGR"), "output": ("logits", "probabilities")}
#: the largest input side (and resize) a spec may ask for (a bigger one would allocate
#: gigabytes per image)
MAX_SIDE = 8192
#: the most classes (and labels) a spec may have
MAX_CLASSES = 1_000_000
#: the largest batch a spec may fix (notes.static_batch)
MAX_BATCH = 4096
#: the largest |mean| and |std| (in 0-1 pixel units), and 1 / the smallest |std|
MAX_NORM = 1e4
#: the longest string anywhere in a spec (a label, a path, a tool version, a note)
MAX_TEXT = 8192
#: the deepest nesting of lists and dicts in a spec (notes, quantization, parent, reference)
MAX_DEPTH = 32
#: the largest spec JSON edgecls reads (ImageNet-21k's labels take 0.7 MB); the container
#: readers read no more than this from a file
MAX_SPEC_BYTES = 16 * 1024 * 1024
#: a spec's name is the stem of the files exported from it (<name>.int8.onnx in the output
#: folder): no path separator, no "..", no leading dot, no space or control character
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def name_problem(name: Any) -> str | None:
    """Why `name` cannot be a spec's name (the stem of the files exported from it), or None."""
    if not isinstance(name, str):
        return f"name is {type(name).__name__}"
    if NAME.fullmatch(name) is None or ".." in name:
        return (f"name {name[:60]!r} is not a plain file name (letters, digits and ._+-, "
                "at most 128, not starting with a dot, no '..' or '/')")
    return None


def safe_name(text: str) -> str:
    """`text` (a file's stem, say) made a valid spec name: every other character becomes
    "_", runs of dots one dot; "model" when nothing is left."""
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._+-]", "_", text))
    name = name.lstrip("._+-")[:128].rstrip(".")
    return name if NAME.fullmatch(name) else "model"


def _structure_problem(value: Any) -> str | None:
    """Nesting deeper than MAX_DEPTH, or a string longer than MAX_TEXT, anywhere in `value`
    (checked without recursion, so a hostile depth cannot exhaust the stack)."""
    stack = [(value, 0, "the spec")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, str):
            if len(item) > MAX_TEXT:
                return f"a string in {where} is {len(item)} characters long (at most {MAX_TEXT})"
        elif isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                return f"{where} is nested deeper than {MAX_DEPTH} levels"
            if isinstance(item, list):
                stack.extend((child, depth + 1, where) for child in item)
                continue
            for key, child in item.items():     # where: the spec's field it is in
                stack.append((key, depth + 1, where))
                stack.append((child, depth + 1, key if depth == 0 else where))
    return None


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _whole(x: Any, low: int, high: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and low <= x <= high


def _is(x: Any, kind: Any) -> bool:
    return x is None if kind is None else isinstance(x, kind) and not (
        kind is int and isinstance(x, bool))


#: types of the keys edgecls reads from the free-form dict fields ((field, key) -> kinds);
#: other keys are kept as they are (their nesting and strings bounded)
_KEYS: dict[tuple[str, ...], tuple[Any, ...]] = {
    ("quantization", "target"): (str,), ("quantization", "saturation_safe"): (bool, None),
    ("quantization", "calibration_ids"): (list,), ("quantization", "search"): (dict,),
    ("quantization", "method"): (str,),
    ("quantization", "search", "chosen"): (str, None),
    ("quantization", "search", "measured_with"): (dict,),
    ("quantization", "search", "candidates"): (list,),
    ("quantization", "search", "reason"): (str,),
    ("quantization", "search", "selection_ids"): (list,),
    ("reference", "kind"): (str,), ("reference", "source"): (str,),
    ("reference", "sha256"): (str, None), ("reference", "weights"): (str,),
    ("reference", "weights_sha256"): (str, None), ("reference", "kwargs"): (dict,),
    ("notes", "static_batch"): (int, None), ("notes", "engine_size"): (int,),
    ("notes", "engine_sha256"): (str,), ("notes", "engine_built_on"): (dict,),
    ("notes", "dla_core"): (int, None),
}
#: bounds of the whole numbers among them
_BOUNDS = {("notes", "static_batch"): (1, MAX_BATCH), ("notes", "engine_size"): (1, 2 ** 48),
           ("notes", "dla_core"): (0, 64)}


def _keys_problem(values: dict[str, Any]) -> str | None:
    for path, kinds in _KEYS.items():
        parent: Any = values
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or path[-1] not in parent:
            continue
        value, where = parent[path[-1]], ".".join(path)
        if not any(_is(value, kind) for kind in kinds):
            return f"{where} is {type(value).__name__}"
        low, high = _BOUNDS.get(path, (None, None))
        if low is not None and value is not None and not _whole(value, low, high):
            return f"{where} must be a whole number within {low}..{high}, not {value!r}"
    quantization = values.get("quantization") or {}
    search = quantization.get("search") if isinstance(quantization.get("search"), dict) else {}
    for where, ids in (("calibration_ids", quantization.get("calibration_ids", [])),
                       ("search.selection_ids", search.get("selection_ids", []))):
        if not all(isinstance(i, str) for i in ids):
            return f"quantization.{where} must be a list of strings"
    tools = values.get("tools", {})
    if not all(isinstance(v, str) for v in tools.values()):
        return "tools must map each tool to its version (strings)"
    return None


def _field_problem(values: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a spec read from JSON, or None. Every field is
    checked for its type and its bounds, so that a hostile spec cannot make edgecls write
    outside its output folder, allocate without bound or recurse without end."""
    kinds = {"name": str, "architecture": str, "interpolation": str, "channel_order": str,
             "layout": str, "input_dtype": str, "output": str, "precision": str, "format": str,
             "weights": str, "normalization_in_graph": bool, "trained": bool, "tools": dict,
             "notes": dict, "exported_from": (str, type(None)),
             "quantization": (dict, type(None)), "parent": (dict, type(None)),
             "reference": (dict, type(None))}
    for key, kind in kinds.items():
        if key in values and not isinstance(values[key], kind):
            return f"{key} is {type(values[key]).__name__}"
    if "name" in values:
        problem = name_problem(values["name"])
        if problem:
            return problem
    bounds = {"num_classes": MAX_CLASSES, "resize": MAX_SIDE, "spec_version": 10 ** 6}
    for key, high in bounds.items():
        if key == "resize" and values.get(key, 0) is None:   # a plain resize, no crop
            continue
        if key in values and not _whole(values[key], 1, high):
            return f"{key} must be a whole number within 1..{high}, not {values[key]!r}"
    if "channels" in values and not (_whole(values["channels"], 1, 3)
                                     and values["channels"] in (1, 3)):
        return f"channels must be 1 or 3, not {values['channels']!r}"
    if "labels" in values and not (isinstance(values["labels"], list)
                                   and all(isinstance(x, str) for x in values["labels"])):
        return "labels must be a list of strings"
    if len(values.get("labels", ())) > MAX_CLASSES:
        return f"there are {len(values['labels'])} labels (at most {MAX_CLASSES})"
    size = values.get("input_size", [1, 1])
    if not (isinstance(size, list) and len(size) == 2
            and all(_whole(v, 1, MAX_SIDE) for v in size)):
        return f"input_size must be [height, width] within 1..{MAX_SIDE}"
    channels = values.get("channels", 3)
    for key in ("mean", "std"):     # one per channel
        if key in values and not (isinstance(values[key], list) and len(values[key]) == channels
                                  and all(_number(v) for v in values[key])):
            return f"{key} must be {channels} number(s), one per channel"
    if "std" in values and not all(values["std"]):
        return "std must not be 0"
    if any(abs(v) > MAX_NORM for v in values.get("mean", []) + values.get("std", [])) or any(
            abs(v) < 1 / MAX_NORM for v in values.get("std", [])):
        return (f"mean and std must be at most {MAX_NORM:g} and |std| at least "
                f"{1 / MAX_NORM:g} (in 0-1 pixel units)")
    for key, allowed in CHOICES.items():
        if key in values and values[key] not in allowed:
            return f"{key} must be one of {', '.join(allowed)}, not {values[key]!r}"
    return _keys_problem(values)


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
    # converts them: edgecls.imaging.options)
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
    # weights (+ sha256); see edgecls.sources.reference
    reference: dict[str, Any] | None = None
    tools: dict[str, str] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    spec_version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        # the name becomes file names (exports, the QAT checkpoint): whoever builds a spec,
        # it cannot name a path; names made from a file's stem go through safe_name()
        problem = name_problem(self.name)
        if problem:
            raise ValueError(f"ModelSpec: {problem}")

    # -- serialisation -------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "artifact") -> "ModelSpec":
        """The spec an artifact carries. Its JSON is untrusted: every field is checked for
        its type and bounds (and the few that pick code paths, for their choices) so that a
        damaged or hostile spec is an ArtifactError here, never a crash later."""
        if isinstance(text, (str, bytes)) and len(text) > MAX_SPEC_BYTES:
            raise ArtifactError(f"{source}: its edgecls spec is {len(text)} bytes long (at most "
                                f"{MAX_SPEC_BYTES}); {REEXPORT}")
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
        problem = _structure_problem(data) or _field_problem(values)
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

    def measured_with(self) -> dict[str, Any]:
        """The session options an INT8 recipe was chosen with (e.g. exact kernels for a
        VNNI target made on an AVX2 CPU): what it is judged with too. {} for the others."""
        return dict(((self.quantization or {}).get("search") or {}).get("measured_with", {}))

    def summary(self) -> dict[str, Any]:
        """What `edgecls info` shows first (labels abbreviated)."""
        d = dataclasses.asdict(self)
        d["labels"] = f"{len(self.labels)} labels: {', '.join(self.labels[:5])}" + (
            ", ..." if len(self.labels) > 5 else "")
        return d
