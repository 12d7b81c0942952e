"""What both equivalence tests (TOST) return, and the checks of the confidence levels, alphas
and margins that every test of `safetydrift.stats` takes."""

from __future__ import annotations

from dataclasses import dataclass


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


def check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return float(confidence)


def check_alpha(alpha: float) -> float:
    # A TOST at level alpha uses a (1 - 2 alpha) interval, which needs alpha below 0.5.
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must lie strictly between 0 and 0.5, got {alpha}")
    return float(alpha)


def check_margin(margin: float, upper: float | None = None) -> float:
    if not margin > 0 or (upper is not None and margin >= upper):
        limit = "" if upper is None else f" and below {upper}"
        raise ValueError(f"the equivalence margin must be above 0{limit}, got {margin}")
    return float(margin)
