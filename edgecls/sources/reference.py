"""Where an artifact's FP32 reference comes from (spec.reference), and building it again.

    {"kind": "zoo", "source": "mobilenet_v3_small",
     "weights": "/abs/ft.pth", "weights_sha256": "9f2c..."}
    {"kind": "onnx", "source": "/abs/their_model.onnx", "sha256": "41ab..."}
    {"kind": "factory", "source": "mypkg.models:build", "kwargs": {"width": 0.5},
     "weights": "/abs/ckpt.pth", "weights_sha256": "..."}

parity rebuilds the reference from this record when loading it runs no code that the
record names: zoo, timm:, torchvision: names, .pt2 programs and ONNX files. A module:function
or a pickled module runs code, so the user names it again (`--reference mypkg.models:build`,
plus --trust-remote-code for a pickle): an artifact's spec alone must never make edgecls
call a function or unpickle a file. The record is resolved as its recorded kind only, its
text checked to be of that kind (a zoo name in the zoo, timm:NAME a plain name, a file of
the kind's suffix), never as whatever else its text looks like. A file whose content no
longer matches its recorded hash is used with a warning (the artifact may not come from it
any more); a file that is gone is an error saying what to pass.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from edgecls import zoo
from edgecls.errors import ArtifactError, DataError, EdgeclsError, UnknownModelError, first_line
from edgecls.io import sha256
from edgecls.sources import resolve
from edgecls.sources.kinds import (BY_NAME, HASH_CHARS, MODULE, SourceKind, SourceRequest,
                                        kind_of)
from edgecls.spec import ModelSpec

log = logging.getLogger("edgecls")
#: what a weights file given as --reference looks like to the table (.pt/.pth, or no kind)
WEIGHTS_LIKE = ("module-file", "zoo")


def rebuild(spec: ModelSpec, given: Sequence[str] = (), workdir: Path | None = None,
            trust_remote_code: bool = False):
    """The ExportSource of `spec`'s FP32 reference, built again. `given` is what the user
    passed as --reference: a model source naming the reference anew (or confirming it),
    and/or a weights file for it. Returns (source, warnings).

    The record is the artifact's word: it is resolved as its recorded kind only (its text
    checked to be of that kind), and only what the user named here is called with the
    record's kwargs or loaded with --trust-remote-code."""
    rec = dict(spec.reference or _legacy_record(spec))
    weights_like = [g for g in given if kind_of(g).name in WEIGHTS_LIKE and Path(g).is_file()]
    sources = [g for g in given if g not in weights_like]
    try:
        kind: SourceKind | None = _recorded_kind(spec, rec)
    except ArtifactError:
        if not sources:               # nothing the user named replaces the record
            raise
        kind = None
    if kind is not None and not sources and weights_like and not kind.takes_weights:
        sources = weights_like[:1]    # e.g. a pickled module
        weights_like = weights_like[1:]
    if len(sources) > 1 or len(weights_like) > 1:
        raise DataError(f"--reference takes one model source and one weights file, not "
                        f"{', '.join(given)}")
    named = bool(sources)              # did the user name the source (not only its weights)?
    if sources:
        given_kind = kind_of(sources[0])
        if given_kind is kind:         # the same source, moved or confirmed: the rest holds
            rec["source"] = sources[0]
        else:
            kind, rec = given_kind, {"kind": given_kind.name, "source": sources[0]}
    if weights_like:
        if not kind.takes_weights:
            raise DataError(f"{rec['source']} carries its own weights: --reference "
                            f"{weights_like[0]} does not apply to it")
        rec.update(weights=str(Path(weights_like[0]).resolve()), weights_sha256=None)
    if kind is MODULE:
        raise DataError(f"{spec.name} was exported from a torch module in memory: pass "
                        "reference=<the module> (Python), or --reference with its FP32 artifact, "
                        "its .pt2/ONNX file or its weights")
    if not kind.rebuildable and not named:
        trust = " --trust-remote-code" if kind.name == "module-file" else ""
        other = " (and --reference WEIGHTS for other weights)" if kind.takes_weights else ""
        source = rec["source"][:200]
        raise DataError(f"{spec.name}'s reference is {source} ({kind.description}); "
                        "edgecls does not run that on an artifact's word: if you trust it, "
                        f"pass --reference {source}{trust} to confirm it{other}")
    warnings = _check_files(spec, rec, kind)
    request = SourceRequest(
        weights=rec.get("weights", "pretrained") if kind.takes_weights else "pretrained",
        num_classes=spec.num_classes, like=spec,
        # the record's kwargs reach only a function the user named, and only a file the
        # user named is loaded with --trust-remote-code
        kwargs=rec.get("kwargs") if named and kind is BY_NAME["factory"] else None,
        trust_remote_code=trust_remote_code and named)
    try:
        resolved = resolve(rec["source"], request, kind=None if named else kind)
    except EdgeclsError as e:
        if given:
            raise
        trust = (f"; --trust-remote-code applies only to a reference you name: pass "
                 f"--reference {rec['source']} --trust-remote-code if you trust it"
                 if trust_remote_code else "")
        raise DataError(f"cannot rebuild the reference of {spec.name} ({first_line(e, 200)}); "
                        "pass --reference with an FP32 artifact, or the weights or model "
                        f"file it came from{trust}") from None
    return resolved.source(workdir or Path.cwd()), warnings


def _recorded_kind(spec: ModelSpec, rec: dict[str, Any]) -> SourceKind:
    """The kind spec.reference records, its source checked to really be of that kind (so
    that "subprocess:getoutput" recorded as a zoo name is refused, never resolved as the
    module:function it looks like). ArtifactError for anything else."""
    kind = BY_NAME.get(rec.get("kind")) if isinstance(rec.get("kind"), str) else None
    remedy = "pass --reference with its FP32 artifact, or the model it came from"
    if kind is None:
        known = ", ".join(sorted(BY_NAME))
        raise ArtifactError(f"{spec.name}: its spec records a reference of unknown kind "
                            f"{str(rec.get('kind'))[:60]!r} (edgecls knows {known}); {remedy}")
    if kind is MODULE:
        return kind
    source = rec.get("source")
    if not isinstance(source, str) or not source:
        raise ArtifactError(f"{spec.name}: its spec records a {kind.name} reference without "
                            f"its source; {remedy}")
    if not kind.accepts(source):
        raise ArtifactError(f"{spec.name}: its spec records a {kind.name} reference, and "
                            f"{source[:200]!r} is not one ({kind.description}); {remedy}")
    return kind


def _check_files(spec: ModelSpec, rec: dict[str, Any], kind) -> list[str]:
    """Recorded files must be there; one whose hash changed is a warning."""
    warnings = []
    files = []
    if kind.is_file:
        files.append(("source", rec["source"], rec.get("sha256"),
                      "--reference with its new path"))
    if rec.get("weights") not in (None, "pretrained", "none"):
        files.append(("weights", rec["weights"], rec.get("weights_sha256"),
                      "--reference with the weights file"))
    for what, path, digest, remedy in files:
        if not Path(path).is_file():
            raise DataError(f"the {what} file of {spec.name}'s reference, {path}, is gone "
                            f"(moved or deleted): pass {remedy}")
        try:
            now = sha256(Path(path), HASH_CHARS) if digest else None
        except OSError as e:
            raise DataError(f"the {what} file of {spec.name}'s reference, {path}, cannot be "
                            f"read ({e.strerror or e}): pass {remedy}") from None
        if digest and now != digest:
            warnings.append(f"{path} has changed since {spec.name} was exported (sha256 "
                            f"{digest}... then, {now}... now): the artifact may not come from "
                            "this reference")
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def _legacy_record(spec: ModelSpec) -> dict[str, Any]:
    """Specs written before spec.reference: a zoo name with its weights, or nothing."""
    try:
        zoo.get_entry(spec.name)
    except UnknownModelError:
        raise DataError(f"{spec.name} is not a zoo model and its spec does not say where its "
                        "reference comes from: pass --reference with its FP32 artifact") from None
    weights = spec.weights
    weights = "pretrained" if weights.startswith("pretrained") else weights.removeprefix("file:")
    return {"kind": "zoo", "source": spec.name, "weights": weights}
