"""The float side of an ExecuTorch program: torch.export capture (batch 1), lowering to
XNNPACK, the delegation facts, and the .pte bytes with the spec inside. Shared by the FP32
export (export.py), the INT8 recipes (quantize.py, tuning.py) and QAT."""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from typing import Any, Iterator

from edgecls.backends.executorch.container import SPEC_METHOD, with_spec
from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")

#: node names that are bookkeeping, not computation: a delegate's outputs are read with
#: getitem, and they are never "fallbacks"
_BOOKKEEPING = ("getitem",)


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
    with quiet():
        buffer = edge.to_executorch().buffer
    return with_spec(bytes(buffer), spec)


__all__ = ["versions", "quiet", "named", "example", "capture", "lower", "lower_program",
           "delegation", "warn_if_partial", "finish"]
