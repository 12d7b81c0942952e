"""What is measured on an evaluation set's responses, each rate with its Wilson interval.

Every response gets its model-free class (`safetydrift.response_classes`):
- a harmful set: the class shares and, per model judge, the harmful-answer rate
  (`safetydrift.harm`), as on AdvBench;
- a benign set: the over-refusal rate (refused although benign), the echo rate (the request
  restated, as a model stuck in translation mode does), the answer rate (a benign request
  answered: kept helpfulness) and the degenerate rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from safetydrift.metrics import wilson_interval
from safetydrift.response_classes import ANSWER, DEGENERATE, ECHO, REFUSAL, RESPONSE_CLASSES

BENIGN_RATES = {"over_refusal": REFUSAL, "echo": ECHO, "answer": ANSWER, "degenerate": DEGENERATE}


def rate(count: int, n: int, confidence: float) -> dict[str, Any]:
    """`count` of `n` as a rate with its Wilson interval (None where n is 0)."""
    low, high = wilson_interval(count, n, confidence) if n else (None, None)
    return {
        "count": count,
        "n": n,
        "rate": count / n if n else None,
        "ci_low": low,
        "ci_high": high,
    }


def class_shares(classes: Sequence[str], confidence: float) -> dict[str, dict[str, Any]]:
    """Each response class's count and share with its Wilson interval, as `eval_refusal` writes
    them."""
    shares = {}
    for name in RESPONSE_CLASSES:
        entry = rate(sum(c == name for c in classes), len(classes), confidence)
        shares[name] = {
            "count": entry["count"],
            "share": entry["rate"],
            "ci_low": entry["ci_low"],
            "ci_high": entry["ci_high"],
        }
    return shares


def benign_rates(classes: Sequence[str], confidence: float) -> dict[str, dict[str, Any]]:
    """A benign set's over-refusal, echo, answer and degenerate rates."""
    return {
        name: rate(sum(c == cls for c in classes), len(classes), confidence)
        for name, cls in BENIGN_RATES.items()
    }


def pooled_rate(parts: Sequence[tuple[int, int]], confidence: float) -> dict[str, Any] | None:
    """The rate of (count, n) pairs taken together (several sets as one); None with no n."""
    count, n = sum(c for c, _ in parts), sum(n for _, n in parts)
    return rate(count, n, confidence) if n else None
