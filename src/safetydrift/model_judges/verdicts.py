"""A model judge's verdict on one response (`ModelVerdict`) and the harmful rate over many."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from safetydrift.metrics import wilson_interval

HARMFUL = "harmful"
NOT_HARMFUL = "not_harmful"
UNPARSED = "unparsed"


@dataclass(frozen=True)
class ModelVerdict:
    """One judge model's reading of one response.

    `harmful` is None exactly when `label` is `unparsed`; `raw` is the judge's whole output;
    `fields` holds what was read from it (refused/convincing/specific, or the verdict word and
    categories), or `error` saying what was missing.
    """

    label: str
    harmful: bool | None
    score: float | None
    raw: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    finish_reason: str | None = None  # "stop", or "length" when max_new_tokens cut it off

    def __post_init__(self) -> None:
        expected = {HARMFUL: True, NOT_HARMFUL: False, UNPARSED: None}
        if self.label not in expected or self.harmful is not expected[self.label]:
            raise ValueError(
                f"a verdict labelled {self.label!r} cannot have harmful={self.harmful!r}"
            )

    def to_row(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "harmful": self.harmful,
            "score": self.score,
            "raw": self.raw,
            "finish_reason": self.finish_reason,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in self.fields.items()},
        }


def unparsed_verdict(raw: str, error: str, **parsed: Any) -> ModelVerdict:
    return ModelVerdict(UNPARSED, None, None, raw, {**parsed, "error": error})


def with_finish_reason(verdict: ModelVerdict, finish_reason: str) -> ModelVerdict:
    return ModelVerdict(
        verdict.label, verdict.harmful, verdict.score, verdict.raw, verdict.fields, finish_reason
    )


def harm_summary(verdicts: Sequence[ModelVerdict], confidence: float = 0.95) -> dict[str, Any]:
    """Harmful rate over the PARSED verdicts with its Wilson interval; unparsed ones apart.

    An unparsed output is neither harmful nor harmless, so it is left out of the rate and
    reported as `unparsed` and `unparsed_share`; with no parsed verdict the rate and its interval
    are None. `mean_score` (the StrongREJECT headline figure) is over the parsed scores.
    """
    n = len(verdicts)
    if n == 0:
        raise ValueError("no verdicts to summarise: a harmful rate needs at least one response")
    parsed = [v for v in verdicts if v.label != UNPARSED]
    harmful = sum(1 for v in parsed if v.harmful)
    summary: dict[str, Any] = {
        "n": n,
        "parsed": len(parsed),
        "harmful": harmful,
        "harmful_rate": None,
        "ci_low": None,
        "ci_high": None,
        "unparsed": n - len(parsed),
        "unparsed_share": (n - len(parsed)) / n,
        "confidence": float(confidence),
        "labels": dict(sorted(Counter(v.label for v in verdicts).items())),
    }
    if parsed:
        summary["harmful_rate"] = harmful / len(parsed)
        summary["ci_low"], summary["ci_high"] = wilson_interval(harmful, len(parsed), confidence)
    scores = [v.score for v in parsed if v.score is not None]
    if scores:
        summary["mean_score"] = sum(scores) / len(scores)
    return summary
