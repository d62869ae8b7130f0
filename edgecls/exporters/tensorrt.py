"""ONNX -> TensorRT engine (FP32, FP16, INT8 by explicit Q/DQ), written as an edgecls .engine.

Route: the FP32 ONNX artifact (source.onnx()) is parsed by TensorRT's ONNX parser; TensorRT
has no better entry point from PyTorch that needs no extra compiler. Precisions:

  fp32  the FP32 ONNX as it is.
  fp16  TensorRT 10: the FP32 ONNX with BuilderFlag.FP16 (TensorRT keeps FP32 where FP16 is
        slower or unsupported; I/O stays float32). TensorRT 11 has no precision flags
        (strong typing only): the FP16 ONNX that edgecls makes for ONNX Runtime is built
        instead (float32 I/O, Cast nodes at the edges).
  int8  explicit quantization: the FP32 ONNX quantized by ONNX Runtime with the "tensorrt"
        recipe (symmetric s8 activations and weights, QDQ), calibrated on the shared
        calibration set, then built with BuilderFlag.INT8 + FP16 (TensorRT 10) so the layers
        kept in float run in FP16. No implicit calibrator (deprecated since TensorRT 10.1).
        TensorRT's Q/DQ importer takes int8 Q/DQ only: an int32 bias DequantizeLinear (what
        ORT writes unless QuantizeBias=False) is folded back into a float bias first.

The batch dimension stays dynamic: one optimization profile, batch 1..MAX_BATCH (opt
OPT_BATCH, Classifier's default batch). Options: workspace_gb (the builder's workspace pool),
dla_core (build for that DLA core, device "npu"; DLA runs FP16/INT8 only, with a fixed batch,
and layers it cannot run fall back to the GPU - recorded in the spec).

The spec records spec.tools["tensorrt"] and notes["engine_built_on"] (GPU name + compute
capability): engines are not portable, and the runtime says so from these before TensorRT
is asked to deserialize.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from edgecls.errors import BackendBuildError, UnsupportedOptionError
from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")

OPT_BATCH = 16      # Classifier's default batch_size
MAX_BATCH = 32
MIN_BATCH = 1


# -- options -------------------------------------------------------------------------------------
def parse_options(options: dict[str, Any] | None, precision: str) -> dict[str, Any]:
    options = dict(options or {})
    workspace = options.pop("workspace_gb", None)
    dla = options.pop("dla_core", None)
    if options:
        raise UnsupportedOptionError(f"--to tensorrt does not take {', '.join(sorted(options))}")
    if workspace is not None:
        workspace = _number(workspace, float, "workspace_gb", "a number")
        if workspace <= 0:
            raise UnsupportedOptionError(f"workspace_gb must be positive, not {workspace}")
    if dla is not None:
        dla = _number(dla, int, "dla_core", "a core number")
        if dla < 0:
            raise UnsupportedOptionError(f"dla_core must be 0 or more, not {dla}")
        if precision == "fp32":
            raise UnsupportedOptionError("DLA runs FP16 and INT8 only: add --fp16 or --int8 "
                                         "with --dla-core")
    if precision not in ("fp32", "fp16", "int8"):
        raise UnsupportedOptionError(f"tensorrt artifacts cannot be {precision}")
    return {"workspace_gb": workspace, "dla_core": dla}


def _number(value: Any, kind: type, name: str, what: str):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UnsupportedOptionError(f"{name} must be {what}, not {value!r}") from None


# -- the ONNX that TensorRT parses ----------------------------------------------------------------
def prepare_onnx(source, spec: ModelSpec, precision: str, calibration, work: Path,
                 strongly_typed: bool = False) -> Path:
    """The ONNX file to parse for `precision`. For INT8 it quantizes (updating
    spec.quantization / parent / tools). Needs no TensorRT: tests check it anywhere."""
    fp32 = source.onnx()
    if precision == "fp32":
        return fp32
    if precision == "fp16":
        if not strongly_typed:
            return fp32          # BuilderFlag.FP16 does the conversion, TensorRT's way
        from edgecls.exporters.onnx import export_fp16
        out = work / f"{spec.name}.fp16.onnx"
        export_fp16(fp32, spec.derive(tools=dict(spec.tools), notes=dict(spec.notes)), out)
        return out
    if calibration is None:
        raise UnsupportedOptionError("--int8 needs calibration images: --calib DIR")
    from edgecls.quantization.onnx import quantize_onnx
    out = work / f"{spec.name}.int8.qdq.onnx"
    q_spec = spec.derive(tools=dict(spec.tools), notes=dict(spec.notes), format="onnx")
    quantize_onnx(fp32, q_spec, out, calibration, target="tensorrt")
    folded = fold_int32_bias(out)
    spec.quantization = {**(q_spec.quantization or {}), "applied_by": "tensorrt (explicit Q/DQ)"}
    if folded:
        spec.quantization["bias"] = f"float (int32 bias DequantizeLinear folded: {folded})"
    spec.parent = q_spec.parent
    spec.tools.update(q_spec.tools)
    return out


def fold_int32_bias(path: Path) -> int:
    """Replace DequantizeLinear nodes whose input is an int32 initializer (quantized biases)
    with the float initializer they compute. TensorRT's parser rejects them ("only
    activation types allowed as input"); the float bias is what they dequantize to anyway.
    Returns how many were folded; rewrites the file only when there were some."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    folded, keep = 0, []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits \
                and inits[node.input[0]].data_type == onnx.TensorProto.INT32:
            q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            zero = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
                    if len(node.input) > 2 and node.input[2] else 0.0)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if np.ndim(scale) == 1 and q.ndim > 1:   # per-channel along `axis`
                shape = [1] * q.ndim
                shape[axis % q.ndim] = -1
                scale = scale.reshape(shape)
                zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
            value = ((q - zero) * scale).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            folded += 1
            continue
        keep.append(node)
    if not folded:
        return 0
    del graph.node[:]
    graph.node.extend(keep)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    alive = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(alive)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return folded


# -- building -----------------------------------------------------------------------------------
def strongly_typed_only(trt) -> bool:
    """TensorRT 11 removed the precision flags (BuilderFlag.FP16 / INT8)."""
    return not hasattr(trt.BuilderFlag, "FP16")


def parser_errors(parser) -> str:
    """All the parser's errors as one line."""
    parts = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = ""
        for attr in ("node_name", "node_operator"):
            fn = getattr(err, attr, None)
            value = fn() if callable(fn) else None
            if value:
                where += f"{value} "
        if not where and callable(getattr(err, "node", None)) and err.node() >= 0:
            where = f"node {err.node()} "
        parts.append(f"{where.strip()}: {' '.join(str(err.desc()).split())}" if where
                     else " ".join(str(err.desc()).split()))
    return "; ".join(parts)[:600] or "no parser message"


def build_engine(onnx_path: Path, spec: ModelSpec, precision: str, *,
                 workspace_gb: float | None = None, dla_core: int | None = None) -> tuple[bytes, dict]:
    """Parse + build; returns the serialized engine and facts for the spec's notes."""
    from edgecls.errors import DeviceUnavailableError
    from edgecls.runtimes.tensorrt import import_tensorrt, make_logger, one_line

    trt = import_tensorrt()
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    strong = strongly_typed_only(trt)
    # TensorRT 10: explicit batch is the only mode (its flag is deprecated and ignored), and
    # networks are weakly typed unless asked; TensorRT 11 is strongly typed whatever the flags.
    strong_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 1 << int(strong_flag) if strong and strong_flag is not None else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise BackendBuildError(f"{spec.name}: TensorRT {trt.__version__} cannot parse the ONNX "
                                 f"model: {parser_errors(parser)}")
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise BackendBuildError(f"{spec.name}: expected one input and one output, the network "
                                 f"has {network.num_inputs} and {network.num_outputs}")

    config = builder.create_builder_config()
    if workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    facts: dict[str, Any] = {"typing": "strong" if strong else "weak"}
    if not strong and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        facts["flags"] = ["FP16"]
    if not strong and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)   # with Q/DQ in the graph: explicit quantization
        facts["flags"] = ["INT8", "FP16"]

    batch = (MIN_BATCH, OPT_BATCH, MAX_BATCH)
    if dla_core is not None:
        cores = int(builder.num_DLA_cores)
        if cores == 0:
            raise DeviceUnavailableError("this GPU has no DLA cores (DLA is on Jetson / DRIVE); "
                                         "drop dla_core to build for the GPU")
        if dla_core >= cores:
            raise DeviceUnavailableError(f"DLA core {dla_core} does not exist; this device has "
                                         f"{cores} (0..{cores - 1})")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        # Layers DLA cannot run go to the GPU; the alternative is a build failure on most
        # classifiers. Recorded in the spec, so it is never silent.
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        batch = (OPT_BATCH, OPT_BATCH, OPT_BATCH)   # DLA needs min = opt = max
        facts.update(dla_core=dla_core, dla_gpu_fallback=True)

    tensor = network.get_input(0)
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape[1:]):
        raise BackendBuildError(f"{spec.name}: only the batch dimension may be dynamic; the "
                                 f"ONNX input is {shape}")
    if shape[0] < 0:
        profile = builder.create_optimization_profile()
        rest = shape[1:]
        profile.set_shape(tensor.name, (batch[0],) + rest, (batch[1],) + rest, (batch[2],) + rest)
        config.add_optimization_profile(profile)
        facts["batch_profile"] = list(batch)
    else:
        facts["batch_profile"] = [shape[0]] * 3

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendBuildError(f"{spec.name}: TensorRT {trt.__version__} could not build the "
                                 f"engine ({logger.first_error()})")
    engine = bytes(memoryview(serialized))
    if not engine:
        raise BackendBuildError(f"{spec.name}: TensorRT returned an empty engine "
                                 f"({one_line(logger.first_error())})")
    facts["tensorrt"] = trt.__version__
    return engine, facts


# -- the format table's exporter ----------------------------------------------------------------
def export(source, spec: ModelSpec, out: Path, *, precision: str = "fp32",
           calibration=None, options: dict[str, Any] | None = None) -> Path:
    """The format table's exporter for "tensorrt"."""
    from edgecls.runtimes.tensorrt import gpu_facts, import_tensorrt
    from edgecls.tensorrt_header import write_engine

    opts = parse_options(options, precision)
    if precision == "int8" and calibration is None:
        raise UnsupportedOptionError("--int8 needs calibration images: --calib DIR")
    trt = import_tensorrt()
    built_on = gpu_facts()            # fails early, and clearly, without a GPU
    with tempfile.TemporaryDirectory(prefix="edgecls-trt-") as work:
        onnx_path = prepare_onnx(source, spec, precision, calibration, Path(work),
                                 strongly_typed=strongly_typed_only(trt))
        engine, facts = build_engine(onnx_path, spec, precision, **opts)
    spec.exported_from = "onnx"
    spec.layout, spec.input_dtype = "NCHW", "float32"
    spec.tools["tensorrt"] = trt.__version__
    if source.onnx_opset:
        spec.tools.setdefault("opset", str(source.onnx_opset))
    spec.notes["engine_built_on"] = {**built_on, "tensorrt": trt.__version__}
    spec.notes["tensorrt_build"] = {k: v for k, v in facts.items()
                                    if k not in ("tensorrt", "dla_core")}
    if opts["dla_core"] is not None:
        spec.notes["dla_core"] = opts["dla_core"]
    if opts["workspace_gb"]:
        spec.notes["tensorrt_build"]["workspace_gb"] = opts["workspace_gb"]
    write_engine(out, spec, engine)
    log.info("built a TensorRT %s engine on %s (sm %s), %.1f MB", precision, built_on["gpu"],
             built_on["compute_capability"], len(engine) / 1e6)
    return Path(out)


__all__ = ["export", "prepare_onnx", "fold_int32_bias", "build_engine", "parse_options",
           "OPT_BATCH", "MAX_BATCH"]
