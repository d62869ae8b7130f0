"""Choose an INT8 recipe by measurement, for the machine (or target) at hand.

An INT8 export tries the target's recipe first. When it misses its tolerance on held-out
images, the backend's remedies are applied one layer at a time, in the order the backend
ranks them (saturating layers first, then the layers most sensitive to quantization), and
every candidate is measured again: changing one layer moves the Q/DQ placement of its
neighbours, so nothing is assumed additive. Of the candidates that meet the tolerance, the
fastest on this machine wins (timed against the FP32 artifact in the same run); when none
does, the most accurate one is kept and the export says so.

A backend takes part through a Tuner (edgecls.backends.recipes): its INT8 exporter returns
one, and export_int8() below runs it.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgecls import verdict
from edgecls.errors import one_line
from edgecls.backends.recipes import HeldOut, Recipe, Remedy, Tuner  # noqa: F401  (re-exported)
from edgecls.formats import open_session
from edgecls.timing import in_subprocess

log = logging.getLogger("edgecls")

#: most layers one remedy may change before the search gives up on it
MAX_STEPS = 12


@dataclass
class Trial:
    recipe: Recipe
    path: Path
    agreement: float
    kl: float
    passed: bool
    top1_drop: float | None = None              # points, with labels
    latency_ms: float | None = None
    speedup: float | None = None                # FP32 latency / this latency

    def row(self) -> dict[str, Any]:
        return {"recipe": self.recipe.label, "changed": [list(c) for c in self.recipe.changed],
                "agreement": round(self.agreement, 4),
                "kl": round(self.kl, 5), "top1_drop": self.top1_drop, "passed": self.passed,
                "latency_ms": self.latency_ms, "speedup_vs_fp32": self.speedup}


@dataclass
class Outcome:
    chosen: Trial
    trials: list[Trial]
    reason: str
    fp32_latency_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    def record(self, held_out: HeldOut, tolerance: str) -> dict[str, Any]:
        """What the artifact's spec keeps about the search."""
        # labels repeat (a remedy tried on one layer, undone, then on another: "float x1"
        # twice), so the chosen candidate is also named by its place in the list
        return {"chosen": self.chosen.recipe.label, "reason": self.reason,
                "chosen_index": self.trials.index(self.chosen),
                "tolerance": tolerance, "selected_on": f"{held_out.name} ({len(held_out)} images)",
                "selection_ids": held_out.ids(),
                "fp32_latency_ms": self.fp32_latency_ms,
                "candidates": [t.row() for t in self.trials]}


def export_int8(tuner: Tuner, source, calibration, out: Path, *, search: bool = True) -> Outcome | None:
    """The INT8 export of a CPU backend: measure the target's recipe on held-out images and,
    when it misses, search (unless `search` is False); write the chosen recipe to `out`. The
    artifact's spec records the target, every candidate, and why the winner won."""
    held_out = source.held_out(calibration) if tuner.measures_target else None
    if held_out is None:
        why = ("this CPU cannot compute the target's INT8 numbers, so the recipe is the "
               "target's, unmeasured" if not tuner.measures_target else
               "no selection images to measure recipes on (pass --select DIR, or more --calib "
               "images than --calib-size)" if source.spec.trained
               else "random weights (--weights none): nothing to measure")
        log.info("INT8 recipe not measured: %s", why)
        tuner.build(tuner.bases()[0], out, {"searched": False, "why": why})
        return None
    tolerance = source.tolerance(held_out)
    log.info("INT8 recipes chosen on the selection images %s (%d images, %s):", held_out.name,
             len(held_out), tolerance.describe(held_out.labels is not None))
    with tempfile.TemporaryDirectory(prefix="edgecls-search-") as work:
        outcome = run(tuner, held_out, tolerance, Path(work), fp32_artifact=source.onnx(),
                      search=search)
        print_trials(outcome)
        record = outcome.record(held_out, tolerance.describe(held_out.labels is not None))
        record["measured_with"] = dict(tuner.session_options)
        tuner.keep(outcome.chosen.path, out, record)     # the very artifact that was measured
    return outcome


def run(tuner: Tuner, held_out: HeldOut, tolerance, work: Path, *,
        fp32_artifact: Path | None = None, search: bool = True) -> Outcome:
    """Build, measure and choose; candidates are written into `work` (the caller's temporary
    folder), the chosen one included. `tolerance` is a verdict.Tolerances;
    `fp32_artifact` (any format) is timed beside the candidates for the speed-up column."""
    trials: list[Trial] = []

    def attempt(recipe: Recipe) -> Trial:
        path = work / f"candidate{len(trials)}{tuner.suffix}"
        tuner.build(recipe, path)
        trial = _score(tuner, recipe, path, held_out, tolerance)
        trials.append(trial)
        log.info("  %-48s agreement %5.1f%%  KL %.4f  %s", recipe.label,
                 100 * trial.agreement, trial.kl, "meets" if trial.passed else "misses")
        return trial

    bases = [attempt(r) for r in tuner.bases()]
    if search and not any(t.passed for t in bases):
        best = _remedy(tuner, min(bases, key=lambda t: t.kl), attempt)
        if not best.passed:      # whole-recipe alternatives, e.g. NNCF's accuracy control
            for recipe in getattr(tuner, "fallbacks", lambda *a: [])(best.recipe, tolerance):
                if attempt(recipe).passed:
                    break
    return _time_and_choose(trials, tuner, fp32_artifact)


def _remedy(tuner: Tuner, start: Trial, attempt: Callable[[Recipe], Trial]) -> Trial:
    """Each remedy in turn, one ranked layer at a time, keeping a change only when it lowers
    KL (a change that makes things worse is measured, logged and undone). The best trial."""
    best = start
    for remedy in tuner.remedies(start.recipe):
        for layer in list(remedy.rank())[:MAX_STEPS]:
            candidate = best.recipe.with_layer(remedy, layer)
            try:
                trial = attempt(candidate)
            except Exception as e:   # e.g. XNNPACK refuses a float conv between quantized ones
                log.warning("  %-48s not built: %s", candidate.label, one_line(e))
                continue
            if trial.kl < best.kl or trial.passed:
                best = trial
            if best.passed:
                return best
    return best


def _score(tuner: Tuner, recipe: Recipe, path: Path, held_out: HeldOut, tolerance) -> Trial:
    return Trial(recipe, path, *score(path, held_out, tolerance, tuner.session_options))


def score(path: Path, held_out: HeldOut, tolerance,
          options: dict[str, Any] | None = None) -> tuple[float, float, bool, float | None]:
    """(agreement, KL, meets, top-1 drop in points or None) of any artifact on the selection
    images, opened with session `options`: the parity verdict's measures (edgecls.verdict)
    as point estimates; `tolerance` is a verdict.Tolerances."""
    from edgecls.imaging.preprocess import to_model_input   # OpenCV: imaging.preprocess imports cv2

    with open_session(path, device="cpu", **(options or {})) as session:
        logits = np.concatenate([session.run(to_model_input(held_out.pixels[i:i + 16], session.spec))
                                 for i in range(0, len(held_out), 16)])
    m = verdict.measure(held_out.reference, logits, tolerance, held_out.labels)
    return m.agreement, m.kl, m.meets, m.top1_drop


@dataclass(frozen=True)
class Reasons:
    """Why choose() chose, in its caller's words (a backend's "recipes", `--to best`'s
    "candidates"): they are recorded in the artifact's spec."""
    fastest: str            # several met the tolerance; "{n}" stands for how many
    only: str               # one met it
    none_met: str           # none did: the lowest KL is kept
    # latencies within this factor of the fastest count as the same speed, and the closest to
    # FP32 of those is chosen (1.0: the fastest, full stop)
    same_speed: float = 1.0
    closest: str = ""       # several were about as fast: "{n}", "{m}" stand for the counts


#: the recipe search's words. Recipes that differ only in how the weights were made (rounded
#: to nearest or adaptively) are the same graph, timed once (_time); other near-ties in speed
#: are this machine's noise (10-30% on these shared machines), so within 10% of the fastest
#: the lower KL decides
RECIPE_REASONS = Reasons("the fastest of {n} recipes that met the tolerance",
                         "the only recipe that met the tolerance",
                         "no recipe met the tolerance: the most accurate one (lowest KL) is kept",
                         same_speed=1.10,
                         closest="the closest to FP32 of the {m} of {n} recipes that met the "
                                 "tolerance within 10% of the fastest's latency")


def choose(trials: Sequence[Trial], reasons: Reasons, fp32_ms: float | None) -> Outcome:
    """The one rule, for recipes and for `--to best`'s artifacts alike: the fastest of the
    trials that met the tolerance (those are timed; with `reasons.same_speed`, the lowest KL
    of those about as fast as the fastest), else the most accurate (lowest KL)."""
    passing = [t for t in trials if t.passed]
    if not passing:
        return Outcome(most_accurate(trials), list(trials), reasons.none_met, fp32_ms)
    if len(passing) == 1:
        return Outcome(passing[0], list(trials), reasons.only, fp32_ms)

    def latency(t: Trial) -> float:
        return float("inf") if t.latency_ms is None else t.latency_ms

    fastest = min(passing, key=latency)
    about_as_fast = [t for t in passing if latency(t) <= latency(fastest) * reasons.same_speed]
    chosen = most_accurate(about_as_fast) if reasons.same_speed > 1 else fastest
    if chosen is fastest:
        reason = reasons.fastest.replace("{n}", str(len(passing)))
    else:
        reason = reasons.closest.replace("{m}", str(len(about_as_fast))).replace(
            "{n}", str(len(passing)))
    return Outcome(chosen, list(trials), reason, fp32_ms)


def most_accurate(trials: Sequence[Trial]) -> Trial:
    return min(trials, key=lambda t: t.kl)


def _time_and_choose(trials: Sequence[Trial], tuner: Tuner, fp32_artifact: Path | None) -> Outcome:
    """choose(), after timing what it chooses from: the trials that met the tolerance, else
    the most accurate one."""
    timed = [t for t in trials if t.passed] or [most_accurate(trials)]
    return choose(trials, RECIPE_REASONS, _time(timed, tuner, fp32_artifact))


def _time(trials: Sequence[Trial], tuner: Tuner, fp32_artifact: Path | None) -> float | None:
    """Batch-1 latency of the trials (and of the FP32 artifact), each alone in a fresh
    process: timed in this one, beside torch's and the other runtimes' thread pools, TFLite
    INT8 measured 0.68x ORT FP32 where alone it is 1.33x (EfficientNet-Lite0, AVX2 EPYC)."""
    def p50(path: Path) -> float:
        return in_subprocess(path, batch=1, seconds=0.5, options=tuner.session_options).p50_ms

    fp32_ms = p50(fp32_artifact) if fp32_artifact else None
    # recipes that build the same graph (differing only in how the weights were rounded) are
    # timed once: timed apart, EfficientNet-Lite1's two starts measured 3.95 and 4.80 ms on
    # this shared machine, and the noise, not the weights, would have chosen
    by_graph: dict[str, float] = {}
    for trial in trials:
        graph = trial.recipe.graph
        if graph not in by_graph:
            by_graph[graph] = p50(trial.path)
        ms = by_graph[graph]
        trial.latency_ms = round(ms, 3)
        trial.speedup = round(fp32_ms / ms, 2) if fp32_ms else None
    return round(fp32_ms, 3) if fp32_ms else None


def print_trials(outcome: Outcome, console: Any = None,
                 title: str = "INT8 recipes tried on this machine") -> None:
    """The candidates table an INT8 export (and `--to best`) prints."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(stderr=True, width=max(Console(stderr=True).width, 120))
    table = Table("recipe", "agreement", "KL", "drop pt", "ms", "vs FP32", "outcome",
                  title=title)
    for t in outcome.trials:
        mark = "[bold green]chosen[/]" if t is outcome.chosen else ("met" if t.passed else "[red]missed[/]")
        table.add_row(t.recipe.label, f"{100 * t.agreement:.1f}%", f"{t.kl:.4f}",
                      "-" if t.top1_drop is None else f"{t.top1_drop:+.2f}",
                      "-" if t.latency_ms is None else f"{t.latency_ms:.2f}",
                      "-" if t.speedup is None else f"{t.speedup:.2f}x", mark)
    console.print(table)
    console.print(f"chosen: {outcome.chosen.recipe.label} ({outcome.reason})")


__all__ = ["Recipe", "Remedy", "Tuner", "HeldOut", "Trial", "Outcome", "Reasons", "export_int8",
           "run", "choose", "score", "print_trials"]
