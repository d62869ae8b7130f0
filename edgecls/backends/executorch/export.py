"""PyTorch -> ExecuTorch .pte: torch.export -> to_edge_transform_and_lower (XNNPACK
partitioner) -> to_executorch(); INT8 through PT2E with ExecuTorch's XNNPACK quantizer.

    fp32  the float program, every op the partitioner supports delegated to XNNPACK
    int8  XNNPACKQuantizer: int8 symmetric per-channel weights, int8 asymmetric per-tensor
          static activations calibrated on the CalibrationSet (global min/max by default,
          --calib-method histogram for the quantizer's own observer), then lowered: XNNPACK
          runs the quantized convolutions, adds, multiplies and pools as integer kernels.
          Searched like the other backends (tuning.py) when it misses its tolerance.

The batch is fixed at 1 and the session loops over a batch: with a dynamic batch the
partitioner leaves the flatten (view_copy) and sym_size nodes to the portable CPU kernels,
which splits the program into two XNNPACK subgraphs; with batch 1 it is one delegate.

The spec is a constant method of the program (container.py). Which nodes XNNPACK took and
which fell back to the portable kernels goes into spec.notes["executorch"]; a program that
is not fully delegated logs a warning that names the fallbacks.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from edgecls.backends.executorch import ExecuTorchOptions
from edgecls.backends.executorch.container import SPEC_METHOD
from edgecls.errors import DataError
from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")

#: node names that are bookkeeping, not computation: a delegate's outputs are read with
#: getitem, and they are never "fallbacks"
_BOOKKEEPING = ("getitem",)


def export(source, spec: ModelSpec, out: Path, *, precision: str, calibration,
           options: ExecuTorchOptions) -> None:
    """The format table's exporter for "executorch"."""
    spec.layout = "NCHW"
    spec.exported_from = "torch"
    spec.input_dtype = "float32"
    spec.tools.update(versions())
    spec.notes["batch"] = "fixed 1 (the session loops over a batch)"
    if source.student is not None:       # QAT: lower the trained scales
        student = source.student
        student.record(spec, "executorch")
        spec.tools.update(versions())
        program, facts = lower(student.converted(fold_quantize=True), spec)
        spec.notes["executorch"] = facts
        warn_if_partial(spec.name, facts)
        Path(out).write_bytes(finish(program, spec))
        return
    if precision == "int8":
        from edgecls import search, targets
        from edgecls.backends.executorch.tuning import ExecuTorchTuner
        if not len(calibration):
            raise DataError("the calibration set is empty")
        tuner = ExecuTorchTuner(source.model, spec, calibration, targets.resolve(options.target),
                                observer=options.calib_method or "minmax",
                                keep_float=tuple(options.keep_float or ()))
        search.export_int8(tuner, source, calibration, out, search=not options.no_search)
        return
    program, facts = lower(source.model, spec)
    spec.notes["executorch"] = facts
    warn_if_partial(spec.name, facts)
    Path(out).write_bytes(finish(program, spec))


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    found = {}
    for dist in ("executorch", "torch", "torchao"):
        try:
            found[dist] = version(dist).split("+")[0]
        except PackageNotFoundError:
            pass
    return found


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch.export, the edge passes and the experimental-API warnings print a lot; keep the
    CLI clean (errors still propagate)."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def named(model):
    """`model` under one attribute, so that every parameter name starts with a letter.

    ExecuTorch 1.4's XNNPACK FuseBatchNormPass names the fused weight after the conv's
    parameter ("0.weight" -> "0_weight_fused_bn"); torch.fx renames a placeholder that starts
    with a digit ("_0_weight_fused_bn"), the pass then fails to find its own node and
    lowering stops with "'0_weight_fused_bn' is not in list". Top-level nn.Sequential models
    have exactly such names. (tests/test_executorch.py fails when upstream fixes it.)"""
    import torch

    class Program(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, x):
            return self.model(x)

    return Program(model).eval()


def example(spec: ModelSpec):
    import torch
    h, w = spec.input_size
    return (torch.zeros(1, spec.channels, h, w),)


def capture(model, spec: ModelSpec):
    """The model as a torch.export program with batch 1 (a copy: never the caller's module)."""
    import torch
    with quiet():
        return torch.export.export(named(copy.deepcopy(model)).eval(), example(spec))


def lower(model, spec: ModelSpec) -> tuple[Any, dict[str, Any]]:
    """The model (a torch module, float or PT2E-converted) lowered to XNNPACK: the edge
    program manager, to be finished with the spec, and the delegation facts."""
    return lower_program(capture(model, spec))


def lower_program(exported) -> tuple[Any, dict[str, Any]]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    with quiet():
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()],
                                           constant_methods={SPEC_METHOD: "{}"})
    return edge, delegation(edge)


def delegation(edge) -> dict[str, Any]:
    """What XNNPACK took and what fell back to the portable kernels, by operator."""
    from executorch.devtools.backend_debug import get_delegation_info
    program = edge.exported_program()
    info = get_delegation_info(program.graph_module)
    rows = {k: v for k, v in info.delegation_by_operator.items() if k not in _BOOKKEEPING}
    delegated = sum(v.delegated for v in rows.values())
    fallback = {k: v.non_delegated for k, v in sorted(rows.items()) if v.non_delegated}
    total = delegated + sum(fallback.values())
    # portable nodes that touch only constants (e.g. the dtype casts of the 0-d scalars a
    # hardsigmoid decomposes into): they run, but no activation leaves XNNPACK for them
    users = set(program.graph_signature.user_inputs)
    on_constants = sum(
        1 for n in program.graph_module.graph.nodes
        if n.op == "call_function" and not str(n.name).startswith(_BOOKKEEPING)
        and "executorch_call_delegate" not in str(n.name)
        and all(getattr(a, "op", None) == "placeholder" and a.name not in users
                for a in n.all_input_nodes))
    return {"backend": "XnnpackBackend", "delegated_subgraphs": info.num_delegated_subgraphs,
            "delegated_nodes": delegated, "portable_nodes": sum(fallback.values()),
            "portable_nodes_on_constants_only": on_constants,
            "delegated_share": round(delegated / total, 4) if total else 0.0,
            "portable_ops": fallback,
            "delegated_ops": {k: v.delegated for k, v in sorted(rows.items()) if v.delegated}}


def warn_if_partial(name: str, facts: dict[str, Any]) -> None:
    if facts["portable_nodes"]:
        ops = ", ".join(f"{k} x{n}" for k, n in facts["portable_ops"].items())
        constants = facts.get("portable_nodes_on_constants_only", 0)
        why = (" - all of them on constants only, no activation leaves XNNPACK"
               if constants == facts["portable_nodes"] else "")
        log.warning("%s: not fully delegated to XNNPACK: %d of %d nodes run on ExecuTorch's "
                    "portable CPU kernels (%s)%s", name, facts["portable_nodes"],
                    facts["portable_nodes"] + facts["delegated_nodes"], ops, why)


def finish(edge, spec: ModelSpec) -> bytes:
    """The .pte bytes of a lowered program, its spec method returning `spec`."""
    from edgecls.backends.executorch.container import with_spec
    with quiet():
        buffer = edge.to_executorch().buffer
    return with_spec(bytes(buffer), spec)


# -- INT8: PT2E with the XNNPACK quantizer ---------------------------------------------------
def quantizer(observer: str = "minmax", keep_float: Sequence[str] = (), qat: bool = False,
              fake_quant: Callable[[Any, bool], Any] | None = None):
    """ExecuTorch's XNNPACKQuantizer: int8 symmetric per-channel weights, int8 asymmetric
    per-tensor static activations; `observer` picks the activation observer ("minmax":
    global min/max, "histogram": the quantizer's default); the graph nodes named in
    `keep_float` (and the ops they alone feed) stay in float. `fake_quant(spec,
    per_channel)` replaces the observers (QAT)."""
    import dataclasses

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.observer import MinMaxObserver

    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    if fake_quant is not None:
        config = dataclasses.replace(
            config, input_activation=fake_quant(config.input_activation, False),
            output_activation=fake_quant(config.output_activation, False),
            weight=fake_quant(config.weight, True))
    elif observer == "minmax":
        act = dataclasses.replace(config.input_activation,
                                  observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2 ** -12))
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    q = XNNPACKQuantizer().set_global(config)
    fused = conv_clamp_fusion(config)
    if not qat:
        # PTQ's prepare_pt2e folds BatchNorm into the convolutions before it annotates, so the
        # quantizer's conv+BN patterns can never match there - yet building each pattern is a
        # torch.export of its own (14 s of every candidate on EfficientNet-Lite0). An instance
        # attribute, so the class and QAT (which needs the patterns) are untouched;
        # test_executorch checks that PTQ annotates the same nodes with and without them.
        q.SUPPORTED_PATTERNS = [p for p in q.SUPPORTED_PATTERNS if not p.is_qat]
    if keep_float:
        kept = set(keep_float)
        q.set_filter_function(lambda node: node.name not in kept)
        fused.filter_fn = lambda node: node.name not in kept
    from torchao.quantization.pt2e.quantizer import ComposableQuantizer
    return ComposableQuantizer([fused, q])     # the fusion first: XNNPACK skips what it marked


def conv_clamp_fusion(config):
    """A PT2E Quantizer that runs before the XNNPACK one (the class is made here: torchao is
    imported only when exporting)."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer

    class _ConvClampFusion(Quantizer):
        """Annotates conv2d -> hardtanh (ReLU6) as ONE quantized op, as the XNNPACK quantizer
        does for conv -> relu and as XNNPACK runs it (a conv with output clamping).

        Why: ExecuTorch 1.4's XNNPACKQuantizer annotates the conv alone and makes hardtanh
        share the conv's observer, so the ReLU6 output is quantized over the conv's whole
        pre-clamp range: about 30 of 256 levels fall in [0, 6]. On EfficientNet-Lite0 (all
        ReLU6) that gave KL 0.54 to FP32 and 47% agreement on verification photos. Public
        PT2E API only: annotations, and the XNNPACK quantizer skips annotated nodes."""

        def __init__(self, config):
            super().__init__()
            self.config, self.filter_fn = config, None

        def annotate(self, gm):
            import torch
            clamps = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
            for clamp in gm.graph.nodes:
                conv = clamp.args[0] if clamp.op == "call_function" and clamp.target in clamps else None
                if (conv is None or not isinstance(conv, torch.fx.Node)
                        or conv.target != torch.ops.aten.conv2d.default or len(conv.users) != 1
                        or (self.filter_fn is not None and not self.filter_fn(conv))):
                    continue
                inputs = {conv.args[0]: self.config.input_activation, conv.args[1]: self.config.weight}
                if len(conv.args) > 2 and isinstance(conv.args[2], torch.fx.Node) \
                        and self.config.bias is not None:
                    inputs[conv.args[2]] = self.config.bias
                conv.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map=inputs, _annotated=True)
                clamp.meta["quantization_annotation"] = QuantizationAnnotation(
                    output_qspec=self.config.output_activation, _annotated=True)
                for param in conv.args[1:3]:       # so no other annotator claims them
                    if isinstance(param, torch.fx.Node):
                        param.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
            return gm

        def validate(self, gm) -> None:
            pass

    return _ConvClampFusion(config)


def weighted_nodes(model, spec: ModelSpec) -> list[str]:
    """The conv / linear node names of the captured graph, in order (what keep_float names)."""
    import torch
    ops = {torch.ops.aten.conv2d.default, torch.ops.aten.conv1d.default,
           torch.ops.aten.linear.default}
    graph = capture(model, spec).module().graph
    return [n.name for n in graph.nodes if n.op == "call_function" and n.target in ops]


def quantize(model, spec: ModelSpec, calibration, observer: str = "minmax",
             keep_float: Sequence[str] = ()):
    """The PT2E-converted INT8 model, calibrated on every calibration image."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = capture(model, spec).module()
    with quiet():
        prepared = prepare_pt2e(graph, quantizer(observer, keep_float))
        with torch.no_grad():
            for batch in calibration.batches(spec):
                for sample in batch:
                    prepared(torch.from_numpy(sample[None]))
        return convert_pt2e(prepared)


def int8_program(model, spec: ModelSpec, calibration, observer: str = "minmax",
                 keep_float: Sequence[str] = ()) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(edge program, delegation facts, recipe facts) of the INT8 model."""
    converted = quantize(model, spec, calibration, observer, keep_float)
    edge, facts = lower(converted, spec)
    recipe = {"method": "static", "tool": "executorch XNNPACKQuantizer (PT2E)",
              "weights": "int8 symmetric per-channel",
              "activations": "int8 asymmetric per-tensor",
              "observer": {"minmax": "global min/max",
                           "histogram": "HistogramObserver"}[observer],
              "kept_in_float": list(keep_float), **calibration.recipe()}
    return edge, facts, recipe


__all__ = ["export", "lower", "lower_program", "delegation", "finish", "quantizer",
           "conv_clamp_fusion",
           "quantize", "int8_program", "weighted_nodes", "versions"]
