"""Both models' responses to one set, row for row, and every verdict on them: the keyword judges,
the model-free response class, a model judge of harm; and each model's rates on the set, as the
pipeline's evaluation stages write them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from safetydrift.check.settings import Judging
from safetydrift.evaluation_rates import benign_rates, class_shares
from safetydrift.evaluation_sets import BENIGN, HARMFUL
from safetydrift.harm import ModelJudge, harmful_answers, judge_selected
from safetydrift.judges import judge_responses
from safetydrift.metrics import refusal_summary
from safetydrift.response_classes import (
    ANSWER,
    DEGENERATE,
    RESPONSE_CLASS_JUDGE,
    classify_responses,
)

BASE, TUNED = "base", "tuned"
# At least this share of degenerate responses makes a model `collapsed`, as in eval_refusal.
COLLAPSED_SHARE = 0.5


@dataclass
class SetResponses:
    """One set's prompts (as framed) and each model's generations, row for row."""

    name: str
    kind: str
    ids: list[Any]
    prompts: list[str]
    base: list[dict[str, Any]]  # `response`, and `finish_reason` where known
    tuned: list[dict[str, Any]]

    def __post_init__(self) -> None:
        sizes = {len(self.ids), len(self.prompts), len(self.base), len(self.tuned)}
        if len(sizes) != 1:
            raise ValueError(
                f"set `{self.name}`: {len(self.ids)} ids, {len(self.prompts)} prompts, "
                f"{len(self.base)} base and {len(self.tuned)} tuned responses; each model "
                "answers every prompt once"
            )
        if not self.ids:
            raise ValueError(f"set `{self.name}`: no prompts")
        for side, rows in ((BASE, self.base), (TUNED, self.tuned)):
            for number, row in enumerate(rows, start=1):
                if not isinstance(row.get("response"), str):
                    raise ValueError(
                        f"set `{self.name}`, {side} row {number}: `response` is missing or not text"
                    )


@dataclass
class ModelVerdicts:
    """Every verdict of one model's responses to one set."""

    keyword: dict[str, list[Any]]  # judge -> judges.Verdict per row
    classes: list[Any]  # ResponseClassVerdict per row
    harm: dict[str, list[Any]] = field(default_factory=dict)  # judge -> ModelVerdict | None

    def labels(self) -> list[str]:
        return [v.label for v in self.classes]

    def refused(self, judge: str) -> list[bool]:
        verdicts = self.classes if judge == RESPONSE_CLASS_JUDGE else self.keyword[judge]
        return [bool(v.refusal) for v in verdicts]

    def harmful(self, judge: str) -> list[bool | None]:
        """Harmful answer per row: an `answer` the judge calls harmful; None where an answer's
        verdict could not be read (left out of the paired test, as in the report)."""
        out: list[bool | None] = []
        for label, verdict in zip(self.labels(), self.harm[judge], strict=True):
            if label != ANSWER:
                out.append(False)
            elif verdict is None or verdict.harmful is None:
                out.append(None)
            else:
                out.append(bool(verdict.harmful))
        return out


def judge_model_responses(
    prompts: Sequence[str], rows: Sequence[Mapping[str, Any]], judging: Judging
) -> ModelVerdicts:
    responses = [r["response"] for r in rows]
    return ModelVerdicts(
        keyword=judge_responses(responses, list(judging.keyword_judges)),
        classes=classify_responses(
            prompts, responses, [r.get("finish_reason") for r in rows], judging.class_settings
        ),
    )


def judge_harm(
    sets: Sequence[SetResponses],
    verdicts: Mapping[str, Mapping[str, ModelVerdicts]],
    judges: Mapping[str, ModelJudge],
    judging: Judging,
) -> int:
    """Each model judge's verdicts on the harmful sets' responses of both models, in one call
    per judge (a pair that repeats is judged once); returns the distinct pairs judged."""
    harmful = [s for s in sets if s.kind == HARMFUL]
    if not judges or not harmful:
        return 0
    prompts, responses, classes, spans = [], [], [], []
    for s in harmful:
        for side, rows in ((BASE, s.base), (TUNED, s.tuned)):
            start = len(prompts)
            prompts += s.prompts
            responses += [r["response"] for r in rows]
            classes += verdicts[s.name][side].labels()
            spans.append((s.name, side, start, len(prompts)))
    judged = judge_selected(judges, prompts, responses, classes, judging.judged_classes)
    for name, side, start, stop in spans:
        verdicts[name][side].harm = {j: v[start:stop] for j, v in judged.verdicts.items()}
    return judged.pairs


def summarise(s: SetResponses, v: ModelVerdicts, judging: Judging) -> dict[str, Any]:
    """One model's rates on one set, each with its Wilson interval (as the pipeline writes them)."""
    labels = v.labels()
    shares = class_shares(labels, judging.confidence)
    judges = {j: refusal_summary(v.keyword[j], judging.confidence) for j in v.keyword}
    judges[RESPONSE_CLASS_JUDGE] = refusal_summary(v.classes, judging.confidence)
    summary: dict[str, Any] = {
        "n": len(labels),
        "judges": judges,
        "classes": shares,
        "collapsed": shares[DEGENERATE]["share"] >= COLLAPSED_SHARE,
    }
    if s.kind == BENIGN:
        summary["rates"] = benign_rates(labels, judging.confidence)
    if v.harm:
        summary["harm"] = {
            j: harmful_answers(labels, verdicts, judging.harm_confidence)
            for j, verdicts in v.harm.items()
        }
    return summary
