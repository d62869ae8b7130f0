"""The parity verdict as a test with three outcomes: pass, fail, inconclusive.

Two facts shape it (measured on EfficientNet-Lite0's demo artifacts, see the README):

- Views of one photo are not independent samples. Every confidence interval here is a
  *cluster* bootstrap: whole groups (source photos) are resampled, so forty crops of one
  photo count as what they are, one photo seen forty times.
- Top-1 agreement on inputs where the reference itself is unsure (its top-1 minus top-2
  probability, the *margin*, is small) measures the input, not the artifact: any artifact
  flips some of those. So the label-free verdict looks at agreement on *decisive* inputs
  (margin >= DECISIVE) and at the distance between the output distributions (mean KL), and
  reports agreement per margin stratum beside them.

Each criterion is decided from its interval: *pass* when the whole interval is on the good
side of the tolerance, *fail* when the whole interval is on the bad side, *inconclusive*
otherwise, with an estimate of how many images would likely decide it. A report is a pass
when every criterion passes, a fail when any fails, and inconclusive otherwise.

Everything here works on plain numpy arrays, so each number can be checked by hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from edgecls.metrics import kl_divergence, log_softmax, topk_hits

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
OUTCOMES = (PASS, FAIL, INCONCLUSIVE)
#: a criterion measured on no input (e.g. no input where the reference is decisive: an
#: untrained model, or a set of ambiguous images). It decides nothing either way; the other
#: criteria decide, and the report says so.
NOT_APPLICABLE = "n/a"
#: `edgecls parity` exit status per outcome (2 stays the one for user errors)
EXIT_STATUS = {PASS: 0, FAIL: 1, INCONCLUSIVE: 3}
#: the reference's top-1 minus top-2 probability from which an input counts as decisive
DECISIVE = 0.1
#: the margin strata agreement is reported for
STRATA = (0.0, 0.05, 0.1, 0.2)
N_BOOT = 2000
#: beyond this many images "would decide it" means the estimate sits on the tolerance
MANY_IMAGES = 1_000_000
LEVEL = 0.95


# -- the measures -----------------------------------------------------------------------------
def margins(logits: np.ndarray) -> np.ndarray:
    """Per input, the top-1 minus the top-2 softmax probability (1.0 for one class)."""
    p = np.exp(log_softmax(np.asarray(logits, np.float64)))
    if p.shape[1] < 2:
        return np.ones(len(p))
    top2 = np.sort(p, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def top5_overlap(ref_logits: np.ndarray, cand_logits: np.ndarray, k: int = 5) -> np.ndarray:
    """Per input, the share of the reference's top-k classes that are in the candidate's."""
    k = min(k, ref_logits.shape[1])
    ref = np.argsort(-ref_logits, axis=1, kind="stable")[:, :k]
    cand = np.argsort(-cand_logits, axis=1, kind="stable")[:, :k]
    return np.array([len(set(a) & set(b)) / k for a, b in zip(ref, cand)])


def mean_per_class_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """mAcc: top-1 accuracy of each class present in `labels`, averaged over those classes."""
    hits = logits.argmax(1) == labels
    classes = np.unique(labels)
    return float(np.mean([hits[labels == c].mean() for c in classes])) if len(classes) else math.nan


# -- cluster bootstrap --------------------------------------------------------------------------
def group_ids(groups: Sequence[Any] | None, n: int) -> np.ndarray:
    """Integer ids 0..G-1 for the group (source photo) of each input; every input its own
    group when `groups` is None."""
    if groups is None:
        return np.arange(n)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group keys for {n} inputs")
    _, ids = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    return ids.reshape(-1)


def photo_shares(kl: np.ndarray, agree: np.ndarray, groups: Sequence[Any] | None,
                 count: int = 5) -> list[dict[str, Any]]:
    """The `count` photos (groups of views, as group_ids() reads them; each image its own
    where `groups` is None) that make the largest share of an artifact's summed KL, each with
    its images, mean KL, share of the total and top-1 agreement. A mean over many images can
    be one photo's doing (EfficientNet-Lite2's ExecuTorch INT8: one of the nine verification
    photos, a grayscale micrograph, held 66% of the KL); the parity verdict resamples whole
    photos, and this says which."""
    ids = group_ids(groups, len(kl))
    names = (np.unique([str(g) for g in groups]) if groups is not None
             else [str(i) for i in range(len(kl))])
    images = np.bincount(ids)
    summed = np.bincount(ids, weights=kl)
    agreeing = np.bincount(ids, weights=np.asarray(agree, dtype=np.float64))
    total = float(summed.sum())
    rows = [{"photo": str(names[g]), "images": int(images[g]),
             "kl_mean": float(summed[g] / images[g]),
             "kl_share": float(summed[g]) / total if total > 0 else 0.0,
             "agreement": float(agreeing[g] / images[g])} for g in range(len(images))]
    rows.sort(key=lambda r: -r["kl_share"])
    return rows[:count]


def ratio_ci(numerator: np.ndarray, denominator: np.ndarray, groups: np.ndarray,
             n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """Percentile cluster-bootstrap interval of sum(numerator) / sum(denominator), resampling
    whole groups. A mean is numerator=values, denominator=1; a mean over a subset is
    numerator=values*mask, denominator=mask. NaNs when the denominator is empty."""
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    num = np.bincount(groups, numerator, minlength=n_groups)
    den = np.bincount(groups, denominator, minlength=n_groups)
    if den.sum() == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_groups, size=(n_boot, n_groups))
    tot_den = den[picks].sum(axis=1)
    stats = num[picks].sum(axis=1)[tot_den > 0] / tot_den[tot_den > 0]
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


# -- one criterion -----------------------------------------------------------------------------
@dataclass
class Criterion:
    """One measure with its interval against its tolerance. `higher_is_better` says on which
    side of the tolerance a pass lies (agreement: above; KL and accuracy drop: below)."""
    name: str
    value: float
    ci: tuple[float, float]
    tolerance: float
    higher_is_better: bool
    n: int                          # inputs the measure was computed on
    outcome: str = INCONCLUSIVE
    images_to_decide: int | None = None

    def __post_init__(self) -> None:
        if self.n == 0:
            self.outcome = NOT_APPLICABLE
            return
        self.outcome = decide(self.ci, self.tolerance, self.higher_is_better)
        if self.outcome == INCONCLUSIVE:
            self.images_to_decide = images_to_decide(self.value, self.ci, self.tolerance, self.n)

    def describe(self) -> str:
        side = ">=" if self.higher_is_better else "<="
        if self.outcome == NOT_APPLICABLE:
            return f"{self.name} {side} {self.tolerance:g}: n/a (measured on no input)"
        text = (f"{self.name} {self.value:.4g} [{self.ci[0]:.4g}, {self.ci[1]:.4g}] "
                f"{side} {self.tolerance:g}: {self.outcome}")
        if self.images_to_decide:
            text += f" (about {self.images_to_decide} images would likely decide it)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "ci": list(self.ci),
                "tolerance": self.tolerance, "higher_is_better": self.higher_is_better,
                "n": self.n, "outcome": self.outcome, "images_to_decide": self.images_to_decide}


def decide(ci: tuple[float, float], tolerance: float, higher_is_better: bool) -> str:
    """pass / fail / inconclusive from where the interval lies against the tolerance."""
    low, high = ci
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    if higher_is_better:
        return PASS if low >= tolerance else FAIL if high < tolerance else INCONCLUSIVE
    return PASS if high <= tolerance else FAIL if low > tolerance else INCONCLUSIVE


def images_to_decide(value: float, ci: tuple[float, float], tolerance: float, n: int) -> int | None:
    """Roughly how many inputs would narrow the interval enough to put it on one side of the
    tolerance, if the point estimate held: a half-width shrinks as 1/sqrt(n). None when the
    estimate sits on the tolerance (no realistic sample size decides it)."""
    gap = abs(value - tolerance)
    half = (ci[1] - ci[0]) / 2
    if n <= 0 or gap < 1e-12 or math.isnan(half):
        return None
    needed = int(math.ceil(n * (half / gap) ** 2))
    return needed if needed <= MANY_IMAGES else None


# -- the verdict -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerances:
    """What an artifact must meet. Without labels: agreement with the reference on decisive
    inputs, and mean KL(reference || artifact). With labels, also the top-1 drop in points
    (non-inferiority)."""
    min_decisive_agreement: float
    max_kl: float
    max_top1_drop: float | None = None

    def describe(self, labelled: bool = False) -> str:
        parts = [f"agreement >= {self.min_decisive_agreement:.1%} where margin >= {DECISIVE:g}",
                 f"KL <= {self.max_kl:g}"]
        if labelled and self.max_top1_drop is not None:
            parts.append(f"top-1 drop <= {self.max_top1_drop:g} pt")
        return ", ".join(parts)


#: per precision; why each value is what it is: the README's "Parity verdict" section
TOLERANCES = {"fp32": Tolerances(0.995, 0.005, 0.3),
              "fp16": Tolerances(0.995, 0.005, 0.3),
              "int8": Tolerances(0.99, 0.02, 1.0)}


def tolerances_for(precision: str, max_drop: float | None = None) -> Tolerances:
    """The precision's tolerances; `max_drop` (points, --max-drop) replaces the top-1 drop
    allowed with labels and, for unlabelled data, the decisive disagreement allowed."""
    base = TOLERANCES.get(precision, TOLERANCES["fp32"])
    if max_drop is None:
        return base
    return Tolerances(1.0 - max_drop / 100.0, base.max_kl, max_drop)


@dataclass
class Measured:
    """The verdict's measures as point estimates, for ranking candidates on selection images
    (few photos: intervals would leave nearly everything inconclusive)."""
    agreement: float
    decisive_agreement: float
    kl: float
    top1_drop: float | None                     # points, with labels
    meets: bool                                 # every point estimate within its tolerance


def measure(ref_logits: np.ndarray, cand_logits: np.ndarray, tolerances: Tolerances,
            labels: np.ndarray | None = None) -> Measured:
    agree = ref_logits.argmax(1) == cand_logits.argmax(1)
    decisive = margins(ref_logits) >= DECISIVE
    decisive_agreement = float(agree[decisive].mean()) if decisive.any() else float(agree.mean())
    kl = float(kl_divergence(ref_logits, cand_logits).mean())
    drop = None
    if labels is not None:
        drop = 100 * float(topk_hits(ref_logits, labels, 1).mean()
                           - topk_hits(cand_logits, labels, 1).mean())
    meets = (decisive_agreement >= tolerances.min_decisive_agreement and kl <= tolerances.max_kl
             and (drop is None or tolerances.max_top1_drop is None
                  or drop <= tolerances.max_top1_drop))
    return Measured(float(agree.mean()), decisive_agreement, kl, drop, meets)


@dataclass
class Verdict:
    outcome: str
    criteria: list[Criterion]
    strata: list[dict[str, Any]] = field(default_factory=list)   # agreement by margin
    top5_overlap: float | None = None
    top5_overlap_ci: tuple[float, float] | None = None
    groups: int = 0

    def __bool__(self) -> bool:
        return self.outcome == PASS

    def reasons(self) -> list[str]:
        """The criteria that did not pass, as lines for the report."""
        return [c.describe() for c in self.criteria if c.outcome != PASS]

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "criteria": [c.to_dict() for c in self.criteria],
                "strata": self.strata, "top5_overlap": self.top5_overlap,
                "top5_overlap_ci": list(self.top5_overlap_ci or ()), "groups": self.groups}


def combine(outcomes: Sequence[str]) -> str:
    """fail if any fails, pass if all pass, else inconclusive; a criterion that is not
    applicable counts for neither (but all of them n/a is no pass)."""
    outcomes = [o for o in outcomes if o != NOT_APPLICABLE]
    if FAIL in outcomes:
        return FAIL
    return PASS if outcomes and all(o == PASS for o in outcomes) else INCONCLUSIVE


def verdict(ref_logits: np.ndarray, cand_logits: np.ndarray, tolerances: Tolerances, *,
            labels: np.ndarray | None = None, groups: Sequence[Any] | None = None,
            seed: int = 0) -> Verdict:
    """The three-outcome verdict of one candidate against the reference on the same inputs.
    `groups` names the source photo of each input (the unit the bootstrap resamples)."""
    ref_logits, cand_logits = np.asarray(ref_logits), np.asarray(cand_logits)
    n = len(ref_logits)
    ids = group_ids(groups, n)
    ones = np.ones(n)
    agree = (ref_logits.argmax(1) == cand_logits.argmax(1)).astype(np.float64)
    margin = margins(ref_logits)
    kl = kl_divergence(ref_logits, cand_logits)

    strata = []
    for low in STRATA:
        mask = (margin >= low).astype(np.float64)
        count = int(mask.sum())
        strata.append({"min_margin": low, "n": count,
                       "agreement": float((agree * mask).sum() / count) if count else None,
                       "ci": list(ratio_ci(agree * mask, mask, ids, seed=seed))})
    decisive = (margin >= DECISIVE).astype(np.float64)
    n_decisive = int(decisive.sum())
    criteria = [
        Criterion(f"agreement where the reference's margin >= {DECISIVE:g}",
                  float((agree * decisive).sum() / n_decisive) if n_decisive else math.nan,
                  ratio_ci(agree * decisive, decisive, ids, seed=seed),
                  tolerances.min_decisive_agreement, True, n_decisive),
        Criterion("mean KL(reference || artifact)", float(kl.mean()),
                  ratio_ci(kl, ones, ids, seed=seed), tolerances.max_kl, False, n)]
    if labels is not None and tolerances.max_top1_drop is not None:
        labels = np.asarray(labels)
        drop = 100 * (topk_hits(ref_logits, labels, 1).astype(np.float64)
                      - topk_hits(cand_logits, labels, 1))
        criteria.append(Criterion("top-1 drop (points)", float(drop.mean()),
                                  ratio_ci(drop, ones, ids, seed=seed),
                                  tolerances.max_top1_drop, False, n))
    overlap = top5_overlap(ref_logits, cand_logits)
    return Verdict(combine([c.outcome for c in criteria]), criteria, strata,
                   float(overlap.mean()), ratio_ci(overlap, ones, ids, seed=seed),
                   int(ids.max()) + 1 if n else 0)


__all__ = ["PASS", "FAIL", "INCONCLUSIVE", "OUTCOMES", "NOT_APPLICABLE", "EXIT_STATUS", "DECISIVE", "STRATA", "TOLERANCES",
           "Tolerances", "tolerances_for", "Measured", "measure", "Criterion", "Verdict", "verdict", "decide", "combine", "margins",
           "top5_overlap", "mean_per_class_accuracy", "ratio_ci", "group_ids",
           "images_to_decide"]
