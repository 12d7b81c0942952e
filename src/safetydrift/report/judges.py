"""How far the report's judges can be trusted: each against human labels (`validate_judges`,
and `reviews/labels.jsonl` when a reviewer has labelled a sample), and each against the others
on every cell (Cohen's kappa).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safetydrift.files import read_json
from safetydrift.judge_validation import pairwise_agreement
from safetydrift.markdown import markdown_table, rate_cell
from safetydrift.report.responses import ResponseResults
from safetydrift.response_classes import ANSWER, RESPONSE_CLASS_JUDGE
from safetydrift.review import review_accuracy


def unsafe_labels(rows: Sequence[Mapping[str, Any]], judge: str, kind: str) -> list[bool | None]:
    """Each response as one judge sees it: does it count against the model's safety?

    Keyword judges: not a refusal. `response-class`: an answer. Model judges: harmful (None where
    the output was unreadable)."""
    if kind == "model":
        return [row["harmful"].get(judge) for row in rows]
    if judge == RESPONSE_CLASS_JUDGE:
        return [row["class"] == ANSWER for row in rows]
    return [not row["refused"][judge] if judge in row["refused"] else None for row in rows]


def agreement_rows(
    results: ResponseResults, text_judges: Sequence[str], resamples: int, seed: int
) -> list[list[Any]]:
    """Cohen's kappa (bootstrap interval) of every pair of judges over all cells, then on every
    cell, its checkpoints pooled; responses a judge could not label are left out of its pairs."""
    judges = [(j, "text") for j in dict.fromkeys([*text_judges, RESPONSE_CLASS_JUDGE])]
    judges += [(j, "model") for j in results.harm_judges]
    rows = []
    every_cell = [row for cps in results.checkpoints.values() for c in cps for row in c.rows]
    for cell, pooled in [
        ("all cells", every_cell),
        *(
            (cell, [row for c in cps for row in c.rows])
            for cell, cps in results.checkpoints.items()
        ),
    ]:
        if not pooled:
            continue
        labels = {name: unsafe_labels(pooled, name, kind) for name, kind in judges}
        for a_index, (a, _) in enumerate(judges):
            for b, _ in judges[a_index + 1 :]:
                both = [
                    (x, y) for x, y in zip(labels[a], labels[b], strict=True) if None not in (x, y)
                ]
                if len(both) < 2:
                    rows.append([cell, a, b, "—", "—", len(both)])
                    continue
                (pair,) = pairwise_agreement(
                    {a: [x for x, _ in both], b: [y for _, y in both]},
                    n_resamples=resamples,
                    seed=seed,
                )
                kappa, low, high = pair["kappa"], pair["ci_low"], pair["ci_high"]
                defined = kappa is not None and not math.isnan(kappa)
                bounded = None not in (low, high) and not math.isnan(low) and not math.isnan(high)
                rows.append(
                    [
                        cell,
                        a,
                        b,
                        f"{kappa:.2f}" if defined else "undefined (one label only)",
                        f"[{low:.2f}, {high:.2f}]" if defined and bounded else "—",
                        len(both),
                    ]
                )
    return rows


def validation_table(validation_file: Path) -> list[str]:
    """Each judge against human labels: `validate_judges`'s metrics file, when it has run."""
    validation = read_json(validation_file) if validation_file.exists() else None
    if not validation or not validation.get("judges"):
        return ["No judge validation yet (`validate_judges` has not run, or no files are set)."]
    header = ["judge", "n", "accuracy", "precision", "recall", "unreadable"]
    rows = []
    for name, scores in validation["judges"].items():
        cells = [
            rate_cell(*(scores[k][p] for p in ("value", "ci_low", "ci_high")))
            if scores.get(k)
            else "—"
            for k in ("accuracy", "precision", "recall")
        ]
        rows.append([name, scores.get("n", 0), *cells, scores.get("unparsed", 0)])
    files = ", ".join(f"`{f}`" for f in validation.get("files", []))
    return [
        f"Against {validation['n']} human-labelled responses ({validation.get('refused', '?')} "
        f'labelled refusals; {files}). "Refused" is a refusal for the keyword judges, the class '
        "`refusal` for `response-class`, and *not harmful* for a model judge, whose unreadable "
        "outputs are left out. 95% Wilson intervals.",
        "",
        *markdown_table(header, rows),
    ]


def review_section(results: ResponseResults, labels_file: Path) -> list[str]:
    if not labels_file.exists() or not labels_file.read_text(encoding="utf-8").strip():
        return [
            f"No human review labels yet (`{labels_file}`): `safetydrift review export` samples "
            "responses per cell and class, `safetydrift review import` reads the labels back."
        ]
    verdict_rows = [
        {
            "cell": c.cell,
            "checkpoint": c.checkpoint,
            "id": row["id"],
            RESPONSE_CLASS_JUDGE: {"refusal": row["class"] == "refusal", "label": row["class"]},
            **{
                judge: {"refusal": refused, "label": "refusal" if refused else "compliance"}
                for judge, refused in row["refused"].items()
                if judge != RESPONSE_CLASS_JUDGE
            },
        }
        for checkpoints in results.checkpoints.values()
        for c in checkpoints
        for row in c.rows
    ]
    accuracy = review_accuracy(labels_file, verdict_rows)

    def interval(scores: Mapping[str, Any] | None) -> str:
        if not scores or scores.get("value") is None:
            return "—"
        return rate_cell(scores["value"], scores["ci_low"], scores["ci_high"])

    rows = [
        [
            judge,
            scores["n"],
            interval(scores["accuracy"]),
            interval(scores.get("class_accuracy")),
        ]
        for judge, scores in accuracy["judges"].items()
    ]
    return [
        f"Against the {accuracy['matched']} responses a reviewer labelled (`{labels_file}`; "
        f"{accuracy['unmatched']} labels match no response of this run). Accuracy of "
        '"refused"; for `response-class` also of its class.',
        "",
        *markdown_table(["judge", "n", "refusal accuracy", "class accuracy"], rows),
        "",
    ]
