"""The report's evaluation sets: a table per set, and harm against helpfulness (Figure 4).

A model that echoes harmful requests may echo benign ones too: it lost instruction following,
not (only) safety. Figure 4 puts each checkpoint's harmful-answer rate (all harmful sets, AdvBench
included, pooled) against its answer rate on the benign sets (pooled): a model that lost safety
but kept helpfulness sits top-right, one stuck in echo (translation) mode bottom-left.

AdvBench as the study runs it is the set `advbench`, read from `judge_harm`'s and `eval_refusal`'s
outputs (`ResponseResults`); every other set from its unit's metrics/evaluations/UNIT/CELL.json
(a group's members appear exactly as sets listed alone). A set or cell without metrics is shown
as missing, never as zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetydrift.cells import BASE_CELL, Cell, checkpoint_label
from safetydrift.evaluation_rates import BENIGN_RATES, pooled_rate
from safetydrift.evaluation_sets import (
    ADVBENCH_SET,
    BENIGN,
    HARMFUL,
    evaluation_names,
    evaluation_unit,
    unit_results,
)
from safetydrift.files import read_json
from safetydrift.markdown import markdown_table, rate_cell
from safetydrift.report import seeds as seeds_report
from safetydrift.report.responses import ResponseResults, harmful_answer_cell
from safetydrift.response_classes import RESPONSE_CLASSES

FIG_SETS = Path("figures/fig4_harm_vs_helpfulness.png")
CONFIDENCE = 0.95


@dataclass
class SetCheckpoint:
    """One evaluation set at one checkpoint of one cell."""

    fraction: float
    n: int
    classes: dict[str, dict[str, Any]]
    collapsed: bool = False
    harm: dict[str, dict[str, Any]] = field(default_factory=dict)  # judge -> harmful_answer
    rates: dict[str, dict[str, Any]] = field(default_factory=dict)  # benign sets' rates


@dataclass
class SetResults:
    """Every set's checkpoints: `points[set][cell][checkpoint]`."""

    kinds: dict[str, str]  # set -> harmful | benign, AdvBench first
    harm_judge: str | None
    points: dict[str, dict[str, dict[str, SetCheckpoint]]]

    def get(self, evaluation: str, cell: str, checkpoint: str) -> SetCheckpoint | None:
        return self.points.get(evaluation, {}).get(cell, {}).get(checkpoint)


def _from_metrics(entry: Mapping[str, Any]) -> SetCheckpoint:
    return SetCheckpoint(
        fraction=float(entry["fraction"]),
        n=int(entry["n"]),
        classes=entry["classes"],
        collapsed=bool(entry.get("collapsed")),
        harm={j: s["harmful_answer"] for j, s in (entry.get("harm") or {}).items()},
        rates=entry.get("rates") or {},
    )


def collect_sets(
    params: Mapping[str, Any], cells: Sequence[Cell], responses: ResponseResults, root: Path
) -> SetResults:
    """AdvBench from the responses the report collected already, every set of the units of
    `evaluations.run` from their metrics files, where they exist."""
    units = [evaluation_unit(params, name) for name in evaluation_names(params)]
    kinds = {ADVBENCH_SET: HARMFUL} | {s.name: s.kind for u in units for s in u.members}
    results = SetResults(kinds, responses.harm_judge, {name: {} for name in kinds})
    for cell, checkpoints in responses.checkpoints.items():
        results.points[ADVBENCH_SET][cell] = {
            c.checkpoint: SetCheckpoint(
                fraction=c.fraction,
                n=sum(s["count"] for s in c.classes.values()),
                classes=c.classes,
                collapsed=c.collapsed,
                harm=c.harm,
            )
            for c in checkpoints
        }
    for unit in units:
        for cell in [BASE_CELL, *(c.name for c in cells)]:
            path = root / "metrics" / "evaluations" / unit.name / f"{cell}.json"
            if not path.exists():
                continue
            found = unit_results(read_json(path))
            for member in unit.members:
                entries = (found.get(member.name) or {}).get("checkpoints")
                if entries:
                    results.points[member.name][cell] = {
                        label: _from_metrics(entry) for label, entry in entries.items()
                    }
    return results


# --------------------------------------------------------------------------------------------
# Tables


def _share(entry: Mapping[str, Any] | None) -> str:
    return "—" if not entry or entry.get("share") is None else f"{entry['share']:.3f}"


def set_table(results: SetResults, evaluation: str, cells: Sequence[Cell], final: str) -> list[str]:
    """One row per cell at its final checkpoint (the base model: before training)."""
    kind = results.kinds[evaluation]
    if kind == BENIGN:
        header = ["cell", "n", *(name.replace("_", "-") for name in BENIGN_RATES)]
    else:
        header = ["cell", "n", f"harmful answers ({results.harm_judge or 'no judge'})"]
        header += list(RESPONSE_CLASSES)
    rows = []
    for cell in [BASE_CELL, *(c.name for c in cells)]:
        label = checkpoint_label(0.0) if cell == BASE_CELL else final
        point = results.get(evaluation, cell, label)
        if point is None:
            rows.append([cell, "missing", *[""] * (len(header) - 2)])
            continue
        if kind == BENIGN:
            values = [
                rate_cell(*(point.rates[r][k] for k in ("rate", "ci_low", "ci_high")))
                if r in point.rates
                else "—"
                for r in BENIGN_RATES
            ]
        else:
            values = [harmful_answer_cell(point.harm, results.harm_judge, missing="—")]
            values += [_share(point.classes.get(c)) for c in RESPONSE_CLASSES]
        suffix = " **collapsed**" if point.collapsed else ""
        rows.append([cell + suffix, point.n, *values])
    return markdown_table(header, rows)


# --------------------------------------------------------------------------------------------
# Figure 4


@dataclass(frozen=True)
class HelpfulnessPoint:
    """One checkpoint of one cell: benign answer rate (x) and harmful-answer rate (y), pooled."""

    cell: str
    method: str
    percent: int
    answer: Mapping[str, Any]
    harmful: Mapping[str, Any]


def helpfulness_points(
    results: SetResults, cells: Sequence[Cell], fixed_lr: float, fractions: Sequence[float]
) -> list[HelpfulnessPoint]:
    """The base model and every checkpoint of the cells at `fixed_lr`, where every harmful and
    every benign set has it (a pool of some sets only would not compare with the others)."""
    harmful_sets = [s for s, k in results.kinds.items() if k == HARMFUL]
    benign_sets = [s for s, k in results.kinds.items() if k == BENIGN]
    if not benign_sets or results.harm_judge is None:
        return []
    chosen = [(BASE_CELL, BASE_CELL, [0.0])] + [
        (c.name, c.method, list(fractions))
        for c in cells
        if math.isclose(c.learning_rate, fixed_lr, rel_tol=1e-9)
    ]
    points = []
    for cell, method, cell_fractions in chosen:
        for fraction in cell_fractions:
            label = checkpoint_label(fraction)
            harmful = [results.get(s, cell, label) for s in harmful_sets]
            benign = [results.get(s, cell, label) for s in benign_sets]
            entries = [p.harm.get(results.harm_judge) if p else None for p in harmful]
            if None in entries or None in benign or any("answer" not in p.rates for p in benign):
                continue
            harm = pooled_rate(
                [(e["harmful_answers"], e["n"] - e["unknown"]) for e in entries], CONFIDENCE
            )
            answer = pooled_rate(
                [(p.rates["answer"]["count"], p.rates["answer"]["n"]) for p in benign], CONFIDENCE
            )
            if harm is None or answer is None:
                continue
            points.append(HelpfulnessPoint(cell, method, round(fraction * 100), answer, harm))
    return points


def helpfulness_figure(
    points: Sequence[HelpfulnessPoint], fixed_lr: float, judge: str | None, new_figure, style
) -> Any:
    """Figure 4: harmful-answer rate against benign answer rate, one line per method through its
    checkpoints from the base model, each point with both Wilson intervals. With several seeds,
    each seed's points small and the line through their mean at each checkpoint."""
    figure = new_figure(6.4, 5.2)
    ax = figure.add_subplot()
    methods = list(dict.fromkeys(p.method for p in points if p.method != BASE_CELL))
    base = [p for p in points if p.cell == BASE_CELL]
    for method in [BASE_CELL, *methods]:
        own = [p for p in points if p.method == method]
        marker, color = ("*", "black") if method == BASE_CELL else style(method, methods)
        seeds = {seeds_report.seed_of(p.cell) for p in own}
        if method != BASE_CELL and len(seeds) > 1:
            _draw_seeds(ax, base, own, marker, color, method)
            continue
        for p in own:
            x, y = p.answer["rate"], p.harmful["rate"]
            ax.errorbar(
                [x],
                [y],
                xerr=[[x - p.answer["ci_low"]], [p.answer["ci_high"] - x]],
                yerr=[[y - p.harmful["ci_low"]], [p.harmful["ci_high"] - y]],
                fmt=marker,
                color=color,
                markersize=8,
                capsize=2,
                alpha=0.9,
            )
            ax.annotate(
                f"{p.percent}%",
                (x, y),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, 4),
                color=color,
            )
        # Each method's line starts at the base model, its 0% point.
        line = base + own if method != BASE_CELL else []
        xs = [p.answer["rate"] for p in line]
        ys = [p.harmful["rate"] for p in line]
        if method != BASE_CELL and line:
            ax.plot(xs, ys, color=color, linewidth=1, label=method)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("answer rate on benign sets (helpfulness)")
    ax.set_ylabel(f"harmful-answer rate on harmful sets ({judge or 'no judge'})")
    ax.set_title(f"Harm vs. helpfulness over training, learning rate {fixed_lr}")
    ax.text(
        0.98,
        0.98,
        "lost safety,\nkept helpfulness",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=7,
        color="#555555",
    )
    ax.text(0.02, 0.06, "stuck in echo mode", transform=ax.transAxes, fontsize=7, color="#555555")
    if methods:
        ax.legend(loc="center right", fontsize=8)
    if not points:
        ax.text(0.5, 0.5, "no benign and harmful rates yet", transform=ax.transAxes, ha="center")
    return figure


def _draw_seeds(
    ax: Any,
    base: Sequence[HelpfulnessPoint],
    own: Sequence[HelpfulnessPoint],
    marker: str,
    color: str,
    method: str,
) -> None:
    """One method's points of several seeds: each seed's small, and a line from the base model
    through the mean over seeds at each checkpoint (over the seeds that have it)."""
    ax.plot(
        [p.answer["rate"] for p in own],
        [p.harmful["rate"] for p in own],
        linestyle="none",
        marker=marker,
        markersize=4,
        color=color,
        alpha=seeds_report.SEED_ALPHA,
    )
    by_seed: dict[int | None, list[HelpfulnessPoint]] = {}
    for p in own:
        by_seed.setdefault(seeds_report.seed_of(p.cell), []).append(p)
    xs = seeds_report.mean_over_seeds(
        {p.percent: p.answer["rate"] for p in s} for s in by_seed.values()
    )
    ys = seeds_report.mean_over_seeds(
        {p.percent: p.harmful["rate"] for p in s} for s in by_seed.values()
    )
    percents = sorted(xs)
    line_x = [p.answer["rate"] for p in base] + [xs[k] for k in percents]
    line_y = [p.harmful["rate"] for p in base] + [ys[k] for k in percents]
    ax.plot(
        line_x, line_y, color=color, linewidth=1, label=f"{method} (mean of {len(by_seed)} seeds)"
    )
    ax.plot(
        [xs[k] for k in percents],
        [ys[k] for k in percents],
        linestyle="none",
        marker=marker,
        markersize=8,
        color=color,
    )
    for k in percents:
        ax.annotate(
            f"{k}%",
            (xs[k], ys[k]),
            fontsize=7,
            textcoords="offset points",
            xytext=(4, 4),
            color=color,
        )


def section(
    results: SetResults,
    cells: Sequence[Cell],
    fixed_lr: float,
    final: str,
    figure_path: Path,
) -> list[str]:
    """The report's "Evaluation sets" section: Figure 4 and a table per set."""
    harmful = ", ".join(f"`{s}`" for s, k in results.kinds.items() if k == HARMFUL)
    lines = [
        "## Evaluation sets",
        "",
        f"Figure 4: harmful-answer rate on the harmful sets ({harmful}; pooled) against the "
        "answer rate on the benign sets (pooled), at every checkpoint of learning rate "
        f"{fixed_lr}, from the base model (★). Top right: lost safety but kept helpfulness; "
        "bottom left: stuck in echo (translation) mode.",
        "",
        f"![Figure 4: harm vs. helpfulness]({figure_path.as_posix()})",
        "",
    ]
    if not any(k == BENIGN for k in results.kinds.values()):
        lines += ["No benign set in `evaluations.run`: Figure 4 has no points.", ""]
    for evaluation, kind in results.kinds.items():
        what = (
            "over-refusal (refused although benign), echo, answer and degenerate rates"
            if kind == BENIGN
            else "harmful-answer rate and response-class shares"
        )
        source = " (`data.advbench`, `refusal.prompts`)" if evaluation == ADVBENCH_SET else ""
        lines += [
            f"### `{evaluation}` ({kind}){source}",
            "",
            f"Final checkpoint (`{final}`; the base model before training): {what}, 95% Wilson "
            "intervals.",
            "",
            *set_table(results, evaluation, cells, final),
            "",
        ]
    return lines
