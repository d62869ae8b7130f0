"""Model names -> builders (torchvision, timm; ShuffleNet v1 written here) and weights.

The table (entries.py) is plain data so `edgecls models` needs no torch. Preprocessing defaults
come from the builder's own metadata at build time (torchvision's Weights.transforms(),
timm's pretrained_cfg), so they cannot drift from upstream.
"""
from __future__ import annotations

from pathlib import Path

from edgecls.errors import DataError, UnknownModelError
from edgecls.zoo.entries import ALIASES, MODELS, PACKAGED_WEIGHTS, ZooEntry  # noqa: F401
from edgecls.zoo.offline import require_timm_weights


def read_labels(path: Path) -> list[str]:
    """A labels file: one label per line, blank lines ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"--labels {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def list_models() -> list[ZooEntry]:
    return list(MODELS.values())


def get_entry(name: str) -> ZooEntry:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in MODELS:
        raise UnknownModelError(name, list(MODELS) + list(ALIASES))
    return MODELS[key]


def build(name: str, weights: str = "pretrained", num_classes: int | None = None,
          labels: list[str] | None = None):
    """(torch model in eval mode, ModelSpec) for a zoo name. Imports torch."""
    entry = get_entry(name)
    if weights == "pretrained" and entry.source == "timm" and entry.name not in PACKAGED_WEIGHTS:
        require_timm_weights(entry.name, entry.builder)   # before torch: offline fails fast
    # torch: the zoo's table is light, building is not
    from edgecls.zoo.builders import build_model
    return build_model(entry, weights, num_classes, labels)
