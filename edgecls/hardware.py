"""What this machine is: the CPU's INT8 instruction set, and the runtimes and devices present.

Torch-free and cheap. `edgecls hw` prints it; INT8 exports use it to choose their recipe
(`--target auto`), parity reports and bench results record it, and opening an INT8 artifact
compares it with the CPU the artifact was made for.

Only one distinction matters to INT8 recipes, the INT8 ISA class:

    x86-amx    AMX int8 tiles (Sapphire Rapids and later); also has VNNI
    x86-vnni   AVX512-VNNI or AVX-VNNI: u8 x s8 dot products accumulate straight into 32 bits
    x86-avx2   AVX2, or AVX-512 without VNNI: u8 x s8 products go through VPMADDUBSW, which
               adds two of them into a *saturating* 16-bit integer (ONNX Runtime and oneDNN
               both document the accuracy loss this causes)
    x86-sse    older x86: SSSE3's PMADDUBSW saturates the same way
    arm64-i8mm, arm64-dotprod, arm64
               (SMMLA / SDOT / widening multiplies accumulate in 32 bits: no saturation)
"""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

#: INT8 ISA classes, best first, with the CPU flags (Linux names) that define them
INT8_ISAS: dict[str, tuple[str, ...]] = {
    "x86-amx": ("amx_int8",),
    "x86-vnni": ("avx512_vnni", "avx_vnni"),
    "x86-avx2": ("avx2",),
    "x86-sse": ("ssse3",),
    "arm64-i8mm": ("i8mm",),
    "arm64-dotprod": ("asimddp",),
    "arm64": ("asimd",),
}
#: classes whose u8 x s8 products pass through a saturating 16-bit intermediate
SATURATING = frozenset({"x86-avx2", "x86-sse"})
#: the flags `edgecls hw` shows (everything else in /proc/cpuinfo is noise here)
INT8_FLAGS = ("sse4_1", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
              "avx512_bf16", "amx_bf16", "amx_int8", "asimd", "asimddp", "i8mm", "sve")
# numpy's CPU-feature names for the same flags (Windows, or a kernel without /proc/cpuinfo)
_NUMPY_NAMES = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
                "AVX512VNNI": "avx512_vnni", "AVX512_CLX": "avx512_vnni", "SSSE3": "ssse3",
                "SSE41": "sse4_1", "ASIMD": "asimd", "ASIMDDP": "asimddp", "SVE": "sve"}
# macOS sysctl names -> Linux flag names
_MAC_ARM = {"hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_I8MM": "i8mm",
            "hw.optional.AdvSIMD": "asimd"}
# oneDNN's ISA cap (OpenVINO honours ONEDNN_MAX_CPU_ISA; some builds also OV_CPU_MAX_ISA):
# a cap without VNNI/AMX makes OpenVINO's int8 kernels the AVX2 ones on any x86 CPU
_ONEDNN_CAP_VARS = ("ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA")
_ONEDNN_NON_VNNI = ("SSE41", "AVX", "AVX2", "AVX512_CORE", "AVX512_MIC")


@dataclass(frozen=True)
class CPU:
    model: str
    arch: str
    cores: int
    flags: frozenset[str]
    source: str                      # where the flags came from

    @property
    def int8_isa(self) -> str:
        return classify(self.flags, self.arch)

    @property
    def saturates(self) -> bool:
        return self.int8_isa in SATURATING

    def summary(self) -> str:
        """One line for reports: 'AMD EPYC, 2 cores, x86-avx2 (no VNNI: u8*s8 saturates)'."""
        note = " (no VNNI: u8*s8 saturates)" if self.saturates else ""
        return f"{self.model}, {self.cores} cores, {self.int8_isa}{note}"


def classify(flags: frozenset[str] | set[str], arch: str = "") -> str:
    """The INT8 ISA class of a set of CPU flags."""
    is_arm = arch.lower() in ("aarch64", "arm64") or "asimd" in flags
    for isa, needed in INT8_ISAS.items():
        if isa.startswith("arm64") != is_arm:
            continue
        if any(f in flags for f in needed):
            return isa
    return "unknown"


@functools.lru_cache(maxsize=1)
def cpu() -> CPU:
    """This machine's CPU (read once per process)."""
    arch = platform.machine().lower()
    model, flags, source = _from_proc_cpuinfo()
    if not flags and platform.system() == "Darwin":
        model, flags, source = _from_sysctl(arch)
    if not flags:
        flags, source = _from_numpy(), "numpy"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return CPU(model or platform.processor() or arch, arch, int(cores or 1),
               frozenset(flags), source)


def runtime_isa(runtime: str) -> str:
    """The INT8 ISA class a runtime's kernels use here: the CPU's, unless an ISA cap for
    that runtime (OpenVINO's ONEDNN_MAX_CPU_ISA) lowers it below VNNI."""
    isa = cpu().int8_isa
    if runtime == "openvino" and isa in ("x86-vnni", "x86-amx"):
        cap = next((os.environ[v] for v in _ONEDNN_CAP_VARS if os.environ.get(v)), "")
        if cap.upper() in _ONEDNN_NON_VNNI:
            return "x86-avx2"
    return isa


def _from_proc_cpuinfo() -> tuple[str, set[str], str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return "", set(), ""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:   # x86 "flags", arm64 "Features"
            flags = set(value.split())
    return model, flags, "/proc/cpuinfo"


def _from_sysctl(arch: str) -> tuple[str, set[str], str]:
    def sysctl(*names: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", *names], capture_output=True, text=True,
                                  timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    model = sysctl("machdep.cpu.brand_string").strip()
    if arch in ("arm64", "aarch64"):
        values = sysctl(*_MAC_ARM).split()
        flags = {flag for flag, v in zip(_MAC_ARM.values(), values) if v.strip() == "1"}
    else:
        flags = {f.lower().replace(".", "_")
                 for f in sysctl("machdep.cpu.features", "machdep.cpu.leaf7_features").split()}
        flags |= {"avx512_vnni"} if "avx512vnni" in flags else set()
    return model, flags, "sysctl"


def _from_numpy() -> set[str]:
    try:
        import numpy as np
        features = np._core._multiarray_umath.__cpu_features__
    except (ImportError, AttributeError):
        return set()
    return {_NUMPY_NAMES[k] for k, on in features.items() if on and k in _NUMPY_NAMES}


# -- runtimes and devices -------------------------------------------------------------------
@dataclass
class Runtime:
    name: str
    package: str
    version: str | None
    devices: list[str] = field(default_factory=list)
    note: str = ""


def _version(*dists: str) -> tuple[str, str | None]:
    for dist in dists:
        try:
            return dist, version(dist)
        except PackageNotFoundError:
            continue
    return dists[0], None


def runtimes(probe_devices: bool = True) -> list[Runtime]:
    """Every runtime edgecls can drive, installed or not; with `probe_devices` the installed
    ones are imported and asked which devices they see (seconds, not milliseconds)."""
    found = []
    for name, dists, probe in _RUNTIMES:
        package, ver = _version(*dists)
        rt = Runtime(name, package, ver)
        if ver and probe_devices:
            try:
                rt.devices, rt.note = probe()
            except Exception as e:  # a broken install must not stop `edgecls hw`
                rt.note = f"cannot be loaded: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        found.append(rt)
    return found


def _onnxruntime() -> tuple[list[str], str]:
    import onnxruntime
    return list(onnxruntime.get_available_providers()), "execution providers"


def _openvino() -> tuple[list[str], str]:
    import openvino as ov
    core = ov.Core()
    return [f"{d} ({core.get_property(d, 'FULL_DEVICE_NAME')})" for d in core.available_devices], ""


def _tflite() -> tuple[list[str], str]:
    return ["cpu (XNNPACK)"], "gpu/npu through a delegate library (--delegate)"


def _tensorrt() -> tuple[list[str], str]:
    import tensorrt  # noqa: F401  (imports only where a GPU driver is present)
    return ["gpu"], ""


def _executorch() -> tuple[list[str], str]:
    # the runtime extension itself (loads libtorch, not executorch.exir): which delegates
    # this wheel registered; edgecls exports XNNPACK programs
    import torch  # noqa: F401  (the extension is linked against libtorch)
    from executorch.extension.pybindings import _portable_lib as lib
    names = lib._get_registered_backend_names()
    if "XnnpackBackend" not in names:
        return [], f"no XnnpackBackend in this build (delegates: {', '.join(names) or 'none'})"
    return ["cpu (XNNPACK)"], f"delegates in this build: {', '.join(sorted(names))}"


def _torch() -> tuple[list[str], str]:
    # not imported: torch takes seconds to load, and whether it sees CUDA is the exporter's
    # business (QAT uses the GPU when torch has one)
    return ["cpu"], "the export side; CUDA not probed"


_RUNTIMES = [
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino",
                     "onnxruntime-directml", "onnxruntime-qnn"), _onnxruntime),
    ("openvino", ("openvino",), _openvino),
    ("tflite", ("ai-edge-litert", "tflite-runtime"), _tflite),
    ("tensorrt", ("tensorrt", "tensorrt-cu12"), _tensorrt),
    ("executorch", ("executorch",), _executorch),
    ("torch", ("torch",), _torch),
]


def describe(probe_devices: bool = False) -> dict[str, Any]:
    """The machine as a JSON-able dict (what reports record and `edgecls hw --json` prints)."""
    c = cpu()
    info: dict[str, Any] = {
        "cpu": c.model, "arch": c.arch, "cores": c.cores, "int8_isa": c.int8_isa,
        "u8s8_saturates": c.saturates,
        "int8_flags": sorted(f for f in c.flags if f in INT8_FLAGS), "flags_from": c.source,
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
    }
    openvino_isa = runtime_isa("openvino")
    if openvino_isa != c.int8_isa:
        info["openvino_int8_isa"] = openvino_isa
    if probe_devices:
        info["runtimes"] = [asdict(r) for r in runtimes()]
    return info


__all__ = ["CPU", "cpu", "classify", "runtime_isa", "runtimes", "describe", "INT8_ISAS",
           "SATURATING"]
