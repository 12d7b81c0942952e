"""The report's seed axis: mean and spread over the seeds of `grid.seeds`, and each seed drawn.

A cell's interval (Wilson's, the bootstrap's) covers the sampling of prompts and sentences only:
two trainings of one method and learning rate with different seeds can move much further (issue
20: DPO at 1e-5 gave a keyword refusal rate of 0.215 on one run, 0.021 on the next). With several
seeds the report states, per method, learning rate and checkpoint, the mean over seeds of the
refusal rate, the harmful-answer rate and chrF with their spread (sample sd, min–max; every seed's
value in `seeds.csv`), and the figures draw each seed's point small beside the mean. With one seed
there is no spread to state, and the figures keep each cell's own interval.

A seed whose cell has no value (yet) is left out of that mean, and the count says how many seeds
it holds: a missing seed is never a zero.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from safetydrift.cells import Cell, parse_cell
from safetydrift.report.results import CurvePoint, Estimate, GridResults, csv_number

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    # Only a type: `responses` imports this module.
    from safetydrift.report.responses import ResponseResults

SEEDS_CSV = Path("seeds.csv")
REFUSAL_RATE = "refusal_rate"
HARMFUL_ANSWER_RATE = "harmful_answer_rate"
CHRF = "chrf"
CSV_FIELDS = (
    "method", "learning_rate", "checkpoint", "fraction", "metric", "judge", "seeds",
    "of_seeds", "mean", "sd", "min", "max", "values",
)  # fmt: skip
# How a seed's own point is drawn beside the mean: smaller, and see-through where points overlap.
SEED_ALPHA = 0.45
SEED_SCALE = 0.5

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class Spread:
    """The values of the seeds that have one (seed -> value, in `grid.seeds` order)."""

    values: Mapping[int | None, float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values())

    @property
    def sd(self) -> float | None:
        """The sample standard deviation over seeds; None for one seed."""
        return statistics.stdev(self.values.values()) if self.n > 1 else None

    @property
    def low(self) -> float:
        return min(self.values.values())

    @property
    def high(self) -> float:
        return max(self.values.values())


def spread(values: Mapping[int | None, float | None]) -> Spread | None:
    """The spread of the seeds that have a value; None when none has."""
    present = {seed: value for seed, value in values.items() if value is not None}
    return Spread(present) if present else None


def seed_groups(cells: Iterable[Cell]) -> dict[tuple[str, float], list[Cell]]:
    """The cells of each (method, learning rate), one per seed, in the grid's order."""
    groups: dict[tuple[str, float], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.method, cell.learning_rate), []).append(cell)
    return groups


def seeds_of(cells: Iterable[Cell]) -> list[int | None]:
    """The grid's seeds (None alone for results from before the seed axis)."""
    return list(dict.fromkeys(cell.seed for cell in cells))


def mean_over_seeds(series: Iterable[Mapping[Key, float]]) -> dict[Key, float]:
    """For each key (a checkpoint, a percent of training), the mean of the seeds that have it, in
    the order the keys first appear."""
    gathered: dict[Key, list[float]] = {}
    for values in series:
        for key, value in values.items():
            gathered.setdefault(key, []).append(value)
    return {key: statistics.fmean(values) for key, values in gathered.items()}


def seed_of(cell: str) -> int | None:
    """The seed in a cell's name; None for the base model and cells from before the seed axis."""
    try:
        return parse_cell(cell).seed
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# Mean and spread per method, learning rate and checkpoint


@dataclass(frozen=True)
class SeedRow:
    """One metric of one method and learning rate at one checkpoint, over its seeds."""

    method: str
    learning_rate: float
    checkpoint: str
    fraction: float
    metric: str  # REFUSAL_RATE, HARMFUL_ANSWER_RATE or CHRF
    judge: str | None
    of_seeds: int  # the seeds the grid trains this method and rate with
    spread: Spread | None  # None: no seed has the value yet


def seed_rows(results: GridResults, responses: ResponseResults) -> list[SeedRow]:
    """Every (method, learning rate, checkpoint) of the grid: the primary judge's refusal rate,
    the primary harm judge's harmful-answer rate (where `harm.judges` has one) and chrF."""

    def refusal(cell: Cell, checkpoint: str) -> float | None:
        row = results.row(cell.name, checkpoint)
        estimate = row.refusal.get(results.primary_judge) if row else None
        return None if estimate is None else estimate.value

    def chrf(cell: Cell, checkpoint: str) -> float | None:
        row = results.row(cell.name, checkpoint)
        return None if row is None or row.chrf is None else row.chrf.value

    def harmful(cell: Cell, checkpoint: str) -> float | None:
        found = responses.get(cell.name, checkpoint)
        entry = found.harm.get(responses.harm_judge) if found and responses.harm_judge else None
        return None if entry is None else entry["harmful_answer_rate"]

    metrics: list[tuple[str, str | None, Callable[[Cell, str], float | None]]] = [
        (REFUSAL_RATE, results.primary_judge, refusal),
        (HARMFUL_ANSWER_RATE, responses.harm_judge, harmful),
        (CHRF, None, chrf),
    ]
    if responses.harm_judge is None:
        metrics.pop(1)
    rows = []
    for (method, rate), cells in seed_groups(results.cells).items():
        checkpoints: dict[str, float] = {}
        for cell in cells:
            for row in results.rows[cell.name]:
                checkpoints.setdefault(row.checkpoint, row.fraction)
        for label, fraction in sorted(checkpoints.items(), key=lambda item: (item[1], item[0])):
            for metric, judge, value in metrics:
                values = spread({cell.seed: value(cell, label) for cell in cells})
                rows.append(
                    SeedRow(method, rate, label, fraction, metric, judge, len(cells), values)
                )
    return rows


def csv_rows(rows: Sequence[SeedRow]) -> list[dict[str, str]]:
    """`seeds.csv`: one row per method, learning rate, checkpoint and metric; `values` lists
    each seed's as SEED=VALUE; a metric no seed has yet is written with empty numbers."""
    out = []
    for row in rows:
        s = row.spread
        out.append(
            {
                "method": row.method,
                "learning_rate": repr(row.learning_rate),
                "checkpoint": row.checkpoint,
                "fraction": repr(row.fraction),
                "metric": row.metric,
                "judge": row.judge or "",
                "seeds": str(0 if s is None else s.n),
                "of_seeds": str(row.of_seeds),
                "mean": "" if s is None else repr(s.mean),
                "sd": "" if s is None else csv_number(s.sd),
                "min": "" if s is None else repr(s.low),
                "max": "" if s is None else repr(s.high),
                "values": ""
                if s is None
                else ";".join(f"{seed}={value!r}" for seed, value in s.values.items()),
            }
        )
    return out


def describe(row: SeedRow, digits: int) -> str:
    """`0.118 (sd 0.137; 0.021–0.215)`, with `2 of 3 seeds` where some seed lacks the value."""
    s = row.spread
    if s is None:
        return "missing"
    parts = []
    if s.sd is not None:
        parts += [f"sd {s.sd:.{digits}f}", f"{s.low:.{digits}f}–{s.high:.{digits}f}"]
    if s.n < row.of_seeds:
        parts.append(f"{s.n} of {row.of_seeds} seeds")
    return f"{s.mean:.{digits}f}" + (f" ({'; '.join(parts)})" if parts else "")


def section(rows: Sequence[SeedRow], seeds: Sequence[int | None], csv_path: Path) -> list[str]:
    """The report's "Seeds" section: the mean and spread table, or why there is none."""
    lines = ["## Seeds", ""]
    named = [seed for seed in seeds if seed is not None]
    if len(seeds) < 2:
        trained = f"with seed {named[0]} (`grid.seeds`)" if named else "once (`train.seed`)"
        return lines + [
            f"Each method and learning rate was trained {trained}: the intervals in this "
            "report cover the sampling of prompts and sentences, not a retraining, which can "
            "move a cell further. `grid.seeds: [42, 43, 44]` trains each three times (only the "
            "new seeds' cells run); this section then states the mean and spread over seeds.",
            "",
        ]
    judges = {row.metric: row.judge for row in rows}
    columns = [(REFUSAL_RATE, f"refusal rate ({judges.get(REFUSAL_RATE)})", 3)]
    if HARMFUL_ANSWER_RATE in judges:
        columns.append(
            (HARMFUL_ANSWER_RATE, f"harmful-answer rate ({judges[HARMFUL_ANSWER_RATE]})", 3)
        )
    columns.append((CHRF, "chrF", 1))
    by_key = {(r.method, r.learning_rate, r.checkpoint, r.metric): r for r in rows}
    keys = list(dict.fromkeys((r.method, r.learning_rate, r.checkpoint) for r in rows))
    table = [
        [
            method,
            rate,
            checkpoint,
            by_key[(method, rate, checkpoint, REFUSAL_RATE)].of_seeds,
            *(
                describe(by_key[(method, rate, checkpoint, metric)], digits)
                for metric, _, digits in columns
            ),
        ]
        for method, rate, checkpoint in keys
    ]
    header = ["method", "learning rate", "checkpoint", "seeds", *(title for _, title, _ in columns)]
    return lines + [
        f"Each method and learning rate was trained with {len(seeds)} seeds "
        f"({', '.join(map(str, named))}; `grid.seeds`), each a cell of its own (METHOD-LR-SEED) in "
        "the other tables. Here, per checkpoint, the mean over seeds with its spread: the sample "
        "standard deviation and the range (lowest–highest seed). A seed's interval covers the "
        "sampling of prompts only; the spread is what retraining moves. Every seed's value: "
        f"`{csv_path.as_posix()}`. The figures draw each seed's point small beside the mean "
        "(Figures 2 and 4: a line through the means); Figure 3's bars are the mean shares.",
        "",
        *_table(header, table),
        "",
    ]


def _table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def paper_estimate(
    results: GridResults, cell: str, checkpoint: str, value: Callable[[Any], Estimate | None]
) -> Estimate | None:
    """Ours for a published figure of cell METHOD-LR: that cell's where the results have it (the
    base model, results from before the seed axis), else the mean over the seeds of that method
    and learning rate (one seed: its estimate, interval included). `value` picks the metric's
    estimate from a result row."""
    row = results.row(cell, checkpoint)
    if row is not None:
        return value(row)
    try:
        wanted = parse_cell(cell)
    except ValueError:
        return None
    found = [
        estimate
        for c in results.cells
        if (c.method, c.learning_rate) == (wanted.method, wanted.learning_rate)
        and (row := results.row(c.name, checkpoint)) is not None
        and (estimate := value(row)) is not None
    ]
    if len(found) < 2:
        return found[0] if found else None
    mean = statistics.fmean(e.value for e in found)
    return dataclasses.replace(found[0], value=mean, ci_low=None, ci_high=None, n=None)


# --------------------------------------------------------------------------------------------
# Each seed in the figures


def draw_curve(
    ax: Axes, by_seed: Mapping[int | None, Sequence[CurvePoint]], color: str, label: str
) -> None:
    """Figure 2's curve of one method and learning rate. One seed: its points joined, its
    intervals a band. Several: each seed's points small, and a line through their mean at each
    checkpoint (over the seeds measured there)."""
    if len(by_seed) == 1:
        (points,) = by_seed.values()
        xs = [p.percent for p in points]
        ax.plot(
            xs,
            [p.estimate.value for p in points],
            marker="o",
            markersize=4,
            color=color,
            label=label,
        )
        banded = [p for p in points if None not in (p.estimate.ci_low, p.estimate.ci_high)]
        if banded:
            ax.fill_between(
                [p.percent for p in banded],
                [p.estimate.ci_low for p in banded],
                [p.estimate.ci_high for p in banded],
                color=color,
                alpha=0.15,
                linewidth=0,
            )
        return
    for points in by_seed.values():
        ax.plot(
            [p.percent for p in points],
            [p.estimate.value for p in points],
            linestyle="none",
            marker="o",
            markersize=4 * SEED_SCALE,
            color=color,
            alpha=SEED_ALPHA,
        )
    means = mean_over_seeds(
        {p.percent: p.estimate.value for p in points} for points in by_seed.values()
    )
    xs = sorted(means)
    ax.plot(xs, [means[x] for x in xs], marker="o", markersize=4, color=color, label=label)


@dataclass(frozen=True)
class MethodPoint:
    """One cell's point in a trade-off figure (x, y) with its intervals where known."""

    method: str
    x: float
    y: float
    x_low: float | None = None
    x_high: float | None = None
    y_low: float | None = None
    y_high: float | None = None


def _errors(value: float, low: float | None, high: float | None) -> list[list[float]]:
    return [[value - low if low is not None else 0.0], [high - value if high is not None else 0.0]]


def draw_method_points(
    ax: Axes,
    points: Sequence[MethodPoint],
    style: Callable[[str], tuple[str, str]],
    markersize: float = 8,
) -> None:
    """One labelled marker per method. One seed: the cell's point with its intervals. Several:
    each seed's point small, and the mean over seeds full size (without an interval: the seeds'
    points are the spread)."""
    for method in dict.fromkeys(p.method for p in points):
        own = [p for p in points if p.method == method]
        marker, color = style(method)
        if len(own) == 1:
            (p,) = own
            ax.errorbar(
                [p.x],
                [p.y],
                xerr=_errors(p.x, p.x_low, p.x_high),
                yerr=_errors(p.y, p.y_low, p.y_high),
                fmt=marker,
                color=color,
                markersize=markersize,
                capsize=3,
                label=method,
            )
            at = (p.x, p.y)
        else:
            ax.plot(
                [p.x for p in own],
                [p.y for p in own],
                linestyle="none",
                marker=marker,
                markersize=markersize * SEED_SCALE,
                color=color,
                alpha=SEED_ALPHA,
            )
            at = (statistics.fmean(p.x for p in own), statistics.fmean(p.y for p in own))
            ax.plot(
                [at[0]],
                [at[1]],
                linestyle="none",
                marker=marker,
                markersize=markersize,
                color=color,
                label=f"{method} (mean of {len(own)} seeds)",
            )
        # In the marker's colour: methods that barely differ (LoRA, QLoRA) sit close together.
        ax.annotate(method, at, textcoords="offset points", xytext=(7, 7), color=color)
