"""THE parity report model: the results, and the table every renderer shows - its columns are
defined here once; the terminal, Markdown and HTML renderers only lay them out."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from edgecls.verdict import DECISIVE, FAIL, INCONCLUSIVE, PASS, combine


@dataclass
class ArtifactResult:
    name: str
    path: str
    format: str
    precision: str
    backend: str
    device: str
    precision_used: str
    n: int
    agreement: float
    agreement_ci: tuple[float, float]
    cosine_mean: float
    cosine_min: float
    kl_mean: float
    max_abs: float
    latency_ms: float
    tolerance: str
    passed: bool                             # outcome == "pass"
    failures: list[str]                      # the criteria it fails
    outcome: str = PASS                      # pass | fail | inconclusive (edgecls.verdict)
    undecided: list[str] = field(default_factory=list)   # criteria neither met nor missed
    criteria: list[dict[str, Any]] = field(default_factory=list)
    strata: list[dict[str, Any]] = field(default_factory=list)   # agreement by ref margin
    decisive_agreement: float | None = None  # where the reference's margin >= DECISIVE
    decisive_agreement_ci: tuple[float, float] | None = None
    kl_ci: tuple[float, float] | None = None
    top5_overlap: float | None = None
    macc: float | None = None                # mean per-class accuracy, with labels
    sure_disagreements: list[int] = field(default_factory=list)  # the ones to look at
    top1: float | None = None
    top1_ci: tuple[float, float] | None = None
    top5: float | None = None
    top5_ci: tuple[float, float] | None = None
    top1_drop: float | None = None           # points, reference minus artifact
    mcnemar_p: float | None = None
    calibration_overlap: int = 0
    selection_overlap: int = 0          # images that also chose its INT8 recipe (spec's ids)
    worst_layers: list[dict[str, Any]] = field(default_factory=list)
    worst_layers_note: str = ""
    # the photos holding the largest shares of its KL (verdict.photo_shares): where it departs
    photo_shares: list[dict[str, Any]] = field(default_factory=list)
    disagreements: list[int] = field(default_factory=list)
    sample_abs_error: list[float] = field(default_factory=list, repr=False)


@dataclass
class ParityResults:
    """The data of a parity report; edgecls.report.ParityReport adds its renderers (the
    data never imports them)."""
    data: dict[str, Any]
    reference: dict[str, Any]
    results: list[ArtifactResult]
    thumbnails: dict[int, bytes] = field(default_factory=dict, repr=False)
    predictions: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def __bool__(self) -> bool:
        return self.outcome == PASS

    @property
    def outcome(self) -> str:
        """fail if any artifact fails, pass if every one passes, else inconclusive."""
        return combine([r.outcome for r in self.results])

    @property
    def failures(self) -> list[str]:
        return [f"{r.name}: {f}" for r in self.results for f in r.failures]

    @property
    def undecided(self) -> list[str]:
        return [f"{r.name}: {u}" for r in self.results for u in r.undecided]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": bool(self), "outcome": self.outcome, "data": self.data,
                "reference": self.reference,
                "results": [asdict(r) for r in self.results]}



# -- the table -----------------------------------------------------------------------------
def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def ci(interval: Any) -> str:
    return "" if not interval else f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def kl_cell(r: "ArtifactResult") -> str:
    return f"{r.kl_mean:.2g}" + ("" if not r.kl_ci else f" [{r.kl_ci[0]:.2g}, {r.kl_ci[1]:.2g}]")


#: how each outcome is shown in a table cell
OUTCOME_CELL = {PASS: "pass", FAIL: "FAIL", INCONCLUSIVE: "inconclusive"}


@dataclass(frozen=True)
class Column:
    key: str                                   # renderers style some by key (artifact, ok)
    header: str
    cell: Callable[[ArtifactResult], str]
    labelled_only: bool = False                # shown only when the data has labels
    align: str = "right"


COLUMNS = (
    Column("artifact", "artifact", lambda r: r.name, align="left"),
    Column("backend", "backend", lambda r: f"{r.backend}/{r.device}", align="left"),
    Column("precision", "prec", lambda r: r.precision_used),
    Column("top1", "top-1 % [95% CI]", lambda r: pct(r.top1) + ci(r.top1_ci), labelled_only=True),
    Column("top5", "top-5 %", lambda r: pct(r.top5), labelled_only=True),
    Column("drop", "drop pt", lambda r: f"{r.top1_drop:+.2f}", labelled_only=True),
    Column("mcnemar", "McNemar p", lambda r: f"{r.mcnemar_p:.3g}", labelled_only=True),
    Column("macc", "mAcc %", lambda r: pct(r.macc), labelled_only=True),
    Column("agreement", "agree % [95% CI]", lambda r: pct(r.agreement) + ci(r.agreement_ci)),
    Column("decisive", f"agree where margin>={DECISIVE:g} %",
           lambda r: pct(r.decisive_agreement) + ci(r.decisive_agreement_ci)),
    Column("top5_overlap", "top-5 overlap %", lambda r: pct(r.top5_overlap)),
    Column("kl", "KL [95% CI]", kl_cell),
    Column("cosine", "cos min", lambda r: f"{r.cosine_min:.4f}"),
    Column("max_abs", "max|Δ|", lambda r: f"{r.max_abs:.3g}"),
    Column("latency", "ms", lambda r: f"{r.latency_ms:.2f}"),
    Column("tolerance", "tolerance", lambda r: r.tolerance, align="left"),
    Column("ok", "verdict", lambda r: OUTCOME_CELL[r.outcome]),
)

def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


#: the lowest-SQNR tensors of an INT8 artifact: (header, cell of one worst_layers entry);
#: the method that measured them is the result's worst_layers_note
WORST_LAYER_COLUMNS = (("torch module", lambda w: w["module"]), ("op", lambda w: w["op"]),
                       ("tensor", lambda w: w["tensor"]),
                       ("kernel SQNR dB", lambda w: _db(w.get("kernel_sqnr_db"))),
                       ("simulated SQNR dB", lambda w: _db(w.get("simulated_sqnr_db", w["sqnr_db"]))))


#: the photos that hold most of an artifact's KL (ArtifactResult.photo_shares), shown for the
#: artifacts that did not pass: (header, cell of one entry)
PHOTO_SHARE_COLUMNS = (("photo", lambda p: p["photo"]), ("images", lambda p: str(p["images"])),
                       ("mean KL", lambda p: f"{p['kl_mean']:.2g}"),
                       ("share of the KL %", lambda p: pct(p["kl_share"])),
                       ("agree %", lambda p: pct(p["agreement"])))


#: the heading of that table ({name}: the artifact's, escaped by the renderer)
PHOTO_SHARE_HEADING = "Where {name} departs: the photos holding the largest shares of its KL"


def departs(r: ArtifactResult) -> bool:
    """Whether the report shows where `r` departs (its photo shares): it did not pass and its
    images come from more than one photo."""
    return r.outcome != PASS and len(r.photo_shares) > 1


@dataclass(frozen=True)
class Row:
    cells: list[str]
    passed: bool | None                        # None: the reference row
    outcome: str | None = None                 # pass | fail | inconclusive; None: reference


def columns(report: ParityResults) -> list[Column]:
    return [c for c in COLUMNS if report.data["labelled"] or not c.labelled_only]


def rows(report: ParityResults) -> list[Row]:
    """The reference first (with labels: it has an accuracy), then one row per artifact."""
    shown = columns(report)
    out = []
    if report.data["labelled"]:
        ref = report.reference
        known = {"artifact": "reference", "backend": ref["kind"], "precision": "fp32",
                 "top1": pct(ref["top1"]) + ci(ref.get("top1_ci")), "top5": pct(ref["top5"])}
        out.append(Row([known.get(c.key, "") for c in shown], None))
    out += [Row([c.cell(r) for c in shown], r.passed, r.outcome) for r in report.results]
    return out


def machine(report: ParityResults) -> str:
    """The CPU the numbers come from (INT8 results differ between CPU kinds)."""
    m = report.data.get("machine")
    if not m:
        return "unknown machine"
    note = " (no VNNI: u8*s8 saturates)" if m.get("u8s8_saturates") else ""
    return f"{m['cpu']}, {m['cores']} cores, {m['int8_isa']}{note}"


def title(report: ParityResults) -> str:
    d, ref = report.data, report.reference
    return (f"parity on {d['name']} ({d['n']} images, "
            f"{'labelled' if d['labelled'] else 'unlabelled'}, {role(report)}) vs {ref['kind']} "
            f"reference {ref['name']} - {machine(report)}")


def role(report: ParityResults) -> str:
    """What the images were to the artifacts: every renderer says it next to their name."""
    if report.data.get("role") == "selection":
        return "selection images: they chose the INT8 recipe, so this is no verdict"
    return "verification images"
