"""Paired comparisons of two evaluations of the same prompts, as a reviewer expects them.

Every checkpoint answers the same prompts as the base model, so differences are tested on the
pairs, never by comparing two intervals: overlapping 95% intervals are neither a test nor evidence
of equal rates.

Methods and their sources:

- Refusal rates: McNemar's exact test (the two-sided binomial test of the discordant pairs,
  McNemar 1947) for "is there a difference". The interval for the difference of the two rates
  is Tango's asymptotic score interval for paired proportions (Tango 1998, Stat Med 17:891-908),
  one of the intervals Fagerland, Lydersen & Laake (2014, Stat Med 33:2850-2875) recommend; its
  score statistic at a difference of 0 is McNemar's, and unlike a Wald interval it stays sensible
  with few discordant pairs (rates near 1, as the base model's 0.979).
- Equivalence of refusal rates: two one-sided Tango score tests against -margin and +margin
  (TOST, Schuirmann 1987). The TOST p-value is the larger one-sided p-value, and it is below
  alpha exactly when the (1 - 2 alpha) Tango interval lies inside (-margin, +margin).
- chrF, a corpus-level score: a paired bootstrap (Koehn 2004): both systems are scored on the
  same resampled sentence indices (those of `metrics.bootstrap_indices`, so each system's
  resampled scores are the ones behind its published interval), each resample from summed
  sentence statistics exactly as sacrebleu scores a corpus. Its equivalence test is the
  percentile-bootstrap TOST: the share of resampled differences at or beyond each margin.
- Several comparisons shown together: Holm's step-down adjustment (Holm 1979), which controls
  the family-wise error rate without assumptions on how the tests depend on each other.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy import optimize
from scipy.stats import binom, norm

from safetydrift.metrics import _chrf_metric, _score, bootstrap_indices, chrf_statistics

REFUSAL = "refusal"
HARMFUL_ANSWER = "harmful_answer"
CHRF = "chrf"
# Measurements that are rates of the same prompts (0..1, margins and differences in points).
RATES = (REFUSAL, HARMFUL_ANSWER)
MCNEMAR = "McNemar exact"
PAIRED_BOOTSTRAP = "paired bootstrap"

# Root finding for the Tango interval: the ends of (-1, 1) are excluded, where the score
# statistic's variance vanishes.
_BOUNDARY = 1e-12


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return float(confidence)


def _check_alpha(alpha: float) -> float:
    # A TOST at level alpha uses a (1 - 2 alpha) interval, which needs alpha below 0.5.
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must lie strictly between 0 and 0.5, got {alpha}")
    return float(alpha)


def _check_margin(margin: float, upper: float | None = None) -> float:
    if not margin > 0 or (upper is not None and margin >= upper):
        limit = "" if upper is None else f" and below {upper}"
        raise ValueError(f"the equivalence margin must be above 0{limit}, got {margin}")
    return float(margin)


def _paired_flags(a: Sequence[bool], b: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    flags = []
    for name, values in (("a", a), ("b", b)):
        if isinstance(values, (str, bytes)):
            raise ValueError(f"{name} must be a sequence of booleans, not one string")
        values = list(values)
        for index, value in enumerate(values):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(
                    f"{name}[{index}] is {value!r} ({type(value).__name__}), not a boolean"
                )
        flags.append(np.asarray(values, dtype=bool))
    if len(flags[0]) != len(flags[1]):
        raise ValueError(
            f"{len(flags[0])} items in a but {len(flags[1])} in b: a paired test needs the "
            "same items, in the same order, on both sides"
        )
    if len(flags[0]) == 0:
        raise ValueError("no items to compare: a and b are empty")
    return flags[0], flags[1]


# --------------------------------------------------------------------------------------------
# Refusal rates: McNemar's exact test and Tango's score interval


@dataclass(frozen=True)
class PairedProportions:
    """Two rates measured on the same items, their difference (b - a) and McNemar's test."""

    n: int
    rate_a: float
    rate_b: float
    b01: int  # items false in a and true in b
    b10: int  # items true in a and false in b
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float


def mcnemar_exact_p(b01: int, b10: int) -> float:
    """Two-sided exact McNemar p-value: min(1, 2 P(X <= min(b01, b10))), X ~ Bin(b01 + b10, 1/2)."""
    for name, count in (("b01", b01), ("b10", b10)):
        if not isinstance(count, numbers.Integral) or count < 0:
            raise ValueError(f"{name} must be a count (a whole number >= 0), got {count!r}")
    discordant = int(b01) + int(b10)
    if discordant == 0:
        return 1.0
    return min(1.0, 2.0 * float(binom.cdf(min(b01, b10), discordant, 0.5)))


def tango_statistic(delta: float, b01: int, b10: int, n: int) -> float:
    """Tango's score statistic for H0: rate_b - rate_a = `delta` (Tango 1998, eq. 3).

    The variance uses the restricted maximum-likelihood estimate of P(a true, b false) under
    H0, which has a closed form (the root of a quadratic). At delta = 0 the statistic is
    McNemar's (b01 - b10) / sqrt(b01 + b10).
    """
    quadratic_a = 2.0 * n
    quadratic_b = -b01 - b10 + (2.0 * n - b01 + b10) * delta
    quadratic_c = -b10 * delta * (1.0 - delta)
    root = math.sqrt(max(0.0, quadratic_b**2 - 4.0 * quadratic_a * quadratic_c))
    p10 = (root - quadratic_b) / (2.0 * quadratic_a)
    variance = n * (2.0 * p10 + delta * (1.0 - delta))
    numerator = b01 - b10 - n * delta
    if variance <= 0.0:
        # Only at delta = 0 without discordant pairs, where the numerator is 0 as well.
        return 0.0 if numerator == 0 else math.copysign(math.inf, numerator)
    return numerator / math.sqrt(variance)


def tango_interval(b01: int, b10: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Tango's asymptotic score interval for rate_b - rate_a from the discordant counts."""
    confidence = _check_confidence(confidence)
    if not 0 <= b01 + b10 <= n or n < 1:
        raise ValueError(f"discordant counts b01={b01}, b10={b10} do not fit n={n} items")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    estimate = (b01 - b10) / n

    def low_equation(delta: float) -> float:
        return tango_statistic(delta, b01, b10, n) - z

    def high_equation(delta: float) -> float:
        return tango_statistic(delta, b01, b10, n) + z

    # The statistic falls as delta rises and is 0 at the estimate, so each end lies on its
    # side of the estimate, or at the boundary when the statistic never reaches z there.
    low, high = -1.0, 1.0
    if estimate > -1.0 and low_equation(-1.0 + _BOUNDARY) > 0:
        low = optimize.brentq(low_equation, -1.0 + _BOUNDARY, estimate, xtol=1e-14)
    if estimate < 1.0 and high_equation(1.0 - _BOUNDARY) < 0:
        high = optimize.brentq(high_equation, estimate, 1.0 - _BOUNDARY, xtol=1e-14)
    return float(low), float(high)


def mcnemar_exact(
    a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95
) -> PairedProportions:
    """McNemar's exact test of two rates on the same items, with Tango's interval for b - a.

    `a[i]` and `b[i]` must describe the same item (the same prompt), e.g. whether the base model
    and a checkpoint refused it.
    """
    flags_a, flags_b = _paired_flags(a, b)
    n = len(flags_a)
    b01 = int(np.count_nonzero(~flags_a & flags_b))
    b10 = int(np.count_nonzero(flags_a & ~flags_b))
    ci_low, ci_high = tango_interval(b01, b10, n, confidence)
    return PairedProportions(
        n=n,
        rate_a=float(flags_a.mean()),
        rate_b=float(flags_b.mean()),
        b01=b01,
        b10=b10,
        difference=(b01 - b10) / n,
        ci_low=ci_low,
        ci_high=ci_high,
        confidence=float(confidence),
        p_value=mcnemar_exact_p(b01, b10),
    )


# --------------------------------------------------------------------------------------------
# Equivalence (TOST)


@dataclass(frozen=True)
class Equivalence:
    """Two one-sided tests of |b - a| < margin; `ci_*` is the matching (1 - 2 alpha) interval."""

    difference: float
    margin: float
    alpha: float
    p_value: float  # the larger of the two one-sided p-values
    p_lower: float  # against H0: b - a <= -margin
    p_upper: float  # against H0: b - a >= +margin
    ci_low: float
    ci_high: float
    equivalent: bool


def tost_paired_proportions(
    a: Sequence[bool], b: Sequence[bool], margin: float = 0.05, alpha: float = 0.05
) -> Equivalence:
    """Equivalence of two paired rates within +-`margin` (0.05: 5 points), by Tango score tests.

    Equivalent when both one-sided tests reject at `alpha`; by the duality of the score test
    and its interval, exactly when the (1 - 2 alpha) Tango interval lies inside +-margin.
    """
    margin = _check_margin(margin, upper=1.0)
    alpha = _check_alpha(alpha)
    flags_a, flags_b = _paired_flags(a, b)
    n = len(flags_a)
    b01 = int(np.count_nonzero(~flags_a & flags_b))
    b10 = int(np.count_nonzero(flags_a & ~flags_b))
    p_lower = float(norm.sf(tango_statistic(-margin, b01, b10, n)))
    p_upper = float(norm.cdf(tango_statistic(margin, b01, b10, n)))
    ci_low, ci_high = tango_interval(b01, b10, n, 1.0 - 2.0 * alpha)
    p_value = max(p_lower, p_upper)
    return Equivalence(
        difference=(b01 - b10) / n,
        margin=margin,
        alpha=alpha,
        p_value=p_value,
        p_lower=p_lower,
        p_upper=p_upper,
        ci_low=ci_low,
        ci_high=ci_high,
        equivalent=p_value < alpha,
    )


# --------------------------------------------------------------------------------------------
# chrF: the paired bootstrap


@dataclass(frozen=True)
class PairedChrf:
    """Corpus chrF of two systems on the same sentences, and their paired-bootstrap difference."""

    n: int
    chrf_a: float
    chrf_b: float
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    n_resamples: int
    seed: int
    # chrF(b) - chrF(a) of every resample, in the order of `metrics.bootstrap_indices`.
    deltas: np.ndarray = field(repr=False, compare=False)


def paired_bootstrap_chrf(
    hyp_a: Sequence[str],
    hyp_b: Sequence[str],
    references: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedChrf:
    """chrF(b) - chrF(a) with a percentile interval and a two-sided paired-bootstrap p-value.

    The p-value doubles the share of resamples whose difference lies at or beyond 0 on the other
    side from the observed one, counting the observed sample too ((k + 1) / (R + 1)), capped at 1.
    """
    confidence = _check_confidence(confidence)
    references = _texts(references, "references")
    statistics_a = _sentence_statistics(_texts(hyp_a, "hyp_a"), references)
    statistics_b = _sentence_statistics(_texts(hyp_b, "hyp_b"), references)
    metric = _chrf_metric()
    indices = bootstrap_indices(len(references), n_resamples, seed)
    sums_a = _resample_sums(statistics_a, indices)
    sums_b = _resample_sums(statistics_b, indices)
    deltas = np.array(
        [_score(metric, b) - _score(metric, a) for a, b in zip(sums_a, sums_b, strict=True)]
    )
    chrf_a = _score(metric, statistics_a.sum(axis=0))
    chrf_b = _score(metric, statistics_b.sum(axis=0))
    difference = chrf_b - chrf_a
    tail = (1 - confidence) / 2
    ci_low, ci_high = np.percentile(deltas, [100 * tail, 100 * (1 - tail)])
    return PairedChrf(
        n=len(references),
        chrf_a=chrf_a,
        chrf_b=chrf_b,
        difference=difference,
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        confidence=confidence,
        p_value=_bootstrap_p(difference, deltas),
        n_resamples=int(n_resamples),
        seed=int(seed),
        deltas=deltas,
    )


def _texts(texts: Sequence[str], name: str) -> tuple[str, ...]:
    if isinstance(texts, str):
        raise ValueError(f"{name} must be a sequence of strings, not one string")
    texts = tuple(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{name}[{index}] is {type(text).__name__}, not text")
    return texts


# Comparing every cell with the base model scores the base's translations once, not per cell:
# extracting statistics is most of a comparison's time (about 1 s per 1,600 sentences).
@functools.lru_cache(maxsize=4)
def _sentence_statistics(hypotheses: tuple[str, ...], references: tuple[str, ...]) -> np.ndarray:
    statistics = chrf_statistics(hypotheses, references)
    statistics.flags.writeable = False
    return statistics


def _resample_sums(statistics: np.ndarray, indices: np.ndarray, block: int = 500) -> np.ndarray:
    """Each resample's summed sentence statistics, `statistics[row].sum(axis=0)` for every row of
    `indices`, as integers.

    Computed as (how often each sentence is drawn) x statistics, one matrix product per block of
    resamples instead of one fancy-indexed sum per resample (3x faster at 10,000 resamples of
    818 sentences, which the report's Holm-adjusted chrF tests need). The products are of
    integers well below 2**53, so float64 holds them exactly and the sums are the same integers.
    """
    n = statistics.shape[0]
    weights = statistics.astype(np.float64)
    sums = np.empty((len(indices), statistics.shape[1]), dtype=np.int64)
    for start in range(0, len(indices), block):
        rows = indices[start : start + block]
        offsets = (rows + n * np.arange(len(rows))[:, None]).ravel()
        counts = np.bincount(offsets, minlength=len(rows) * n).reshape(len(rows), n)
        sums[start : start + len(rows)] = np.rint(counts @ weights).astype(np.int64)
    return sums


def _bootstrap_p(difference: float, deltas: np.ndarray) -> float:
    if difference > 0:
        beyond = int(np.count_nonzero(deltas <= 0))
    elif difference < 0:
        beyond = int(np.count_nonzero(deltas >= 0))
    else:
        return 1.0
    return min(1.0, 2.0 * (beyond + 1) / (len(deltas) + 1))


def tost_paired_chrf(result: PairedChrf, margin: float = 1.0, alpha: float = 0.05) -> Equivalence:
    """Equivalence of two systems' chrF within +-`margin` chrF points, from a paired bootstrap.

    Each one-sided p-value is the share of resampled differences at or beyond that margin,
    (k + 1) / (R + 1); `ci_*` is the (1 - 2 alpha) percentile interval of the differences.
    """
    margin = _check_margin(margin)
    alpha = _check_alpha(alpha)
    resamples = len(result.deltas)
    p_lower = (int(np.count_nonzero(result.deltas <= -margin)) + 1) / (resamples + 1)
    p_upper = (int(np.count_nonzero(result.deltas >= margin)) + 1) / (resamples + 1)
    ci_low, ci_high = np.percentile(result.deltas, [100 * alpha, 100 * (1 - alpha)])
    p_value = max(p_lower, p_upper)
    return Equivalence(
        difference=result.difference,
        margin=margin,
        alpha=alpha,
        p_value=p_value,
        p_lower=p_lower,
        p_upper=p_upper,
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        equivalent=p_value < alpha,
    )


# --------------------------------------------------------------------------------------------
# Several comparisons


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
    return Comparison(
        measurement=measurement,
        cell=cell,
        checkpoint=checkpoint,
        judge=judge,
        value_a=paired.rate_a,
        value_b=paired.rate_b,
        difference=paired.difference,
        margin=equivalence.margin,
        alpha=equivalence.alpha,
        n=paired.n,
        ci_low=paired.ci_low,
        ci_high=paired.ci_high,
        confidence=paired.confidence,
        p_value=paired.p_value,
        tost_p=equivalence.p_value,
        test=MCNEMAR,
    )


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
    return Comparison(
        measurement=CHRF,
        cell=cell,
        checkpoint=checkpoint,
        judge=None,
        value_a=paired.chrf_a,
        value_b=paired.chrf_b,
        difference=paired.difference,
        margin=equivalence.margin,
        alpha=equivalence.alpha,
        n=paired.n,
        ci_low=paired.ci_low,
        ci_high=paired.ci_high,
        confidence=paired.confidence,
        p_value=paired.p_value,
        tost_p=equivalence.p_value,
        test=PAIRED_BOOTSTRAP,
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
