"""INT8 targets: the kind of device an INT8 artifact is made for.

A target is a row of data. What each backend does for it (activation and weight types,
7-bit weights, kernels to avoid, layers kept in float, overflow fixes) is that backend's own
recipe table, keyed by these names; this module only says which CPUs a target means, picks
one for `--target auto`, and tells a runtime whether an artifact's recipe holds on the CPU
it is opened on.

    x86-vnni   AVX512-VNNI / AVX-VNNI / AMX: u8 activations x s8 weights, the fast path
    x86-avx2   AVX2 without VNNI: the same, except the layers whose u8 x s8 products would
               saturate VPMADDUBSW's 16-bit sums (found by measurement and emulation)
    arm64      NEON / dot-product / i8mm CPUs
    portable   any CPU: the x86-avx2 safeguards, at a small cost on CPUs that need none
    tensorrt   NVIDIA TensorRT: symmetric s8 Q/DQ (zero points 0)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgecls import hardware
from edgecls.errors import UnsupportedOptionError

_ARM = ("arm64", "arm64-dotprod", "arm64-i8mm")
_X86_SATURATING = tuple(sorted(hardware.SATURATING))


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    isas: tuple[str, ...]            # INT8 ISA classes (hardware.INT8_ISAS) it is made for
    # True when its recipes keep u8 x s8 products out of 16-bit saturation, so that the
    # artifact computes the same numbers on VNNI and non-VNNI x86 CPUs
    saturation_safe: bool
    device: str = "cpu"


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("x86-vnni", "x86 CPUs with AVX512-VNNI, AVX-VNNI or AMX", ("x86-vnni", "x86-amx"),
           saturation_safe=False),
    Target("x86-avx2", "x86 CPUs with AVX2 but no VNNI (u8*s8 saturates)", _X86_SATURATING,
           saturation_safe=True),
    Target("arm64", "64-bit ARM CPUs (NEON, dot-product, i8mm)", _ARM, saturation_safe=False),
    Target("portable", "any CPU (the x86-avx2 safeguards everywhere)",
           ("x86-vnni", "x86-amx") + _X86_SATURATING + _ARM + ("unknown",), saturation_safe=True),
    Target("tensorrt", "NVIDIA TensorRT (symmetric s8 Q/DQ)", (), saturation_safe=True,
           device="gpu"),
)}
#: names accepted for --target besides the rows; "cpu" is what edgecls 0.1 called auto
ALIASES = {"auto": None, "cpu": None}
CHOICES = tuple(ALIASES) + tuple(TARGETS)


def resolve(name: str | None, isa: str | None = None) -> Target:
    """The Target for --target `name`; "auto" (or None) means the CPU running the export
    (or the ISA class `isa`, for the runtime that will run it, e.g. OpenVINO under a cap)."""
    key = (name or "auto").lower()
    if key in ALIASES:
        isa = isa or hardware.cpu().int8_isa
        return next((t for t in TARGETS.values() if isa in t.isas and t.name != "portable"),
                    TARGETS["portable"])
    if key not in TARGETS:
        raise UnsupportedOptionError(f"unknown INT8 target {name!r}; choose one of "
                                     f"{', '.join(CHOICES)} (`edgecls hw` shows this machine)")
    return TARGETS[key]


def is_native(target: Target, isa: str) -> bool:
    """Whether kernels of the ISA class `isa` compute what `target`'s CPUs compute, so that
    accuracy measured here holds there."""
    if target.name == "portable":
        return isa in hardware.SATURATING      # its safeguards are only tested where needed
    return isa in target.isas


def record(target: Target, runtime_isa: str, measured: bool | None = None) -> dict[str, Any]:
    """The facts every INT8 spec carries about its target (spec.quantization). `measured`:
    whether its accuracy was measured with the target's numbers (by default: only where this
    CPU is of the target's kind)."""
    return {"target": target.name, "target_isas": list(target.isas),
            "saturation_safe": target.saturation_safe,
            "made_on": hardware.cpu().summary(), "made_on_isa": runtime_isa,
            "measured_on_target": is_native(target, runtime_isa) if measured is None else measured}


def mismatch(quantization: dict[str, Any] | None, isa: str) -> str | None:
    """Why an INT8 recipe is wrong on a CPU of ISA class `isa` (None when it is right).

    Only one case is known to change the numbers: a recipe that lets u8 x s8 products
    saturate, on a CPU that saturates them. Artifacts from before targets existed recorded
    target "cpu", the u8 x s8 recipe made for VNNI."""
    if not quantization or isa not in hardware.SATURATING:
        return None
    name = quantization.get("target", "cpu")
    safe = quantization.get("saturation_safe")
    if safe is None:                            # written before targets existed
        safe = name == "tensorrt"
    if safe:
        return None
    return (f"its INT8 recipe was made for {name if name != 'cpu' else 'x86-vnni'} CPUs, and "
            f"this CPU ({isa}) adds u8*s8 products in saturating 16-bit integers, so it "
            "computes different numbers than the ones that were checked")


__all__ = ["Target", "TARGETS", "CHOICES", "resolve", "is_native", "record", "mismatch"]
