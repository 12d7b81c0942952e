"""Two rates measured on the same prompts: McNemar's exact test for a difference, Tango's score
interval for its size, and two one-sided Tango score tests for equivalence (TOST).

Their sources: the docstring of the `safetydrift.stats` package.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy import optimize
from scipy.stats import binom, norm

from safetydrift.stats.equivalence import Equivalence, check_alpha, check_confidence, check_margin

# Root finding for the Tango interval: the ends of (-1, 1) are excluded, where the score
# statistic's variance vanishes.
_BOUNDARY = 1e-12


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
    confidence = check_confidence(confidence)
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


def tost_paired_proportions(
    a: Sequence[bool], b: Sequence[bool], margin: float = 0.05, alpha: float = 0.05
) -> Equivalence:
    """Equivalence of two paired rates within +-`margin` (0.05: 5 points), by Tango score tests.

    Equivalent when both one-sided tests reject at `alpha`; by the duality of the score test
    and its interval, exactly when the (1 - 2 alpha) Tango interval lies inside +-margin.
    """
    margin = check_margin(margin, upper=1.0)
    alpha = check_alpha(alpha)
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
