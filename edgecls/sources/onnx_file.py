"""An FP32 ONNX file as the model source.

The file becomes the FP32 parent of every artifact: ExportSource.onnx() returns it, so the
ONNX INT8 / FP16, OpenVINO and TensorRT exporters run unchanged, and it is the reference
that export checks and parity compare with, run in ONNX Runtime. Formats whose exporter
needs a torch module (TFLite, the .pt2 program) refuse it (Format.starts_from). Measured for
TFLite: no maintained ONNX->TFLite route installs under the pins - onnx2tf (1.29.24, the
newest that resolves) brings TensorFlow 2.19 and downgrades numpy, onnx, onnxruntime and
ai-edge-litert; onnx2torch 1.5.15 (2024) cannot read torch's ONNX (ReduceMean-18, and at
opset 17 Reshape's allowzero), so litert-torch cannot be fed through it either.

What edgecls reads from the graph: one image input (NCHW, or NHWC), one logits output
(N x classes), float32. It then makes the parent the shape every exporter expects, and
checks the result against the original file in ONNX Runtime:

  - the input is named "input" and the output "logits" (ORT's quantizer is fed by name);
  - an NHWC input gets a Transpose in front, so the parent takes NCHW like every other;
  - a fixed batch becomes dynamic (refused, with what to do, when the graph depends on it);
  - a dynamic height/width is fixed to --input-size (TensorRT and OpenVINO need them fixed).

A file with several inputs or outputs, integer or FP16 input, or quantized operators is a
one-line error. An edgecls spec inside the file (an FP32 artifact of edgecls) supplies the
preprocessing and labels; otherwise they come from the flags, ImageNet's by default.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgecls.backends.onnx.container import write_spec
from edgecls.backends.onnx.runtime import OnnxRuntimeSession
from edgecls.errors import (ArtifactError, MissingDependencyError, SourceError,
                            UnsupportedOptionError, first_line)
from edgecls.sources.export_source import ExportSource
from edgecls.sources.kinds import BY_NAME, Resolved, SourceRequest, fit_classes
from edgecls.spec import SPEC_KEY, ModelSpec, safe_name

log = logging.getLogger("edgecls")

INPUT, OUTPUT = "input", "logits"     # the parent's names, as edgecls's own exports
#: operators of a quantized (QDQ or QOperator) model: not an FP32 parent
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
                 "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd"}
#: how closely the prepared parent must reproduce the original file (relative to max |logit|)
PREPARE_TOLERANCE = 1e-4


@dataclass
class OnnxGraph:
    """What edgecls reads from an ONNX file's graph."""
    path: Path
    input: str
    output: str
    layout: str                        # NCHW | NHWC
    batch: int | None                  # None: dynamic
    channels: int
    size: tuple[int, int] | None       # H, W; None: dynamic
    classes: int
    opset: int
    spec_json: str | None              # an embedded edgecls spec


def read_graph(path: Path) -> OnnxGraph:
    onnx = _onnx()
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ArtifactError(f"{path}: not an ONNX model ({first_line(e)})") from None
    _check_external_data(proto, path)
    graph = proto.graph
    weights = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise SourceError(f"{path.name} has {len(inputs)} input(s) ({_names(inputs)}) and "
                          f"{len(graph.output)} output(s) ({_names(graph.output)}); edgecls "
                          "exports classifiers with one image input and one logits output")
    quantized = sorted({n.op_type for n in graph.node} & QUANTIZED_OPS)
    if quantized:
        raise SourceError(f"{path.name} is already quantized ({', '.join(quantized)}); give "
                          "edgecls its FP32 parent")
    inp, out = inputs[0], graph.output[0]
    for value, what in ((inp, "input"), (out, "output")):
        elem = value.type.tensor_type.elem_type
        if elem != onnx.TensorProto.FLOAT:
            raise SourceError(f"{path.name}: its {what} {value.name!r} is "
                              f"{onnx.TensorProto.DataType.Name(elem).lower()}, not float32; "
                              "give edgecls the FP32 model")
    dims = _dims(inp)
    if len(dims) != 4:
        raise SourceError(f"{path.name}: its input {inp.name!r} has shape {_show(dims)}; "
                          "edgecls feeds image batches (N, C, H, W) or (N, H, W, C)")
    if dims[1] in (1, 3):
        layout, channels, hw = "NCHW", dims[1], dims[2:]
    elif dims[3] in (1, 3):
        layout, channels, hw = "NHWC", dims[3], dims[1:3]
    else:
        raise SourceError(f"{path.name}: its input {inp.name!r} has shape {_show(dims)}; "
                          "edgecls finds no channel axis of 1 or 3 (grayscale or colour) in it")
    out_dims = _dims(out)
    if len(out_dims) != 2 or not isinstance(out_dims[1], int):
        raise SourceError(f"{path.name}: its output {out.name!r} has shape {_show(out_dims)}; "
                          "edgecls expects logits (N x classes)")
    size = tuple(hw) if all(isinstance(d, int) for d in hw) else None
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    spec_json = next((p.value for p in proto.metadata_props if p.key == SPEC_KEY), None)
    return OnnxGraph(path, inp.name, out.name, layout, dims[0] if isinstance(dims[0], int)
                     else None, channels, size, out_dims[1], opset, spec_json)


def _tensors(proto) -> Iterator[Any]:
    """Every tensor of a model: initializers and node attributes, in subgraphs too
    (walked without recursion)."""
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)


def _check_external_data(proto, path: Path) -> None:
    """Weights kept in external files must be files inside the model's own folder (as ONNX
    Runtime requires): a location such as ../secret.bin or /etc/passwd is refused before
    anything reads it."""
    onnx = _onnx()
    folder = path.parent.resolve()
    for tensor in _tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ArtifactError(f"{path}: the external data of its tensor {tensor.name[:80]!r} "
                                f"is {location[:200]!r}, outside the model's folder; edgecls "
                                "reads external data only from files next to the model")
        if not target.is_file():
            raise ArtifactError(f"{path}: the external data of its tensor {tensor.name[:80]!r}, "
                                f"{location[:200]!r}, is missing: copy it next to the model")


def onnx_file(text: str, request: SourceRequest) -> "OnnxResolved":
    path = Path(text).expanduser()
    if not path.is_file():
        raise SourceError(f"{text}: no such file")
    path = path.resolve()
    graph = read_graph(path)
    if graph.spec_json:        # an edgecls FP32 artifact: its preprocessing and labels
        spec = ModelSpec.from_json(graph.spec_json, str(path))
    else:
        if request.like is None and not {"mean", "std"} <= request.preprocessing.given():
            log.warning("%s carries no preprocessing: assuming ImageNet's mean/std (and resize "
                        "256) where not given; pass --mean/--std/--resize if it was trained "
                        "otherwise", path.name)
        spec = ModelSpec(name=safe_name(path.stem), architecture=f"onnx:{path.name}",
                         num_classes=0, labels=[], weights=f"file:{path}")
    if graph.size is None and request.like is None and \
            "input_size" not in request.preprocessing.given():
        raise SourceError(f"{path.name} takes any height and width: pass --input-size H[xW] "
                          "(the size it was trained at)")
    spec = spec.derive(input_size=graph.size or spec.input_size, channels=graph.channels,
                       format="onnx", precision="fp32", exported_from="onnx", layout="NCHW",
                       input_dtype="float32", normalization_in_graph=False, quantization=None,
                       parent=None, notes={})
    return OnnxResolved(BY_NAME["onnx"], spec, file=path, graph=graph)


@dataclass
class OnnxResolved(Resolved):
    graph: OnnxGraph | None = None
    parent: Any = field(default=None, repr=False)     # the prepared onnx.ModelProto

    def finish(self, request: SourceRequest) -> None:
        graph = self.graph
        if graph.size is not None and tuple(self.spec.input_size) != graph.size:
            raise SourceError(f"{graph.path.name} takes {graph.size[0]}x{graph.size[1]} "
                              f"inputs, not --input-size {self.spec.input_size[0]}x"
                              f"{self.spec.input_size[1]}")
        self.spec = fit_classes(self.spec, graph.classes, request)
        self.parent = prepare(graph, self.spec)

    def source(self, workdir: Path) -> "OnnxFileSource":
        return OnnxFileSource(None, self.spec, workdir, onnx_opset=self.graph.opset,
                              parent=self.parent)


def prepare(graph: OnnxGraph, spec: ModelSpec):
    """The parent: the original graph with the input/output names and shapes every exporter
    expects, checked against the original in ONNX Runtime."""
    onnx = _onnx()
    import onnx_ir as ir

    model = ir.from_proto(onnx.load(str(graph.path)))      # external data read in
    g = model.graph
    # (old files list their initializers among the graph inputs too)
    index = next(i for i, v in enumerate(g.inputs) if v.name == graph.input)
    image, logits = g.inputs[index], g.outputs[0]
    h, w = spec.input_size
    shape = ir.Shape(["batch", graph.channels, h, w])
    for value in _all_values(g):           # free the names the parent uses
        if value.name in (INPUT, OUTPUT) and value is not image and value is not logits:
            value.name = f"{value.name}.0"
    if graph.layout == "NHWC":
        new = ir.Input(INPUT, shape=shape, type=ir.TensorType(ir.DataType.FLOAT))
        to_nhwc = ir.node("Transpose", [new], attributes={"perm": [0, 2, 3, 1]},
                          name="edgecls_nchw_to_nhwc")
        image.replace_all_uses_with(to_nhwc.outputs[0])
        g.inputs[index] = new
        g.insert_before(next(iter(g)), to_nhwc)
    else:
        image.name, image.shape = INPUT, shape
    logits.name, logits.shape = OUTPUT, ir.Shape(["batch", graph.classes])
    if graph.batch is not None or graph.size is None:
        # shapes recorded for a fixed batch (or size) would contradict the new ones
        for value in _all_values(g):
            if not (value.is_graph_input() or value.is_graph_output() or value.is_initializer()):
                value.shape = None
    parent = ir.to_proto(model)
    _check_prepared(graph, spec, parent)
    return parent


def _check_prepared(graph: OnnxGraph, spec: ModelSpec, parent) -> None:
    """The parent at batch 2n (and 1) gives what the original gives, run as it was made:
    in chunks of its fixed batch n, or whole."""
    ort = _ort()
    chunk = graph.batch or 2
    h, w = spec.input_size
    x = np.random.default_rng(0).standard_normal((2 * chunk, graph.channels, h, w))
    x = x.astype(np.float32)
    original = _session(ort, str(graph.path))
    feed = x if graph.layout == "NCHW" else x.transpose(0, 2, 3, 1)
    want = np.concatenate([original.run(None, {graph.input: np.ascontiguousarray(part)})[0]
                           for part in np.split(feed, len(feed) // chunk)])
    try:
        prepared = _session(ort, parent.SerializeToString())
        got = [prepared.run(None, {INPUT: x})[0], prepared.run(None, {INPUT: x[:1]})[0]]
    except Exception as e:  # ORT's shape errors, when the graph hard-codes the batch
        raise SourceError(_fixed_batch(graph, first_line(e, 160))) from None
    scale = max(1.0, float(np.abs(want).max()))
    errors = [float(np.abs(got[0] - want).max()), float(np.abs(got[1] - want[:1]).max())]
    if max(errors) > PREPARE_TOLERANCE * scale:
        raise SourceError(_fixed_batch(graph, f"outputs differ by {max(errors):.2g}"))


def _fixed_batch(graph: OnnxGraph, why: str) -> str:
    if graph.batch is None:
        return f"{graph.path.name}: edgecls cannot feed it at batch 1 and 2 ({why})"
    return (f"{graph.path.name} has a fixed batch of {graph.batch} and its graph depends on it "
            f"({why}); export it with a dynamic batch axis: torch.onnx.export(..., dynamo=True, "
            f"dynamic_shapes=...) or dynamic_axes={{'{graph.input}': {{0: 'batch'}}, "
            f"'{graph.output}': {{0: 'batch'}}}}")


class OnnxFileSource(ExportSource):
    """An ExportSource whose FP32 parent is a given ONNX file: no torch module; the
    reference is the parent itself, run in ONNX Runtime."""
    reference_backend = "onnxruntime"

    def __init__(self, model: Any, spec: ModelSpec, workdir: Path, onnx_opset: int,
                 parent: Any):
        super().__init__(model, spec, workdir, onnx_opset)
        path = workdir / f"{spec.name}.fp32.onnx"
        _onnx().save_model(parent, str(path))
        write_spec(path, spec.derive(tools={**spec.tools, "opset": str(onnx_opset)}))
        self._onnx = path

    def onnx(self, opset: int | None = None) -> Path:
        if opset is not None and opset != self.onnx_opset:
            raise UnsupportedOptionError(f"the ONNX file is opset {self.onnx_opset}: --opset "
                                         "applies when edgecls exports from torch")
        return self._onnx

    @property
    def reference(self) -> Path:
        return self._onnx

    def reference_session(self, device: str | None = None, threads: int | None = None):
        return OnnxRuntimeSession(self._onnx, device=device, threads=threads)


def _session(ort, model):
    options = ort.SessionOptions()
    options.log_severity_level = 4      # ORT logs the failures _check_prepared reports itself
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _dims(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim]


def _all_values(g):
    for value in g.inputs:
        yield value
    for node in g.all_nodes():
        yield from node.outputs


def _names(values) -> str:
    return ", ".join(v.name for v in values) or "none"


def _show(dims: list) -> str:
    return "(" + ", ".join(map(str, dims)) + ")"


def _onnx():
    try:
        import onnx
        return onnx
    except ImportError:
        raise MissingDependencyError("onnx (to read ONNX files)", "onnx") from None


def _ort():
    try:
        import onnxruntime
        return onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime (to run ONNX files)", "onnx") from None
