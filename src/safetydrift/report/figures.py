"""The report's own figures: Figure 1b (refusal-rate drop against chrF at `report.fixed_lr`)
and Figure 2 (refusal rate and chrF over training per learning rate); the figure size, method
styles and saving that the other figures (`responses`, `evaluation_sets`) share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from safetydrift.files import atomic_path
from safetydrift.report import paired as paired_report
from safetydrift.report import seeds as seeds_report
from safetydrift.report.results import CHRF, REFUSAL, Estimate, GridResults, lr_curves

FIG1 = Path("figures/fig1_tradeoff.png")
FIG2 = Path("figures/fig2_lr_curves.png")
METHOD_STYLES: dict[str, tuple[str, str]] = {
    "full": ("o", "#d62728"),
    "lora": ("s", "#1f77b4"),
    "qlora": ("^", "#2ca02c"),
    "dpo": ("D", "#9467bd"),
}
FALLBACK_STYLES = (("v", "#8c564b"), ("P", "#e377c2"), ("X", "#7f7f7f"), ("*", "#bcbd22"))
LR_COLORS = ("#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b", "#17becf")


@dataclass(frozen=True)
class TradeoffPoint:
    """Figure 1: one method at the fixed learning rate, at its final checkpoint."""

    method: str
    cell: str
    chrf: Estimate
    drop_points: float
    drop_low: float | None
    drop_high: float | None


def _same_lr(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


def tradeoff_points(
    results: GridResults, fixed_lr: float, paired: paired_report.PairedTests | None = None
) -> tuple[list[TradeoffPoint], list[str]]:
    """Points of Figure 1, and the cells at `fixed_lr` that cannot be drawn for lack of data.

    The drop is in percentage points: base refusal rate minus the cell's final refusal rate. Its
    interval is the paired (Tango) interval of that difference on the same prompts, from
    `paired`, so it carries the base model's uncertainty too; without per-prompt verdicts on
    both sides the drop is drawn without an interval.
    """
    base = results.base.refusal.get(results.primary_judge)
    points: list[TradeoffPoint] = []
    undrawable: list[str] = []
    for cell in results.cells:
        if not _same_lr(cell.learning_rate, fixed_lr):
            continue
        final = results.row(cell.name, results.final_checkpoint)
        refusal = final.refusal.get(results.primary_judge) if final else None
        chrf = final.chrf if final else None
        if base is None or refusal is None or chrf is None:
            undrawable.append(cell.name)
            continue
        test = None
        if paired is not None:
            test = paired.find(
                paired_report.AGAINST_BASE, REFUSAL, cell.name, results.final_checkpoint
            )
        drop_low, drop_high = paired_report.drop_interval(test)
        points.append(
            TradeoffPoint(
                method=cell.method,
                cell=cell.name,
                chrf=chrf,
                drop_points=100 * (base.value - refusal.value),
                drop_low=drop_low,
                drop_high=drop_high,
            )
        )
    return points, undrawable


def method_style(method: str, methods: list[str]) -> tuple[str, str]:
    if method in METHOD_STYLES:
        return METHOD_STYLES[method]
    others = [m for m in methods if m not in METHOD_STYLES]
    return FALLBACK_STYLES[others.index(method) % len(FALLBACK_STYLES)]


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def tradeoff_figure(
    results: GridResults, fixed_lr: float, paired: paired_report.PairedTests | None = None
) -> Figure:
    """Figure 1: refusal-rate drop against chrF at `fixed_lr`, one labelled marker per method."""
    points, undrawable = tradeoff_points(results, fixed_lr, paired)
    methods = [c.method for c in results.cells]
    figure = new_figure(6.4, 4.8)
    ax = figure.add_subplot()
    seeds_report.draw_method_points(
        ax,
        [
            seeds_report.MethodPoint(
                p.method,
                p.chrf.value,
                p.drop_points,
                p.chrf.ci_low,
                p.chrf.ci_high,
                p.drop_low,
                p.drop_high,
            )
            for p in points
        ],
        lambda method: method_style(method, methods),
    )
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("chrF (final checkpoint)")
    ax.set_ylabel(f"Refusal-rate drop from base (points, {results.primary_judge})")
    ax.set_title(f"Safety lost vs. task performance at learning rate {fixed_lr}")
    if points:
        ax.legend(title="method", loc="best")
    notes = []
    if not any(_same_lr(c.learning_rate, fixed_lr) for c in results.cells):
        notes.append(f"learning rate {fixed_lr} is not in the grid")
    if undrawable:
        notes.append("missing: " + ", ".join(undrawable))
    if notes:
        ax.text(0.5, 0.5, "\n".join(notes), transform=ax.transAxes, ha="center", va="center")
    return figure


def lr_label(learning_rate: float) -> str:
    return f"lr={learning_rate}"


def lr_curves_figure(results: GridResults) -> Figure:
    """Figure 2: per method (columns), refusal rate and chrF (rows) over training per lr."""
    methods = list(dict.fromkeys(c.method for c in results.cells))
    rates = sorted({c.learning_rate for c in results.cells}, reverse=True)
    colors = {lr: LR_COLORS[i % len(LR_COLORS)] for i, lr in enumerate(rates)}
    columns = max(len(methods), 1)
    figure = new_figure(3.2 * columns + 0.6, 6.4)
    # chrF shares one scale across methods so that their performance compares at a glance.
    axes = figure.subplots(2, columns, sharex=True, sharey="row", squeeze=False)
    metric_rows = [
        (REFUSAL, f"Refusal rate ({results.primary_judge})"),
        (CHRF, "chrF"),
    ]
    for row_index, (metric, ylabel) in enumerate(metric_rows):
        curves = lr_curves(results, metric)
        for column, method in enumerate(methods):
            ax = axes[row_index][column]
            by_lr = curves.get(method, {})
            for lr in rates:
                if lr in by_lr:
                    seeds_report.draw_curve(ax, by_lr[lr], colors[lr], lr_label(lr))
            absent = [lr_label(lr) for lr in rates if lr not in by_lr]
            if absent:
                ax.text(
                    0.02,
                    0.02,
                    "missing: " + ", ".join(absent),
                    transform=ax.transAxes,
                    fontsize=7,
                    va="bottom",
                    color="grey",
                )
            if row_index == 0:
                ax.set_title(method)
                ax.set_ylim(-0.02, 1.02)
            else:
                ax.set_xlabel("% of training")
            if column == 0:
                ax.set_ylabel(ylabel)
            ax.set_xticks([0, 25, 50, 75, 100])
            ax.grid(alpha=0.3)
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        ordered = [lr_label(lr) for lr in rates if lr_label(lr) in handles]
        figure.legend(
            [handles[label] for label in ordered],
            ordered,
            loc="outside right center",
            title="learning rate",
        )
    return figure


def save_figure(figure: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
