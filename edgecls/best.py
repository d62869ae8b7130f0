"""`edgecls export MODEL --to best`: the fastest artifact for THIS machine within tolerance.

The INT8 recipe search (edgecls.search) one level up: the candidates are whole artifacts,
one per installed backend that runs on this CPU (each INT8 one already the recipe its
backend's search chose here). Every candidate is ranked on the same selection images with
the same tolerance (verification.tolerance_for), and timed alone in a fresh process
(edgecls.timing) next to ONNX Runtime FP32 of the same model. The fastest within tolerance
is then judged on the verification images, which chose nothing (--data; the verification
photos by default with the built-in photos): pass or inconclusive, it is written, its spec
recording every candidate, why it won and its verdict (notes["best"]); fail, nothing is.

    edgecls export efficientnet_lite0 --to best --int8 --calib photos --max-drop 1
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from edgecls import hardware
from edgecls.errors import ParityFailedError, UnsupportedOptionError, one_line
from edgecls.exporting import DEFAULT_CALIB_SIZE, check_output, export, judge, planned_output
from edgecls.formats import FORMATS, Format, get_format
from edgecls.imaging.datasets import CalibrationSet, selection_for, verification_for
from edgecls.io import atomic_paths
from edgecls.search import Outcome, Reasons, Recipe, Trial, choose, print_trials, score
from edgecls.sources import SourceRequest, kind_of, resolve
from edgecls.timing import in_subprocess
from edgecls.verdict import FAIL, INCONCLUSIVE
from edgecls.verification import tolerance_for

log = logging.getLogger("edgecls")

BEST = "best"
#: timing per candidate, in seconds (each in its own process)
SECONDS = 2.0


def candidates(precision: str, names: list[str] | None = None) -> list[Format]:
    """The formats (of `names`, or all) that can make `precision`, run on this CPU, are
    installed, and can carry the record of the choice in their spec."""
    found = []
    for fmt in FORMATS.values():
        if not (fmt.exporter and precision in fmt.precisions and "cpu" in fmt.devices
                and fmt.available() and (names is None or fmt.name in names)):
            continue
        try:
            fmt.load_exporter()
            rewrites = fmt.load_container().REWRITES_SPEC
        except UnsupportedOptionError:
            continue
        except Exception as e:     # an exporter (or a container) that does not import here,
            # or a third-party container short of the Container protocol, is not a candidate
            log.info("--to best: %s left out (%s)", fmt.name, one_line(e))
            continue
        if rewrites:
            found.append(fmt)
    return found


def export_best(model: Any, out: str | Path | None = None, *, precision: str = "fp32",
                weights: str = "pretrained", num_classes: int | None = None,
                labels: list[str] | None = None, calib: Any = None, calib_size: int | None = None,
                options: dict[str, Any] | None = None, spec: Any = None,
                preprocessing: dict[str, Any] | None = None,
                model_kwargs: dict[str, Any] | None = None, trust_remote_code: bool = False,
                formats: list[str] | None = None, threads: int | None = None,
                seconds: float = SECONDS, force: bool = False, **_: Any) -> Path:
    """Export the model source `model` (anything export() takes) with every candidate
    backend, and write the fastest that meets the tolerance to `out` (default
    out/<model>[.<precision>]<suffix of the winner>). As the winner is not known before the
    race, every candidate's output is checked first: one that exists is refused unless
    `force`, one that is an input always."""
    given = dict(options or {})
    select, data, max_drop = (given.pop(k, None) for k in ("select", "data", "max_drop"))
    starts = kind_of(model).input       # an ONNX file cannot become a TFLite model
    chosen = [f for f in candidates(precision, formats) if starts in f.starts_from]
    if not chosen:
        raise UnsupportedOptionError(f"--to best: no installed backend can make {precision} "
                                     "artifacts from this model that run on this CPU "
                                     "(`edgecls formats`)")
    if precision == "int8" and calib is None:
        raise UnsupportedOptionError("--int8 needs calibration images: --calib DIR "
                                     "(or a built-in set: photos, digits)")
    source_args = dict(weights=weights, num_classes=num_classes, labels=labels, spec=spec,
                       preprocessing=preprocessing, model_kwargs=model_kwargs,
                       trust_remote_code=trust_remote_code)
    resolved = resolve(model, SourceRequest.of(**source_args))
    base = resolved.spec
    for fmt in chosen:          # before calibrating and racing: the winner's files may be any
        winner_out = planned_output(out, fmt, base, precision, format_decides_suffix=True)
        check_output(winner_out, fmt, force=force, inputs=(model, weights, calib, select, data))
    calibration = (CalibrationSet.from_source(calib, base, size=calib_size or DEFAULT_CALIB_SIZE)
                   if precision == "int8" else None)
    # FP32/FP16 have no calibration source: the built-in photos' roles then
    images_from = calib if calibration is not None else "photos"
    with tempfile.TemporaryDirectory(prefix="edgecls-best-") as tmp:
        work = Path(tmp)
        source = resolved.source(work)
        source.max_drop = max_drop
        source.selection = selection_for(select, images_from)
        source.verification = verification_for(data, images_from)
        held_out = source.held_out(calibration)
        tolerance = (tolerance_for(precision, max_drop)
                     if held_out is not None else None)
        baseline = in_subprocess(source.onnx(), threads=threads, seconds=seconds)
        trials, failed = [], []
        for fmt in chosen:
            own = {k: v for k, v in given.items() if k in fmt.options.names()}
            if precision == "int8":
                own.update({"select": select, "max_drop": max_drop})
            path = work / fmt.name / f"{base.name}{fmt.suffixes[0]}"
            try:   # each candidate resolves the source again: its spec records the source
                # INT8 candidates are judged below, the winner alone on verification images
                export(model, to=fmt.name, out=path, precision=precision, calib=calibration,
                       options=own, check=precision != "int8", **source_args)
                trials.append(_trial(fmt, path, held_out, tolerance, baseline.p50_ms,
                                     threads, seconds))
            except Exception as e:    # one backend failing leaves the others in the race
                failed.append(f"{fmt.name}: {one_line(e)}")
                log.warning("--to best: %s %s failed: %s", fmt.name, precision, failed[-1])
        if not trials:
            raise UnsupportedOptionError(f"--to best: every candidate failed ({'; '.join(failed)})")
        outcome = choose(trials, _reasons(tolerance), round(baseline.p50_ms, 3))
        where = f"selection images {held_out.name}, " if held_out is not None else ""
        print_trials(outcome, title=f"--to best: {precision} artifacts ranked on the "
                                    f"{where}{hardware.cpu().summary()}")
        if not outcome.chosen.passed:
            raise ParityFailedError(f"--to best: no candidate met {tolerance.describe()} on the "
                                    "selection images; nothing was written")
        verdict = _verify(outcome.chosen, source)
        return _write(outcome, held_out, tolerance, failed, base, precision, out, force, verdict)


def _verify(chosen: Trial, source) -> dict[str, Any] | None:
    """The winner's verdict on the verification images (which chose nothing): printed,
    recorded in its spec, and fatal when it fails - a fail means the selection images
    misled the race, and nothing is written. None without verification images or with
    random weights (nothing to judge)."""
    if source.verification is None or not source.spec.trained:
        log.warning("--to best: no verification images (--data): the winner is not judged "
                    "beyond the selection images; judge it with `edgecls parity`")
        return None
    options = (chosen.recipe.settings or {}).get("session_options") or {}
    report = judge({chosen.recipe.label: chosen.path}, source, source.verification,
                   options=options)
    result = report.results[0]
    if result.outcome == FAIL:
        raise ParityFailedError(f"--to best: the winner {chosen.recipe.label} failed on the "
                                f"verification images: {'; '.join(result.failures)}; nothing "
                                "was written")
    if result.outcome == INCONCLUSIVE:
        log.warning("--to best: the winner's verdict on the verification images is "
                    "inconclusive: %s", "; ".join(result.undecided))
    return {"outcome": result.outcome, "images": f"{report.data['name']} ({result.n} images)",
            "decisive_agreement": result.decisive_agreement, "kl": result.kl_mean}


def _trial(fmt: Format, path: Path, held_out, tolerance, fp32_ms: float, threads, seconds) -> Trial:
    made = fmt.read_spec(path)
    search = (made.quantization or {}).get("search", {})
    options = made.measured_with()
    label = f"{fmt.name} {made.precision}" + (f": {search['chosen']}" if search.get("chosen") else "")
    if held_out is None:          # random weights: nothing to judge, speed alone decides
        agree, kl, passed, drop = float("nan"), float("nan"), True, None
    else:
        agree, kl, passed, drop = score(path, held_out, tolerance, options)
    timing = in_subprocess(path, threads=threads, seconds=seconds, options=options)
    return Trial(Recipe(label, {"format": fmt.name, "session_options": options}), path, agree,
                 kl, passed, drop, round(timing.p50_ms, 3), round(fp32_ms / timing.p50_ms, 2))


def _reasons(tolerance) -> Reasons:
    within = f"within {tolerance.describe()}" if tolerance else "(random weights: not judged)"
    return Reasons("the fastest of {n} candidates " + within + " on this machine",
                   f"the only candidate {within}", "no candidate met the tolerance")


def _write(outcome: Outcome, held_out, tolerance, failed: list[str], base, precision: str,
           out: str | Path | None, force: bool = False,
           verified: dict[str, Any] | None = None) -> Path:
    fmt = get_format(outcome.chosen.recipe.settings["format"])
    out = planned_output(out, fmt, base, precision, format_decides_suffix=True)
    spec = fmt.read_spec(outcome.chosen.path)
    record = (outcome.record(held_out, tolerance.describe()) if held_out is not None else
              {"chosen": outcome.chosen.recipe.label, "reason": outcome.reason,
               "fp32_latency_ms": outcome.fp32_latency_ms,
               "candidates": [t.row() for t in outcome.trials]})
    spec.notes = {**spec.notes, "best": {**record, "machine": hardware.cpu().summary(),
                                         "failed": failed, "fp32_baseline": "onnxruntime fp32",
                                         "verification": verified}}
    finals = [out] + [out.with_suffix(s) for s in fmt.companions]
    with atomic_paths(*finals, overwrite=force) as temps:
        fmt.copy_with_spec(outcome.chosen.path, temps[0], spec)
    log.info("--to best: wrote %s (%s)", out, outcome.reason)
    return out


__all__ = ["BEST", "candidates", "export_best"]
