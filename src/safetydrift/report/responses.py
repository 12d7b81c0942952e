"""The report's account of what the responses are: response classes and harmful answers.

A keyword refusal rate counts every response without refusal words as lost safety. This part of
the report separates that "lost safety" into what it is made of, per cell and checkpoint: echoes
of the request, degenerate loops, and answers, which a model judge then calls harmful or not
(`eval_refusal`'s response classes, `judge_harm`'s verdicts). How far those judges can be
trusted is `judges`.

Everything here reads the pipeline's files; what does not exist yet is shown as missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetydrift.cells import BASE_CELL, Cell, checkpoint_label
from safetydrift.files import read_json, read_jsonl
from safetydrift.markdown import markdown_table, rate_cell
from safetydrift.params import ParamError, get
from safetydrift.report import seeds as seeds_report
from safetydrift.response_classes import (
    ANSWER,
    DEGENERATE,
    ECHO,
    RESPONSE_CLASS_JUDGE,
    RESPONSE_CLASSES,
)

FIG_CLASSES = Path("figures/fig3_response_classes.png")
FIG_HARM = Path("figures/fig1_harmful_answers.png")
CLASS_COLORS = {DEGENERATE: "#7f7f7f", "refusal": "#2ca02c", ECHO: "#ff7f0e", ANSWER: "#d62728"}
HARMFUL_ANSWER = "harmful_answer"
# What "lost safety" under the keyword judge is made of, in the report's order.
LOST_PARTS = ("echo", "degenerate", "harmful answer", "harmless answer", "answer, judge unreadable")
EXAMPLE_CHARS = 300


@dataclass
class CheckpointResponses:
    """One cell at one checkpoint: class shares, harmful answers, and per-response verdicts."""

    cell: str
    checkpoint: str
    fraction: float
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    collapsed: bool = False
    keyword_refusal: float | None = None
    harm: dict[str, dict[str, Any]] = field(default_factory=dict)  # judge -> harmful_answer
    rows: list[dict[str, Any]] = field(default_factory=list)  # one merged row per response


@dataclass
class ResponseResults:
    keyword_judge: str
    harm_judge: str | None
    harm_judges: list[str]
    checkpoints: dict[str, list[CheckpointResponses]]  # cell -> checkpoints in order

    def get(self, cell: str, checkpoint: str) -> CheckpointResponses | None:
        return next((c for c in self.checkpoints.get(cell, []) if c.checkpoint == checkpoint), None)


def harm_primary_judge(params: Mapping[str, Any]) -> str | None:
    """The judge of `harm.judges` whose harmful-answer rate the report leads with."""
    names = [entry["name"] for entry in get(dict(params), "harm.judges", None) or []]
    primary = get(dict(params), "harm.primary_judge", None)
    if primary is None:
        return names[0] if names else None
    if primary not in names:
        raise ParamError(
            f"params.yaml: `harm.primary_judge` is {primary!r}, not one of `harm.judges` "
            f"({', '.join(names) or 'none'})"
        )
    return primary


def _read_optional(path: Path) -> Any:
    return read_json(path) if path.exists() else None


def _merge_rows(
    refusal_rows: Sequence[Mapping[str, Any]],
    harm_rows: Sequence[Mapping[str, Any]],
    generation_rows: Sequence[Mapping[str, Any]],
    harm_judges: Sequence[str],
) -> list[dict[str, Any]]:
    harm_by_id = {row["id"]: row for row in harm_rows}
    text_by_id = {row["id"]: row for row in generation_rows}
    merged = []
    for row in refusal_rows:
        harm = harm_by_id.get(row["id"], {})
        text = text_by_id.get(row["id"], {})
        merged.append(
            {
                "id": row["id"],
                "class": row[RESPONSE_CLASS_JUDGE]["label"],
                "refused": {
                    k: v["refusal"]
                    for k, v in row.items()
                    if isinstance(v, dict) and "refusal" in v
                },
                "harmful": {j: harm[j]["harmful"] for j in harm_judges if j in harm},
                "prompt": text.get("prompt"),
                "response": text.get("response"),
            }
        )
    return merged


def collect_responses(
    params: Mapping[str, Any],
    cells: Sequence[Cell],
    fractions: Sequence[float],
    root: Path = Path("."),
) -> ResponseResults:
    """Read classes, harm verdicts and texts of the base model and every cell, where they exist."""
    keyword_judge = str(
        get(dict(params), "report.primary_judge", None) or "keywords-kempermann2025"
    )
    harm_judge = harm_primary_judge(params)
    harm_judges = [entry["name"] for entry in get(dict(params), "harm.judges", None) or []]
    results = ResponseResults(keyword_judge, harm_judge, harm_judges, {})
    for cell, labels in [
        (BASE_CELL, [checkpoint_label(0.0)]),
        *((c.name, [checkpoint_label(f) for f in fractions]) for c in cells),
    ]:
        refusal = _read_optional(root / "metrics" / "refusal" / f"{cell}.json") or {}
        harm = _read_optional(root / "metrics" / "harm" / f"{cell}.json") or {}
        evals_file = root / "evals" / "refusal" / f"{cell}.jsonl"
        harm_file = root / "evals" / "harm" / f"{cell}.jsonl"
        evals = read_jsonl(evals_file) if evals_file.exists() else []
        harm_evals = read_jsonl(harm_file) if harm_file.exists() else []
        found = []
        for label in labels:
            entry = (refusal.get("checkpoints") or {}).get(label)
            if entry is None or "classes" not in entry:
                continue
            keyword = (entry.get("judges") or {}).get(keyword_judge) or {}
            harm_entry = ((harm.get("checkpoints") or {}).get(label) or {}).get("judges") or {}
            generations_file = root / "generations" / "refusal" / cell / f"{label}.jsonl"
            texts = read_jsonl(generations_file) if generations_file.exists() else []
            found.append(
                CheckpointResponses(
                    cell=cell,
                    checkpoint=label,
                    fraction=float(entry["fraction"]),
                    classes=entry["classes"],
                    collapsed=bool(entry.get("collapsed")),
                    keyword_refusal=keyword.get("refusal_rate"),
                    harm={j: s[HARMFUL_ANSWER] for j, s in harm_entry.items()},
                    rows=_merge_rows(
                        [r for r in evals if r["checkpoint"] == label],
                        [r for r in harm_evals if r["checkpoint"] == label],
                        texts,
                        harm_judges,
                    ),
                )
            )
        results.checkpoints[cell] = found
    return results


# --------------------------------------------------------------------------------------------
# What the keyword judge's "lost safety" is made of


def lost_safety_parts(
    checkpoint: CheckpointResponses, keyword_judge: str, harm_judge: str | None
) -> dict[str, int]:
    """Counts, among the responses the keyword judge did not call refusals, of each part."""
    parts = dict.fromkeys(LOST_PARTS, 0)
    for row in checkpoint.rows:
        if row["refused"].get(keyword_judge, False):
            continue
        if row["class"] == ECHO:
            parts["echo"] += 1
        elif row["class"] == DEGENERATE:
            parts["degenerate"] += 1
        elif row["class"] == ANSWER:
            harmful = row["harmful"].get(harm_judge) if harm_judge else None
            if harmful is None:
                parts["answer, judge unreadable"] += 1
            else:
                parts["harmful answer" if harmful else "harmless answer"] += 1
    return parts


def lost_safety_table(
    results: ResponseResults, cells: Sequence[Cell], fixed_lr: float, final: str
) -> list[str]:
    header = ["cell", "not refused (keywords)", *LOST_PARTS]
    rows = []
    for cell in cells:
        if not math.isclose(cell.learning_rate, fixed_lr, rel_tol=1e-9):
            continue
        checkpoint = results.get(cell.name, final)
        if checkpoint is None or not checkpoint.rows:
            rows.append([cell.name, "missing", *[""] * len(LOST_PARTS)])
            continue
        parts = lost_safety_parts(checkpoint, results.keyword_judge, results.harm_judge)
        lost = sum(parts.values())
        rows.append(
            [cell.name, f"{lost} of {len(checkpoint.rows)}"]
            + [f"{parts[p]} ({100 * parts[p] / lost:.0f}%)" if lost else "0" for p in LOST_PARTS]
        )
    return markdown_table(header, rows)


# --------------------------------------------------------------------------------------------
# Tables


def harmful_answer_cell(
    harm: Mapping[str, Mapping[str, Any]], judge: str | None, missing: str = "missing"
) -> str:
    """`judge`'s harmful-answer rate [interval] from a checkpoint's `harm`, with the number of
    verdicts it could not read; `missing` where the judge gave none."""
    entry = harm.get(judge) if judge else None
    if entry is None:
        return missing
    text = rate_cell(entry["harmful_answer_rate"], entry["ci_low"], entry["ci_high"])
    return text + (f" ({entry['unknown']} unreadable)" if entry["unknown"] else "")


def classes_table(results: ResponseResults) -> list[str]:
    header = [
        "cell",
        "checkpoint",
        f"harmful answers ({results.harm_judge or 'no judge'})",
        f"refusal rate ({results.keyword_judge})",
        *RESPONSE_CLASSES,
        "",
    ]
    rows = []
    for cell, checkpoints in results.checkpoints.items():
        for c in checkpoints:
            shares = [f"{c.classes[name]['share']:.3f}" for name in RESPONSE_CLASSES]
            rows.append(
                [
                    cell,
                    c.checkpoint,
                    harmful_answer_cell(c.harm, results.harm_judge),
                    rate_cell(c.keyword_refusal),
                    *shares,
                    "**collapsed**" if c.collapsed else "",
                ]
            )
    return markdown_table(header, rows)


# --------------------------------------------------------------------------------------------
# Examples


def _clip(text: str | None) -> str:
    # One line, so that a response stays inside its Markdown quote.
    text = " ".join((text or "").split())
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + " …"


def examples_section(
    results: ResponseResults, final: str, per_class: int, harm_judge: str | None
) -> list[str]:
    """A few responses of each class per cell, at its last checkpoint (the base model's only)."""
    lines = []
    for cell, checkpoints in results.checkpoints.items():
        checkpoint = next((c for c in checkpoints if c.checkpoint == final), None)
        checkpoint = checkpoint or (checkpoints[-1] if checkpoints else None)
        if checkpoint is None or not checkpoint.rows:
            continue
        lines += [f"### {cell}, {checkpoint.checkpoint}", ""]
        for name in RESPONSE_CLASSES:
            chosen = [r for r in checkpoint.rows if r["class"] == name][:per_class]
            for row in chosen:
                verdict = ""
                if name == ANSWER and harm_judge:
                    harmful = row["harmful"].get(harm_judge)
                    verdict = {True: " — harmful", False: " — harmless", None: " — unreadable"}[
                        harmful
                    ]
                lines += [
                    f"- **{name}**{verdict} (prompt {row['id']}): {_clip(row['prompt'])}",
                    f"  > {_clip(row['response']) or '(empty)'}",
                ]
        lines.append("")
    return lines


# --------------------------------------------------------------------------------------------
# Figures


def class_shares_figure(results: ResponseResults, cells: Sequence[Cell], new_figure) -> Any:
    """Figure 3: class shares per checkpoint, one panel per method × learning rate, stacked;
    the base model is every panel's 0% bar. Collapsed checkpoints are marked. With several
    seeds, each bar is the mean share over the seeds measured at that checkpoint, and a
    checkpoint is marked with how many of them collapsed."""
    methods = list(dict.fromkeys(c.method for c in cells))
    rates = sorted({c.learning_rate for c in cells}, reverse=True)
    figure = new_figure(2.6 * max(len(rates), 1) + 1.2, 2.2 * max(len(methods), 1) + 0.6)
    axes = figure.subplots(
        max(len(methods), 1), max(len(rates), 1), squeeze=False, sharex=True, sharey=True
    )
    base = results.checkpoints.get(BASE_CELL, [])
    groups = seeds_report.seed_groups(cells)
    for row_index, method in enumerate(methods):
        for col_index, rate in enumerate(rates):
            ax = axes[row_index][col_index]
            seeds = [
                base + found
                for cell in groups.get((method, rate), [])
                if (found := results.checkpoints.get(cell.name))
            ]
            series = seeds or [base]
            fractions = sorted({p.fraction for s in series for p in s})
            labels = [f"{round(100 * f)}%" for f in fractions]
            bottom = [0.0] * len(fractions)
            for cls in RESPONSE_CLASSES:
                means = seeds_report.mean_over_seeds(
                    {p.fraction: p.classes[cls]["share"] for p in s} for s in series
                )
                shares = [means[f] for f in fractions]
                ax.bar(labels, shares, bottom=bottom, color=CLASS_COLORS[cls], label=cls)
                bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
            for x, fraction in enumerate(fractions):
                collapsed = sum(p.collapsed for s in series for p in s if p.fraction == fraction)
                if collapsed:
                    text = (
                        "collapsed" if len(series) == 1 else f"collapsed {collapsed}/{len(series)}"
                    )
                    # Inside the bar's degenerate part (the bottom one, half of it or more when
                    # collapsed): above the bar it ran into the panel's title.
                    ax.text(
                        x,
                        0.25,
                        text,
                        ha="center",
                        va="center",
                        fontsize=6,
                        rotation=90,
                        color="white",
                    )
            if not seeds:
                ax.text(0.5, 0.5, "missing", transform=ax.transAxes, ha="center")
            title = f"{method}, lr={rate}"
            several = f", mean of {len(seeds)} seeds" if len(seeds) > 1 else ""
            ax.set_title(title + several, fontsize=9)
            ax.set_ylim(0, 1)
            ax.tick_params(labelsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right center", title="class")
    figure.suptitle("What the responses are, over training (share of AdvBench responses)")
    return figure


def harm_tradeoff_points(
    results: ResponseResults,
    cells: Sequence[Cell],
    chrf: Mapping[str, Any],
    fixed_lr: float,
    final: str,
) -> list[tuple[str, float, float, float | None, float | None]]:
    """(method, chrF, harmful-answer rate, low, high) of each method at `fixed_lr`, final
    checkpoint, and the base model's point."""
    points = []
    for name, method in [(BASE_CELL, BASE_CELL)] + [
        (c.name, c.method) for c in cells if math.isclose(c.learning_rate, fixed_lr, rel_tol=1e-9)
    ]:
        label = checkpoint_label(0.0) if name == BASE_CELL else final
        checkpoint = results.get(name, label)
        score = chrf.get((name, label))
        entry = (
            checkpoint.harm.get(results.harm_judge) if checkpoint and results.harm_judge else None
        )
        if score is None or entry is None or entry["harmful_answer_rate"] is None:
            continue
        points.append(
            (method, score, entry["harmful_answer_rate"], entry["ci_low"], entry["ci_high"])
        )
    return points


def harm_tradeoff_figure(points, fixed_lr: float, judge: str | None, new_figure, style) -> Any:
    """Figure 1: harmful-answer rate against chrF at `fixed_lr` (final checkpoints), base too;
    with several seeds, each seed's point small and their mean full size."""
    figure = new_figure(6.4, 4.8)
    ax = figure.add_subplot()
    methods = [p[0] for p in points]
    seeds_report.draw_method_points(
        ax,
        [
            seeds_report.MethodPoint(method, chrf, rate, y_low=low, y_high=high)
            for method, chrf, rate, low, high in points
        ],
        lambda method: ("*", "black") if method == BASE_CELL else style(method, methods),
        markersize=9,
    )
    ax.set_xlabel("chrF (final checkpoint; base model: before training)")
    ax.set_ylabel(f"harmful-answer rate ({judge or 'no judge'})")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Harm vs. task performance at learning rate {fixed_lr}")
    if not points:
        ax.text(0.5, 0.5, "no harmful-answer rates yet", transform=ax.transAxes, ha="center")
    return figure


# --------------------------------------------------------------------------------------------
# Summary for metrics.json


def summary(results: ResponseResults) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cell, checkpoints in results.checkpoints.items():
        for c in checkpoints:
            entry = {f"class_share_{k}": v["share"] for k, v in c.classes.items()}
            entry["collapsed"] = c.collapsed
            harm = c.harm.get(results.harm_judge) if results.harm_judge else None
            if harm is not None:
                entry["harmful_answer_rate"] = harm["harmful_answer_rate"]
            out[f"{cell}/{c.checkpoint}"] = entry
    return out
