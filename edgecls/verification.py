"""Parity: does each artifact still behave like the model it came from?

    report = edgecls.parity(["m.onnx", "m.int8.onnx"], data="data/val")
    report.print(); report.write("reports/m"); bool(report)  # every tolerance met?

The reference (the FP32 model the artifacts' spec records - PyTorch, or the ONNX file they
were made from, run in ONNX Runtime - or `reference=`) and every artifact run on the same
decoded, resized and cropped pixels; each then gets them in its own input form (layout,
dtype, normalisation) from the shared preprocessing. Both are Sessions: the PyTorch
reference runs through the torch backend like any artifact.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgecls import hardware, metrics, verdict
from edgecls.backends.base import Session
from edgecls.backends.torch.runtime import TorchSession
from edgecls.errors import ArtifactError, DataError, UnknownFormatError, first_line
from edgecls.formats import format_for_path, get_format, open_session, read_spec
from edgecls.imaging.datasets import check_source, load_part, photo_of
from edgecls.imaging.preprocess import encode_png, to_model_input
from edgecls.report import ParityReport
from edgecls.report.model import ArtifactResult
from edgecls.sources import kind_of
from edgecls.sources.export_source import ExportSource
from edgecls.sources.reference import rebuild
from edgecls.spec import ModelSpec
from edgecls.timing import timed_runs

log = logging.getLogger("edgecls")

SQNR_IMAGES = 8
WORST_LAYERS = 10


def tolerance_for(precision: str, max_drop: float | None = None) -> verdict.Tolerances:
    """What an artifact of `precision` must meet (edgecls.verdict.TOLERANCES); `max_drop`
    (--max-drop, points) replaces the top-1 drop allowed, or without labels the disagreement
    allowed on decisive inputs."""
    return verdict.tolerances_for(precision, max_drop)


# -- the reference ---------------------------------------------------------------------------
@dataclass
class Reference:
    """What the artifacts are compared with: a session (PyTorch, or another artifact) and how
    the report names it."""
    session: Session
    description: dict[str, Any]
    model: Any = None                 # the torch module, when the reference is PyTorch
    _source: ExportSource | None = None

    @property
    def spec(self) -> ModelSpec:
        return self.session.spec

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(to_model_input(pixels, self.spec))

    @classmethod
    def of_source(cls, source: ExportSource, warnings: Sequence[str] = ()) -> Reference:
        """The reference of an ExportSource: its torch module, or the FP32 ONNX file it is
        (run in ONNX Runtime)."""
        record = source.spec.reference or {}
        description = {"kind": source.reference_backend,
                       "origin": record.get("source", source.spec.name), "name": source.spec.name,
                       "weights": record.get("weights", source.spec.weights), "precision": "fp32"}
        if warnings:
            description["warnings"] = list(warnings)
        return cls(source.reference_session(), description, source.model, source)

    @property
    def has_fp32_onnx(self) -> bool:
        return self.model is not None or self._source is not None

    def fp32_onnx(self, workdir: Path) -> Path:
        """The reference as FP32 ONNX, exported once per parity run (SQNR diagnostics)."""
        if self._source is None:
            self._source = ExportSource(self.model, self.spec, workdir)
        return self._source.onnx()


def _torch_reference(model: Any, spec: ModelSpec, origin: str) -> Reference:
    session = TorchSession.of_module(model, spec)
    return Reference(session, {"kind": "pytorch", "origin": origin, "name": spec.name,
                               "weights": spec.weights, "precision": "fp32"}, model)


def _artifact_reference(path: str | Path, device: str | None, threads: int | None) -> Reference:
    session = open_session(path, device=device, threads=threads)
    return Reference(session, {"kind": "artifact", "origin": str(session.path),
                               "name": session.spec.name, "precision": session.spec.precision,
                               **session.describe()})


def _resolve_reference(reference: Any, spec: ModelSpec, device: str | None,
                       threads: int | None, workdir: Path,
                       trust_remote_code: bool = False) -> Reference:
    """A torch module, an FP32 artifact, or else the reference `spec` records, built again
    (with `reference` naming its weights or its model source anew)."""
    if reference is not None and not isinstance(reference, (str, Path, list, tuple)):
        return _torch_reference(reference, spec, "given torch module")
    given = [reference] if isinstance(reference, (str, Path)) else list(reference or [])
    if len(given) == 1 and _is_artifact(given[0]):
        return _artifact_reference(given[0], device, threads)
    source, warnings = rebuild(spec, [str(g) for g in given], workdir, trust_remote_code)
    return Reference.of_source(source, warnings)


def _is_artifact(path: str | Path) -> bool:
    """An edgecls artifact (it carries its spec), not a file a reference is built from. Only
    .onnx and .pt2 files can be either."""
    try:
        format_for_path(path)
    except UnknownFormatError:
        return False
    if not kind_of(path).is_file:
        return True
    try:
        read_spec(path)
    except ArtifactError:
        return False
    return True


# -- running ---------------------------------------------------------------------------------
def parity(artifacts: Sequence[str | Path], data: Any = "photos", reference: Any = None,
           max_drop: float | None = None, limit: int | None = None, out: str | Path | None = None,
           calib: Any = None, device: str | None = None, threads: int | None = None,
           reference_spec: ModelSpec | None = None, progress: bool = True,
           sqnr: bool = True, max_pixels: int | None = None,
           options: dict[str, Any] | None = None, trust_remote_code: bool = False,
           role: str = "verification") -> ParityReport:
    """Every artifact is opened once: the first one before the reference (its spec names
    the reference unless `reference_spec` does), the others in turn. Images of `data` and
    `calib` over `max_pixels` are refused before they are decoded (see load_rgb). `options`
    are session options, each given to the backends that take it (e.g. precise_int8).
    `role`: what `data` is to the artifacts - "verification" (no choice saw it) unless the
    caller says "selection" (an export without verification images), which the report shows.

    `reference`: a torch module, an FP32 artifact, or what the reference recorded in the
    spec is built from (a model source and/or a weights file, as a list for both); by
    default it is rebuilt from the spec, which says what to pass when it cannot be."""
    if not artifacts:
        raise DataError("parity needs at least one artifact")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"--limit must be a whole number >= 1, not {limit!r}")
    for source in (data, calib):
        check_source(source)
    for path in artifacts:   # a wrong path fails now, not after the reference has run
        format_for_path(path)
        if not Path(path).is_file():
            raise ArtifactError(f"{path}: no such file")
    with contextlib.ExitStack() as stack:
        opener = functools.partial(_open_artifact, device=device, threads=threads,
                                   options=options or {})
        first = None if reference_spec else stack.enter_context(opener(artifacts[0]))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgecls-ref-")))
        ref = _resolve_reference(reference, reference_spec or first.spec, device, threads, work,
                                 trust_remote_code)
        stack.enter_context(ref.session)
        return _parity(artifacts, first, ref, data, max_drop, limit, out, calib, opener,
                       progress, sqnr, max_pixels, role)


def _open_artifact(path: str | Path, device: str | None, threads: int | None,
                   options: dict[str, Any]) -> Session:
    accepted = format_for_path(path).load_runtime().accepted_options
    return open_session(path, device=device, threads=threads,
                        **{k: v for k, v in options.items() if k in accepted})


def _parity(artifacts, first, ref: Reference, data, max_drop, limit, out, calib, opener,
            progress, sqnr, max_pixels, role) -> ParityReport:
    images = load_part(data, ref.spec, "val", max_pixels)
    if limit:
        images = images.subset(limit)
    if not len(images):
        raise DataError(f"{data}: no images to compare on")
    labels = images.labels()
    if labels is not None and labels.max() >= ref.spec.num_classes:
        raise DataError(f"{images.name}: labels go up to {labels.max()} but the model has "
                        f"{ref.spec.num_classes} classes")

    pixels = images.crops(ref.spec, progress=progress)
    digests = [i.digest()[:12] for i in images.items]
    # the unit the confidence intervals resample: views of one photo are one sample
    groups = [photo_of(i) for i in images.items]
    data_info: dict[str, Any] = {"name": images.name, "n": len(images), "labelled": labels is not None,
                                 "source": str(data), "machine": hardware.describe(),
                                 "role": role, "photos": len(set(groups))}
    if calib is not None:
        calib_set = load_part(calib, ref.spec, "calib", max_pixels)
        data_info["calib_overlap"] = calib_set.overlap(images)
        if data_info["calib_overlap"]:
            log.warning("%d validation image(s) are also in the calibration data %s: accuracy "
                        "figures are optimistic", data_info["calib_overlap"], calib)

    ref_logits = _batched(ref.run, pixels)
    ref_pred = ref_logits.argmax(1)
    ref_margin = verdict.margins(ref_logits)
    ref_top1 = metrics.topk_hits(ref_logits, labels, 1) if labels is not None else None
    ref_info = dict(ref.description)
    if labels is not None:
        ref_info["top1"] = float(ref_top1.mean())
        ref_info["top1_ci"] = metrics.bootstrap_ci(ref_top1)
        ref_info["top5"] = float(metrics.topk_hits(ref_logits, labels, 5).mean())
        ref_info["macc"] = verdict.mean_per_class_accuracy(ref_logits, labels)

    results, preds = [], {"reference": [ref.spec.label(int(i)) for i in ref_pred]}
    specs = []                       # each artifact's spec, as its session read it
    with tempfile.TemporaryDirectory(prefix="edgecls-parity-") as work:
        for index, path in enumerate(_progress(list(artifacts), progress)):
            session = first if index == 0 and first is not None else opener(path)
            with session:
                spec = session.spec
                res, cand_logits = _compare(session, pixels, ref_logits, labels, max_drop,
                                            digests, groups)
            specs.append((Path(path), spec))
            preds[res.name] = [spec.label(int(i)) for i in cand_logits.argmax(1)]
            results.append(res)
        # once every artifact is read: an FP32 ONNX export among them may come after the
        # INT8 one it serves
        for res, (path, spec) in zip(results, specs):
            diagnose = get_format(spec.format).load_int8_diagnostics()
            if sqnr and spec.precision == "int8" and diagnose is not None:
                fp32 = next((p for p, s in specs if _fp32_export_of(s, spec)), None)
                res.worst_layers, res.worst_layers_note = _worst_layers(
                    diagnose, path, ref, pixels, Path(work), fp32)

    # the thumbnails: every disagreement where the reference is sure first (those are what a
    # user must look at), then the unsure ones, 24 in all
    sure = sorted({i for r in results for i in r.sure_disagreements})
    unsure = sorted({i for r in results for i in r.disagreements} - set(sure))
    disagreeing = (sure + unsure)[:24]
    thumbs = {i: encode_png(pixels[i]) for i in disagreeing}
    top2 = np.argsort(-ref_logits, axis=1)[:, :2]
    preds["reference_top2"] = [" / ".join(ref.spec.label(int(k)) for k in pair) for pair in top2]
    data_info["reference_margins"] = {str(i): float(ref_margin[i]) for i in disagreeing}
    report = ParityReport(data_info, ref_info, results, thumbs, preds)
    report.data["keys"] = [i.key for i in images.items]
    report.data["labels"] = labels.tolist() if labels is not None else None
    if out:
        report.write(out)
    return report


def _progress(items: list, progress: bool):
    if not progress:
        return items
    from rich.progress import track
    return track(items, description="running artifacts", transient=True)


def _batched(run, pixels: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([run(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])


def _latency_ms(session, x1: np.ndarray, runs: int = 10) -> float:
    session.run(x1)  # warm-up
    return float(np.median(timed_runs(lambda: session.run(x1), runs)) * 1000)


def _compare(session: Session, pixels, ref_logits, labels, max_drop, digests, groups):
    """One artifact against the reference on the verification images: its measures and its
    three-outcome verdict (edgecls.verdict), intervals resampling whole photos (`groups`)."""
    spec = session.spec
    logits = _batched(lambda p: session.run(to_model_input(p, spec)), pixels)
    agree = logits.argmax(1) == ref_logits.argmax(1)
    cos = metrics.cosine_similarity(ref_logits, logits)
    kl = metrics.kl_divergence(ref_logits, logits)
    abs_err = np.abs(logits - ref_logits).max(axis=1)
    tol = tolerance_for(spec.precision, max_drop)
    result = verdict.verdict(ref_logits, logits, tol, labels=labels, groups=groups)
    ids = verdict.group_ids(groups, len(agree))
    decisive = verdict.margins(ref_logits) >= verdict.DECISIVE
    recipe = spec.quantization or {}
    calib_ids = set(recipe.get("calibration_ids", []))
    selection_ids = set((recipe.get("search") or {}).get("selection_ids", []))
    res = ArtifactResult(
        name=Path(session.path).name, path=str(session.path), format=spec.format,
        precision=spec.precision, backend=session.backend, device=session.device_used,
        precision_used=str(session.precision_used or spec.precision), n=len(pixels),
        agreement=float(agree.mean()),
        agreement_ci=verdict.ratio_ci(agree, np.ones(len(agree)), ids),
        cosine_mean=float(cos.mean()), cosine_min=float(cos.min()), kl_mean=float(kl.mean()),
        max_abs=float(abs_err.max()), latency_ms=_latency_ms(session, to_model_input(pixels[:1], spec)),
        tolerance=tol.describe(labels is not None), passed=bool(result), failures=[],
        outcome=result.outcome, criteria=[c.to_dict() for c in result.criteria],
        strata=result.strata, decisive_agreement=result.criteria[0].value,
        decisive_agreement_ci=result.criteria[0].ci, kl_ci=result.criteria[1].ci,
        top5_overlap=result.top5_overlap,
        disagreements=[int(i) for i in np.flatnonzero(~agree)],
        sure_disagreements=[int(i) for i in np.flatnonzero(~agree & decisive)],
        sample_abs_error=[float(e) for e in abs_err],
        photo_shares=verdict.photo_shares(kl, agree, groups),
        calibration_overlap=sum(d in calib_ids for d in digests),
        selection_overlap=sum(d in selection_ids for d in digests))
    if labels is not None:
        ref_hits = metrics.topk_hits(ref_logits, labels, 1)
        hits = metrics.topk_hits(logits, labels, 1)
        hits5 = metrics.topk_hits(logits, labels, 5)
        res.top1, res.top1_ci = float(hits.mean()), verdict.ratio_ci(hits, np.ones(len(hits)), ids)
        res.top5, res.top5_ci = float(hits5.mean()), verdict.ratio_ci(hits5, np.ones(len(hits)), ids)
        res.top1_drop = 100 * float(ref_hits.mean() - hits.mean())
        res.mcnemar_p = metrics.mcnemar_exact(ref_hits, hits)
        res.macc = verdict.mean_per_class_accuracy(logits, labels)
    res.failures = [c.describe() for c in result.criteria if c.outcome == verdict.FAIL]
    res.undecided = [c.describe() for c in result.criteria if c.outcome == verdict.INCONCLUSIVE]
    if res.calibration_overlap:
        log.warning("%s: %d validation image(s) were used to calibrate it", res.name,
                    res.calibration_overlap)
    if res.selection_overlap:
        log.warning("%s: %d validation image(s) chose its INT8 recipe: its figures on them are "
                    "optimistic", res.name, res.selection_overlap)
    return res, logits


# -- where INT8 goes wrong ---------------------------------------------------------------------
def _fp32_export_of(fp32: ModelSpec, other: ModelSpec) -> bool:
    """Whether `fp32` is an FP32 ONNX export of the model `other` came from: the same source
    and weights, fed the same input (what the INT8 diagnostics measure against is ONNX)."""
    return (fp32.format == "onnx" and fp32.precision == "fp32" and fp32.reference is not None
            and fp32.reference == other.reference
            and (fp32.input_size, fp32.channels) == (other.input_size, other.channels))


def _worst_layers(diagnose, path: str | Path, ref, pixels: np.ndarray, work: Path,
                  fp32: Path | None = None) -> tuple[list[dict[str, Any]], str]:
    """The tensors of an INT8 artifact with the lowest SQNR against the FP32 model, named by
    the torch module they came from, and the method that measured them (the format table's
    int8_diagnostics). The FP32 model is `fp32`, an FP32 ONNX export of the same model
    among the compared artifacts, else the reference exported to ONNX (EfficientNet-Lite0:
    19 s of the 65 s a parity run of the demo's three ONNX artifacts took, AMD EPYC)."""
    if fp32 is None and not ref.has_fp32_onnx:
        return [], "needs the FP32 model the artifact came from"
    try:
        return diagnose(Path(path), fp32 or ref.fp32_onnx(work), ref.spec,
                        pixels[:SQNR_IMAGES], WORST_LAYERS)
    except Exception as e:  # diagnostics must never hide the parity result itself
        log.warning("SQNR diagnostics unavailable for %s: %s", path, first_line(e))
        return [], f"unavailable: {type(e).__name__}: {first_line(e, 120)}"
