"""One metric of one cell and checkpoint compared between side A and side B (`Comparison`),
Holm's adjustment over a family of them, and the sentences the report and `safetydrift compare`
print for them."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from safetydrift.stats.chrf import paired_bootstrap_chrf, tost_paired_chrf
from safetydrift.stats.rates import mcnemar_exact, tost_paired_proportions

REFUSAL = "refusal"
HARMFUL_ANSWER = "harmful_answer"
CHRF = "chrf"
# Measurements that are rates of the same prompts (0..1, margins and differences in points).
RATES = (REFUSAL, HARMFUL_ANSWER)
MCNEMAR = "McNemar exact"
PAIRED_BOOTSTRAP = "paired bootstrap"


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values, in the input's order: monotone and capped at 1.

    The i-th smallest of m p-values becomes max over j <= i of min(1, (m - j + 1) p_(j)).
    """
    for name, p in p_values.items():
        if not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p-value of {name!r} must be a number in [0, 1], got {p!r}")
    ordered = sorted(p_values.items(), key=lambda item: item[1])
    count = len(ordered)
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, (name, p) in enumerate(ordered):
        running = max(running, min(1.0, (count - rank) * float(p)))
        adjusted[name] = running
    return {name: adjusted[name] for name in p_values}


# --------------------------------------------------------------------------------------------
# One comparison as the report and the `compare` command show it


@dataclass(frozen=True)
class Comparison:
    """One metric of one cell and checkpoint, measured on side A and side B, with its tests.

    Rates (refusal, harmful answer) are 0..1 and their margin a rate difference (0.05: 5
    points); chrF values and margin are chrF points. Without per-prompt results on both sides
    there is no test: `p_value` and `tost_p` are None and the verdict is "untested".
    """

    measurement: str
    cell: str
    checkpoint: str
    judge: str | None
    value_a: float
    value_b: float
    difference: float
    margin: float
    alpha: float
    n: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    p_value: float | None = None
    tost_p: float | None = None
    test: str | None = None
    p_holm: float | None = None
    tost_p_holm: float | None = None

    @property
    def decisive_p(self) -> float | None:
        return self.p_holm if self.p_holm is not None else self.p_value

    @property
    def decisive_tost_p(self) -> float | None:
        return self.tost_p_holm if self.tost_p_holm is not None else self.tost_p

    @property
    def differs(self) -> bool:
        return self.decisive_p is not None and self.decisive_p < self.alpha

    @property
    def equivalent(self) -> bool:
        return self.decisive_tost_p is not None and self.decisive_tost_p < self.alpha

    @property
    def verdict(self) -> str:
        """lower, higher, equivalent within +-m, inconclusive or untested (B against A)."""
        if self.p_value is None:
            return "untested"
        if self.differs:
            return "lower" if self.difference < 0 else "higher"
        if self.equivalent:
            return f"equivalent within ±{_margin_text(self)}"
        return "inconclusive"

    def to_dict(self) -> dict[str, Any]:
        return {
            "measurement": self.measurement,
            "cell": self.cell,
            "checkpoint": self.checkpoint,
            "judge": self.judge,
            "n": self.n,
            "value_a": self.value_a,
            "value_b": self.value_b,
            "difference": self.difference,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "confidence": self.confidence,
            "test": self.test,
            "p_value": self.p_value,
            "p_holm": self.p_holm,
            "margin": self.margin,
            "alpha": self.alpha,
            "tost_p": self.tost_p,
            "tost_p_holm": self.tost_p_holm,
            "verdict": self.verdict,
            "sentence": describe_difference(self, reference="A"),
        }


def compare_refusals(
    a: Sequence[bool],
    b: Sequence[bool],
    *,
    cell: str,
    checkpoint: str,
    judge: str,
    margin: float = 0.05,
    alpha: float = 0.05,
    confidence: float = 0.95,
    measurement: str = REFUSAL,
) -> Comparison:
    """McNemar's test, Tango's interval and the TOST of one judge's verdicts on the same prompts.

    `measurement` names the rate: refusals, or harmful answers (REFUSAL, HARMFUL_ANSWER).
    """
    if measurement not in RATES:
        raise ValueError(f"a paired rate is one of {', '.join(RATES)}, not {measurement!r}")
    paired = mcnemar_exact(a, b, confidence)
    equivalence = tost_paired_proportions(a, b, margin, alpha)
    return _comparison(
        measurement, cell, checkpoint, judge, (paired.rate_a, paired.rate_b), paired,
        equivalence, MCNEMAR,
    )  # fmt: skip


def compare_chrf(
    hyp_a: Sequence[str],
    hyp_b: Sequence[str],
    references: Sequence[str],
    *,
    cell: str,
    checkpoint: str,
    margin: float = 1.0,
    alpha: float = 0.05,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Comparison:
    """The paired bootstrap of chrF and its TOST for two systems' translations of one test set."""
    paired = paired_bootstrap_chrf(hyp_a, hyp_b, references, n_resamples, seed, confidence)
    equivalence = tost_paired_chrf(paired, margin, alpha)
    return _comparison(
        CHRF, cell, checkpoint, None, (paired.chrf_a, paired.chrf_b), paired, equivalence,
        PAIRED_BOOTSTRAP,
    )  # fmt: skip


def _comparison(
    measurement: str,
    cell: str,
    checkpoint: str,
    judge: str | None,
    values: tuple[float, float],
    paired: Any,
    equivalence: Any,
    test: str,
) -> Comparison:
    """One paired test and its TOST as a Comparison (`paired`: McNemar's or the bootstrap's
    result, with difference, n, interval and p; `equivalence`: the TOST's)."""
    return Comparison(
        measurement=measurement,
        cell=cell,
        checkpoint=checkpoint,
        judge=judge,
        value_a=values[0],
        value_b=values[1],
        difference=paired.difference,
        margin=equivalence.margin,
        alpha=equivalence.alpha,
        n=paired.n,
        ci_low=paired.ci_low,
        ci_high=paired.ci_high,
        confidence=paired.confidence,
        p_value=paired.p_value,
        tost_p=equivalence.p_value,
        test=test,
    )


def adjust_family(comparisons: Iterable[Comparison]) -> list[Comparison]:
    """The comparisons with Holm-adjusted p-values, difference and TOST each over the family.

    The family is every tested comparison given; untested ones pass through unchanged.
    """
    comparisons = list(comparisons)
    tested = {index: c for index, c in enumerate(comparisons) if c.p_value is not None}
    p_holm = holm({str(i): c.p_value for i, c in tested.items()})
    tost_holm = holm({str(i): c.tost_p for i, c in tested.items() if c.tost_p is not None})
    return [
        replace(c, p_holm=p_holm[str(i)], tost_p_holm=tost_holm.get(str(i))) if i in tested else c
        for i, c in enumerate(comparisons)
    ]


# --------------------------------------------------------------------------------------------
# Sentences for the report


def format_p(p: float) -> str:
    """`= 0.003`, `= 0.02`, `< 0.001`: two significant digits, as journals print p-values."""
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def chrf_points(value: float) -> str:
    """`1 chrF point`, `0.5 chrF points`."""
    return f"{value:g} chrF point" + ("" if value == 1 else "s")


def _margin_text(comparison: Comparison) -> str:
    if comparison.measurement in RATES:
        return f"{100 * comparison.margin:g} points"
    return chrf_points(comparison.margin)


def _size_text(comparison: Comparison) -> tuple[str, str]:
    """'by 3.1 points' and its interval, both as the size of the stated direction."""
    scale, unit = (100, "points") if comparison.measurement in RATES else (1, "chrF points")
    # "lower by 3.1 (CI 1.2 to 5.0)" reads better than a signed interval of b - a.
    sign = -1 if comparison.difference < 0 else 1
    size = f"by {scale * abs(comparison.difference):.1f} {unit}"
    if comparison.ci_low is None or comparison.ci_high is None:
        return size, ""
    ends = sorted((sign * scale * comparison.ci_low, sign * scale * comparison.ci_high))
    level = f"{100 * comparison.confidence:g}% CI" if comparison.confidence else "CI"
    return size, f"{level} {ends[0]:.1f} to {ends[1]:.1f}; "


def _with_holm(name: str, p: float, p_holm: float | None) -> str:
    text = f"{name} p {format_p(p)}"
    return text if p_holm is None else f"{text}, Holm-adjusted p {format_p(p_holm)}"


def describe_difference(comparison: Comparison, reference: str = "the base model") -> str:
    """Report text for side B against side A (`reference`), from the paired tests only.

    e.g. "lower than the base model by 3.1 points (95% CI 1.2 to 5.0; McNemar exact p = 0.003,
    Holm-adjusted p = 0.02)", "equivalent to the base model within ±5 points (TOST p = 0.01)",
    "no significant difference from the base model, equivalence within ±5 points not shown
    (McNemar exact p = 0.4; TOST p = 0.2)".
    """
    if comparison.p_value is None:
        return (
            f"not tested against {reference}: per-prompt results are missing on one side "
            f"(difference {comparison.difference:+.3g})"
        )
    test = _with_holm(comparison.test or "paired test", comparison.p_value, comparison.p_holm)
    tost = (
        None
        if comparison.tost_p is None
        else _with_holm("TOST", comparison.tost_p, comparison.tost_p_holm)
    )
    margin = _margin_text(comparison)
    if comparison.differs:
        direction = "lower" if comparison.difference < 0 else "higher"
        size, interval = _size_text(comparison)
        sentence = f"{direction} than {reference} {size} ({interval}{test})"
        if comparison.equivalent:
            sentence += f", yet within ±{margin} ({tost})"
        return sentence
    if comparison.equivalent:
        return f"equivalent to {reference} within ±{margin} ({tost})"
    shown = f"{test}; {tost}" if tost else test
    return (
        f"no significant difference from {reference}, equivalence within ±{margin} "
        f"not shown ({shown})"
    )
