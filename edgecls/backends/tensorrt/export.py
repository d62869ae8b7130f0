"""ONNX -> TensorRT engine (FP32, FP16, INT8 by explicit Q/DQ), written as an edgecls .engine.

TensorRT's ONNX parser reads an ONNX file that edgecls made (there is no better entry point
from PyTorch that needs no extra compiler). GPU engines are built STRONGLY TYPED: the ONNX
tensor types decide the precision, which is TensorRT's way since 10.12 deprecated the
precision flags (11 removed them):

  fp32  the FP32 ONNX, with TF32 switched off (it is on by default since Ampere, and would
        round FP32 matmuls and convolutions to a 10-bit mantissa).
  fp16  the FP16 ONNX that edgecls makes for ONNX Runtime (float32 I/O, Cast at the edges).
  int8  the QDQ ONNX of quantize.py; the layers kept in float run in FP32.

DLA engines (--dla-core, device "npu") are FP16 only and weakly typed with the FP16 flag,
TensorRT 10's way for DLA. Layers DLA cannot run go to the GPU (GPU_FALLBACK, else most
classifiers do not build): they are found before the build, logged and recorded in the
spec, never silent.

The batch dimension stays dynamic: one optimization profile, batch 1..MAX_BATCH (opt
OPT_BATCH, Classifier's default batch); DLA needs a fixed batch (OPT_BATCH). The spec
records spec.tools["tensorrt"] and notes["engine_built_on"] (GPU name + compute capability):
engines are not portable, and the runtime says so from these before TensorRT deserializes.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgecls.backends.base import ExportPaths
from edgecls.backends.onnx.export import export_fp16
from edgecls.backends.tensorrt import TensorRTOptions
from edgecls.backends.tensorrt.container import write_engine
from edgecls.backends.tensorrt.cuda import gpu_facts
from edgecls.backends.tensorrt.library import ERRORS, import_tensorrt, tensorrt_logger
from edgecls.backends.tensorrt.quantize import qdq_onnx
from edgecls.errors import BackendBuildError, DeviceUnavailableError, first_line
from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")

OPT_BATCH = 16      # Classifier's default batch_size
MAX_BATCH = 32
MIN_BATCH = 1


@dataclass(frozen=True)
class BuildPlan:
    """How an engine is built: which ONNX is parsed, the typing, the builder flags. Plain
    data, so the choices are tested where TensorRT is absent."""
    onnx: str                          # "fp32" | "fp16" | "int8-qdq"
    strongly_typed: bool
    set_flags: tuple[str, ...] = ()    # trt.BuilderFlag names
    clear_flags: tuple[str, ...] = ()


def build_plan(precision: str, dla_core: int | None) -> BuildPlan:
    if dla_core is not None:       # FP16 only (TensorRTOptions.check refuses the others)
        return BuildPlan("fp32", strongly_typed=False, set_flags=("FP16", "GPU_FALLBACK"))
    if precision == "fp32":
        return BuildPlan("fp32", strongly_typed=True, clear_flags=("TF32",))
    return BuildPlan({"fp16": "fp16", "int8": "int8-qdq"}[precision], strongly_typed=True)


def parser_errors(parser) -> str:
    """All the parser's errors as one line."""
    parts = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = " ".join(v for v in (err.node_name(), err.node_operator()) if v)
        if not where and err.node() >= 0:
            where = f"node {err.node()}"
        parts.append(f"{where}: {first_line(err.desc())}" if where else first_line(err.desc()))
    return "; ".join(parts)[:600] or "no parser message"


def build_engine(onnx_path: Path, spec: ModelSpec, plan: BuildPlan, *,
                 workspace_gb: float | None = None,
                 dla_core: int | None = None) -> tuple[bytes, dict[str, Any]]:
    """Parse + build; returns the serialized engine and facts for the spec's notes."""
    trt = import_tensorrt()
    logger = tensorrt_logger(trt)
    with ERRORS.capture() as errors:
        builder = trt.Builder(logger)
        strong = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(strong if plan.strongly_typed else 0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            raise BackendBuildError(f"{spec.name}: TensorRT {trt.__version__} cannot parse the "
                                    f"ONNX model: {parser_errors(parser)}")
        if network.num_inputs != 1 or network.num_outputs != 1:
            raise BackendBuildError(f"{spec.name}: expected one input and one output, the "
                                    f"network has {network.num_inputs} and {network.num_outputs}")

        config = builder.create_builder_config()
        if workspace_gb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                         int(workspace_gb * (1 << 30)))
        for name in plan.set_flags:
            config.set_flag(getattr(trt.BuilderFlag, name))
        for name in plan.clear_flags:
            config.clear_flag(getattr(trt.BuilderFlag, name))
        facts: dict[str, Any] = {"typing": "strong" if plan.strongly_typed else "weak",
                                 "flags": list(plan.set_flags),
                                 "flags_cleared": list(plan.clear_flags)}
        batch = (MIN_BATCH, OPT_BATCH, MAX_BATCH)
        if dla_core is not None:
            _use_dla(builder, config, trt, dla_core)
            facts["dla_gpu_fallback_layers"] = _gpu_fallback_layers(network, config, spec)
            batch = (OPT_BATCH, OPT_BATCH, OPT_BATCH)   # DLA needs min = opt = max
        facts["batch_profile"] = _batch_profile(builder, network, config, spec, batch)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendBuildError(f"{spec.name}: TensorRT {trt.__version__} could not build "
                                    f"the engine ({errors()})")
        engine = bytes(memoryview(serialized))
        if not engine:
            raise BackendBuildError(f"{spec.name}: TensorRT returned an empty engine ({errors()})")
    return engine, facts


def _use_dla(builder, config, trt, core: int) -> None:
    cores = int(builder.num_DLA_cores)
    if cores == 0:
        raise DeviceUnavailableError("this GPU has no DLA cores (DLA is on Jetson / DRIVE); "
                                     "drop dla_core to build for the GPU")
    if core >= cores:
        raise DeviceUnavailableError(f"DLA core {core} does not exist; this device has "
                                     f"{cores} (0..{cores - 1})")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core


def _gpu_fallback_layers(network, config, spec: ModelSpec) -> list[str]:
    """The layers DLA cannot run, which GPU_FALLBACK will put on the GPU."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    names = [layer.name for layer in layers if not config.can_run_on_DLA(layer)]
    if names:
        log.warning("%s: %d of %d layers cannot run on DLA and will run on the GPU: %s%s",
                    spec.name, len(names), len(layers), ", ".join(names[:8]),
                    ", ..." if len(names) > 8 else "")
    return names


def _batch_profile(builder, network, config, spec: ModelSpec,
                   batch: tuple[int, int, int]) -> list[int]:
    tensor = network.get_input(0)
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape[1:]):
        raise BackendBuildError(f"{spec.name}: only the batch dimension may be dynamic; the "
                                f"ONNX input is {shape}")
    if shape[0] >= 0:
        return [shape[0]] * 3
    profile = builder.create_optimization_profile()
    rest = shape[1:]
    profile.set_shape(tensor.name, (batch[0],) + rest, (batch[1],) + rest, (batch[2],) + rest)
    config.add_optimization_profile(profile)
    return list(batch)


def _onnx_to_parse(plan: BuildPlan, source, spec: ModelSpec, calibration, work: Path) -> Path:
    """The ONNX a PTQ engine is built from: the FP32 file, its FP16 form or its QDQ form."""
    fp32 = source.onnx()
    if plan.onnx == "fp32":
        return fp32
    if plan.onnx == "fp16":
        out = work / f"{spec.name}.fp16.onnx"
        export_fp16(fp32, spec.derive(tools=dict(spec.tools), notes=dict(spec.notes)), out)
        return out
    return qdq_onnx(fp32, spec, calibration, work)


def _build(source, spec: ModelSpec, out: Path, precision: str, options: TensorRTOptions,
           onnx_to_parse: Callable[[BuildPlan, Path], Path]) -> None:
    """Builds and writes the engine of the ONNX that `onnx_to_parse(plan, work)` gives."""
    trt = import_tensorrt()
    built_on = gpu_facts()            # fails early, and clearly, without a GPU
    plan = build_plan(precision, options.dla_core)
    with tempfile.TemporaryDirectory(prefix="edgecls-trt-") as work:
        onnx_path = onnx_to_parse(plan, Path(work))
        engine, facts = build_engine(onnx_path, spec, plan, workspace_gb=options.workspace_gb,
                                     dla_core=options.dla_core)
    spec.exported_from = "onnx"
    spec.layout, spec.input_dtype = "NCHW", "float32"
    spec.tools["tensorrt"] = trt.__version__
    if source.onnx_opset:
        spec.tools.setdefault("opset", str(source.onnx_opset))
    spec.notes["engine_built_on"] = {**built_on, "tensorrt": trt.__version__}
    spec.notes["tensorrt_build"] = facts
    if options.dla_core is not None:
        spec.notes["dla_core"] = options.dla_core
    if options.workspace_gb:
        facts["workspace_gb"] = options.workspace_gb
    write_engine(out, spec, engine)
    log.info("built a TensorRT %s engine on %s (sm %s), %.1f MB", precision, built_on["gpu"],
             built_on["compute_capability"], len(engine) / 1e6)


# -- the export paths (base.ExportPaths), the format table's exporter for "tensorrt": INT8 has
# no recipe search here (the engine is built from the QDQ ONNX and written)
def _ptq(precision: str):
    def path(source, spec: ModelSpec, out: Path, *, calibration,
             options: TensorRTOptions) -> None:
        _build(source, spec, out, precision, options,
               lambda plan, work: _onnx_to_parse(plan, source, spec, calibration, work))
    path.__name__ = path.__qualname__ = precision
    return path


fp32, fp16, int8 = _ptq("fp32"), _ptq("fp16"), _ptq("int8")


def qat(source, spec: ModelSpec, out: Path, *, calibration, options: TensorRTOptions) -> None:
    """The student's symmetric s8 QDQ ONNX."""
    def student_onnx(plan: BuildPlan, work: Path) -> Path:
        source.student.record(spec, "tensorrt")
        return source.qat_onnx()
    _build(source, spec, out, "int8", options, student_onnx)


export = ExportPaths(fp32=fp32, fp16=fp16, int8=int8, qat=qat)
