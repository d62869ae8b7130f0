"""The preprocessing a user states for a model: input size, resize, mean/std, interpolation,
channel order and channels.

Declared once as export options (the CLI makes its flags from them), checked before any
model is built, then written into the ModelSpec over the model's own values (the zoo's,
timm's or torchvision's metadata, an embedded spec), which stay the defaults:

    PreprocessingOptions.of({"input_size": "64x48", "mean": 0.5, "std": 0.5}).apply(spec)

Mean and std are in [0, 1] pixel units, or in 0-255 units when any value given for them is
above 1 (`--mean 123.7 116.3 103.5 --std 58.4 57.1 57.4`); one value stands for every
channel. Torch-free.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edgecls.options import ExportOptions, option
from edgecls.errors import UnsupportedOptionError
from edgecls.spec import ModelSpec

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area", "lanczos")
CHANNEL_ORDERS = ("RGB", "BGR")
CHANNELS = (1, 3)
#: the ModelSpec fields these options (and a rebuilt reference) carry
FIELDS = ("input_size", "resize", "interpolation", "mean", "std", "channel_order", "channels")

_UNITS = ("in [0, 1] units, or in 0-255 units when any value of --mean/--std is > 1; one "
          "value for every channel")


@dataclass(frozen=True)
class PreprocessingOptions(ExportOptions):
    input_size: Any = option("the network's input, H or HxW pixels (e.g. 64 or 64x48)")
    resize: Any = option("shorter side before the centre crop, in pixels; `none`: a plain "
                         "resize to the input size")
    mean: Any = option(f"per-channel mean, {_UNITS}", nargs="+")
    std: Any = option(f"per-channel std, {_UNITS}", nargs="+")
    interpolation: str | None = option("resize interpolation: " + " | ".join(INTERPOLATIONS))
    channel_order: str | None = option("channel order of colour input: RGB | BGR")
    # Any, not int: a bad value is this module's one-line error, not argparse's usage text
    channels: Any = option("input channels: 3 (colour) or 1 (grayscale)")

    @classmethod
    def of(cls, values: dict[str, Any] | PreprocessingOptions | None) -> PreprocessingOptions:
        """The options from a dict (Python) or the CLI's namespace values, checked."""
        if isinstance(values, PreprocessingOptions):
            return values
        values = dict(values or {})
        unknown = sorted(set(values) - cls.names())
        if unknown:
            raise UnsupportedOptionError(f"unknown preprocessing option(s) {', '.join(unknown)}; "
                                         f"known: {', '.join(FIELDS)}")
        return cls.parse(values, "fp32", "export")

    def check(self, precision: str) -> None:
        """Every value on its own: one-line errors before any model is built."""
        self.changes()

    def given(self) -> set[str]:
        return {name for name in FIELDS if getattr(self, name) is not None}

    def changes(self) -> dict[str, Any]:
        """The spec fields to set, typed and converted (mean/std to [0, 1] units)."""
        changes: dict[str, Any] = {}
        if self.input_size is not None:
            changes["input_size"] = parse_size(self.input_size)
        if self.resize is not None:
            changes["resize"] = parse_resize(self.resize)
        if self.interpolation is not None:
            changes["interpolation"] = _choice("--interpolation", str(self.interpolation).lower(),
                                               INTERPOLATIONS)
        if self.channel_order is not None:
            changes["channel_order"] = _choice("--channel-order", str(self.channel_order).upper(),
                                               CHANNEL_ORDERS)
        if self.channels is not None:
            changes["channels"] = _choice("--channels", _integer("--channels", self.channels),
                                          CHANNELS)
        given = {k: _numbers(f"--{k}", getattr(self, k)) for k in ("mean", "std")
                 if getattr(self, k) is not None}
        counts = {1, changes.get("channels", 3)}  # 1, or one per channel (3 unless --channels)
        for key, values in given.items():
            if len(values) not in counts:
                allowed = " or ".join(map(str, sorted(counts)))
                raise UnsupportedOptionError(f"--{key} takes {allowed} value(s), not {len(values)}")
        scale = 255.0 if any(v > 1 for values in given.values() for v in values) else 1.0
        mixed = [k for k, values in given.items() if scale > 1 and max(values) <= 1
                 and not set(values) <= {0.0, 1.0}]
        if mixed:
            raise UnsupportedOptionError(
                f"--{mixed[0]} {_show(given[mixed[0]])} is in [0, 1] units but the other of "
                "--mean/--std is in 0-255 units: give both in the same units")
        changes.update({k: tuple(v / scale for v in values) for k, values in given.items()})
        return changes

    def apply(self, spec: ModelSpec) -> ModelSpec:
        """The spec with these values over its own, checked as a whole."""
        changes = self.changes()
        channels = changes.get("channels", spec.channels)
        for key in ("mean", "std"):
            changes[key] = fit_channels(key, changes.get(key, getattr(spec, key)), channels,
                                        given=key in changes)
        return check_spec(spec.derive(**changes))


def check_spec(spec: ModelSpec) -> ModelSpec:
    """A spec's preprocessing must make sense as a whole, wherever it came from."""
    if spec.resize is not None and spec.resize < max(spec.input_size):
        raise UnsupportedOptionError(
            f"--resize {spec.resize} is smaller than the input size "
            f"{spec.input_size[0]}x{spec.input_size[1]}: the centre crop would not fit; use "
            f"--resize {max(spec.input_size)} or more, or --resize none")
    _choice("interpolation", spec.interpolation, INTERPOLATIONS)
    _choice("channel order", spec.channel_order, CHANNEL_ORDERS)
    _choice("channels", spec.channels, CHANNELS)
    for key in ("mean", "std"):
        values = getattr(spec, key)
        if len(values) != spec.channels:
            raise UnsupportedOptionError(f"--{key} has {len(values)} values for a model with "
                                         f"{spec.channels} input channel(s)")
    if not all(0 <= m <= 1 for m in spec.mean):
        raise UnsupportedOptionError(f"--mean {_show(spec.mean)} is outside the pixel range "
                                     "(0-1, or 0-255 units)")
    if not all(0 < s <= 1 for s in spec.std):
        raise UnsupportedOptionError(f"--std {_show(spec.std)} must be above 0 and at most 1 "
                                     "(or 255 in 0-255 units)")
    return spec


def fit_channels(key: str, values: tuple[float, ...], channels: int,
                 given: bool) -> tuple[float, ...]:
    """One value stands for every channel; three equal values fit one channel. A model's
    own three different values never silently become one: that is the user's call."""
    if len(values) == channels:
        return tuple(values)
    if len(values) == 1:
        return tuple(values) * channels
    if channels == 1 and len(set(values)) == 1:
        return tuple(values[:1])
    if given:
        raise UnsupportedOptionError(f"--{key} takes 1 or {channels} value(s) for a model with "
                                     f"{channels} input channel(s), not {len(values)}")
    raise UnsupportedOptionError(f"the model takes {channels} input channel(s) but its {key} "
                                 f"has {len(values)} values ({_show(values)}): give --{key} with "
                                 f"{channels} value(s)")


def parse_size(value: Any) -> tuple[int, int]:
    """64 -> (64, 64); "64x48" or (64, 48) -> (H, W) = (64, 48)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        parts = list(value)
    elif isinstance(value, (tuple, list)) and len(value) == 1:
        return parse_size(value[0])
    elif isinstance(value, int) and not isinstance(value, bool):
        parts = [value, value]
    else:
        match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*,]\s*(\d+)\s*)?", str(value))
        if not match:
            raise UnsupportedOptionError(f"--input-size {value!r}: give H or HxW in pixels, "
                                         "e.g. 64 or 64x48")
        parts = [match[1], match[2] or match[1]]
    h, w = (_integer("--input-size", p) for p in parts)
    if min(h, w) < 1 or max(h, w) > 8192:
        raise UnsupportedOptionError(f"--input-size {h}x{w}: each side must be 1 to 8192 pixels")
    return h, w


def parse_resize(value: Any) -> int | None:
    """A length in pixels, or "none" (a plain resize to the input size)."""
    if isinstance(value, str) and value.strip().lower() == "none":
        return None
    size = _integer("--resize", value)
    if size < 1:
        raise UnsupportedOptionError(f"--resize must be a positive number of pixels or none, "
                                     f"not {value!r}")
    return size


def _integer(flag: str, value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UnsupportedOptionError(f"{flag} takes a whole number, not {value!r}") from None
    if isinstance(value, bool) or not number.is_integer():
        raise UnsupportedOptionError(f"{flag} takes a whole number, not {value!r}")
    return int(number)


def _numbers(flag: str, value: Any) -> tuple[float, ...]:
    items = value if isinstance(value, (tuple, list)) else [value]
    # "0.5,0.5,0.5" is read as three values too
    words = [w for item in items for w in str(item).replace(",", " ").split()] \
        if any(isinstance(i, str) for i in items) else items
    try:
        numbers = tuple(float(w) for w in words)
    except (TypeError, ValueError):
        raise UnsupportedOptionError(f"{flag} takes numbers, not {_show(items)}") from None
    if not numbers or not all(n == n and abs(n) != float("inf") for n in numbers):
        raise UnsupportedOptionError(f"{flag} takes finite numbers, not {_show(items)}")
    return numbers


def _choice(what: str, value: Any, choices: tuple) -> Any:
    if value not in choices:
        raise UnsupportedOptionError(f"{what} {value!r} is not one of "
                                     f"{', '.join(map(str, choices))}")
    return value


def _show(values: Any) -> str:
    return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
