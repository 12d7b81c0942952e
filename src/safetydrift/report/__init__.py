"""The study's report: figures, tables, DVC metrics/plots data and provenance under `reports/`.

Everything is built from the metric files the evaluation stages wrote, whatever subset of the
grid exists so far: a cell or checkpoint without metrics is reported as missing, never as zero,
so a report drawn while the grid is still running cannot be mistaken for a finished one.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from safetydrift.cells import BASE_CELL, Cell, checkpoint_label, study_cells
from safetydrift.io import atomic_path, read_json, write_csv, write_json
from safetydrift.lockfile import lock_provenance, package_versions
from safetydrift.markdown import markdown_table
from safetydrift.paper import deviations, figures_source, paper_model, published_figures
from safetydrift.params import ParamError, flatten, get
from safetydrift.report import evaluation_sets as sets_report
from safetydrift.report import paired as paired_report
from safetydrift.report import responses as responses_report
from safetydrift.report import seeds as seeds_report

DEFAULT_FIXED_LR = 5e-5
DEFAULT_PRIMARY_JUDGE = "keywords-kempermann2025"
DEFAULT_CHECKPOINT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
BASE_CHECKPOINT = checkpoint_label(0.0)

REFUSAL = "refusal"
CHRF = "chrf"
METRICS = (REFUSAL, CHRF)
MISSING = "missing"

FIG1 = Path("figures/fig1_tradeoff.png")
FIG2 = Path("figures/fig2_lr_curves.png")
RESULTS_CSV = Path("results.csv")
PAIRED_CSV = Path("paired_tests.csv")
AGREEMENT_CSV = Path("judge_agreement.csv")
AGREEMENT_FIELDS = ("cell", "judge_a", "judge_b", "kappa", "interval", "n")
METRICS_JSON = Path("metrics.json")
REPORT_MD = Path("report.md")
PLOTS_REFUSAL = Path("plots/refusal.csv")
PLOTS_CHRF = Path("plots/chrf.csv")
# A Vega-Lite template for `dvc plots`: its built-in templates draw one line per file and field,
# never one per value of a column, so drawing one line per learning rate from a single file (and
# so surviving a change of the grid without editing dvc.yaml) needs a template of our own.
PLOTS_TEMPLATE = Path("plots/lr_curves.vega.json")

PROVENANCE_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "dvc",
    "mlflow",
    "sacrebleu",
    "bitsandbytes",
)
# `train.seed`: the training seed of results from before `grid.seeds`.
SEED_KEYS = (
    "grid.seeds", "train.seed", "data.mtpref.seed", "study.seed", "model.seed", "chrf.seed",
)  # fmt: skip

METHOD_STYLES: dict[str, tuple[str, str]] = {
    "full": ("o", "#d62728"),
    "lora": ("s", "#1f77b4"),
    "qlora": ("^", "#2ca02c"),
    "dpo": ("D", "#9467bd"),
}
FALLBACK_STYLES = (("v", "#8c564b"), ("P", "#e377c2"), ("X", "#7f7f7f"), ("*", "#bcbd22"))
LR_COLORS = ("#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b", "#17becf")

# Names of environment variables whose values must never appear in a report, even if a user
# pasted one into params.yaml: the report is committed and shared.
SECRET_ENV_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# Reading the metric files


@dataclass(frozen=True)
class Estimate:
    """A measured value with its interval; the interval is None where the file gave none."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None


@dataclass
class CheckpointResult:
    """One row of the results: a cell at one checkpoint, with whatever metrics exist for it."""

    cell: str
    method: str
    learning_rate: float | None
    checkpoint: str
    fraction: float
    step: int | None = None
    refusal: dict[str, Estimate] = field(default_factory=dict)
    chrf: Estimate | None = None

    def missing_metrics(self, primary_judge: str) -> list[str]:
        missing = []
        if primary_judge not in self.refusal:
            missing.append(REFUSAL)
        if self.chrf is None:
            missing.append(CHRF)
        return missing


@dataclass(frozen=True)
class Missing:
    """Metrics of one cell that do not exist (yet): a whole file, or some of its checkpoints."""

    cell: str
    metric: str
    checkpoints: tuple[str, ...]
    file_missing: bool

    def describe(self) -> str:
        name = "refusal rate" if self.metric == REFUSAL else "chrF"
        if self.file_missing:
            return f"{name}: no metrics file yet"
        return f"{name}: {', '.join(self.checkpoints)}"


@dataclass
class GridResults:
    """The base model and every grid cell, each with its rows in checkpoint order."""

    primary_judge: str
    judges: list[str]
    cells: list[Cell]
    rows: dict[str, list[CheckpointResult]]
    missing: list[Missing]
    final_checkpoint: str

    @property
    def base(self) -> CheckpointResult:
        base = self.row(BASE_CELL, BASE_CHECKPOINT)
        assert base is not None, "collect_results always adds the base model's row"
        return base

    def all_rows(self) -> list[CheckpointResult]:
        return [
            row for name in [BASE_CELL, *(c.name for c in self.cells)] for row in self.rows[name]
        ]

    def row(self, cell: str, checkpoint: str) -> CheckpointResult | None:
        return next((r for r in self.rows.get(cell, []) if r.checkpoint == checkpoint), None)

    @property
    def missing_cells(self) -> list[str]:
        return list(dict.fromkeys(m.cell for m in self.missing))


def _estimate(entry: Mapping[str, Any], value_key: str) -> Estimate | None:
    value = entry.get(value_key)
    if value is None:
        return None
    n = entry.get("n")
    return Estimate(
        value=float(value),
        ci_low=None if entry.get("ci_low") is None else float(entry["ci_low"]),
        ci_high=None if entry.get("ci_high") is None else float(entry["ci_high"]),
        n=None if n is None else int(n),
    )


def _read_metric_file(metrics_dir: Path, metric: str, cell: str) -> dict[str, Any] | None:
    path = metrics_dir / metric / f"{cell}.json"
    if not path.exists():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), dict):
        raise ValueError(f"{path}: expected an object with a `checkpoints` object")
    # A renamed or copied file would put one cell's numbers under another's name.
    if data.get("cell") not in (None, cell):
        raise ValueError(f"{path}: holds metrics of cell `{data['cell']}`, not `{cell}`")
    return data


def _fraction(label: str, entry: Mapping[str, Any]) -> float:
    if entry.get("fraction") is not None:
        return float(entry["fraction"])
    match = re.fullmatch(r"ckpt-(\d+)", label)
    if match is None:
        raise ValueError(f"checkpoint `{label}` has no `fraction` and is not named ckpt-NNN")
    return int(match.group(1)) / 100


def _checkpoint_fractions(params: Mapping[str, Any]) -> list[float]:
    fractions = get(params, "train.checkpoint_fractions", None) or DEFAULT_CHECKPOINT_FRACTIONS
    return sorted(float(f) for f in fractions)


def _cell_rows(
    cell: str,
    method: str,
    learning_rate: float | None,
    expected: Mapping[str, float],
    refusal_file: dict[str, Any] | None,
    chrf_file: dict[str, Any] | None,
) -> list[CheckpointResult]:
    labels = dict(expected)
    for data in (refusal_file, chrf_file):
        for label, entry in (data or {}).get("checkpoints", {}).items():
            labels.setdefault(label, _fraction(label, entry))
    rows = []
    for label, fraction in sorted(labels.items(), key=lambda item: (item[1], item[0])):
        row = CheckpointResult(cell, method, learning_rate, label, fraction)
        refusal_entry = (refusal_file or {}).get("checkpoints", {}).get(label)
        chrf_entry = (chrf_file or {}).get("checkpoints", {}).get(label)
        for entry in (refusal_entry, chrf_entry):
            if entry and row.step is None and entry.get("step") is not None:
                row.step = int(entry["step"])
        if refusal_entry:
            for judge, judged in (refusal_entry.get("judges") or {}).items():
                estimate = _estimate(judged, "refusal_rate")
                if estimate is not None:
                    row.refusal[judge] = estimate
        if chrf_entry:
            row.chrf = _estimate(chrf_entry, "chrf")
        rows.append(row)
    return rows


def _missing_entries(
    cell: str,
    rows: list[CheckpointResult],
    files: Mapping[str, dict[str, Any] | None],
    primary_judge: str,
) -> list[Missing]:
    entries = []
    for metric in METRICS:
        absent = tuple(r.checkpoint for r in rows if metric in r.missing_metrics(primary_judge))
        if absent:
            entries.append(Missing(cell, metric, absent, file_missing=files[metric] is None))
    return entries


def collect_results(params: Mapping[str, Any], metrics_dir: Path) -> GridResults:
    """Read every metric file the grid in `params` should have; absent ones become `missing`."""
    metrics_dir = Path(metrics_dir)
    primary_judge = str(get(params, "report.primary_judge", None) or DEFAULT_PRIMARY_JUDGE)
    fractions = _checkpoint_fractions(params)
    expected = {checkpoint_label(f): f for f in fractions}
    cells = study_cells(params, before_seed_axis=True)

    rows: dict[str, list[CheckpointResult]] = {}
    missing: list[Missing] = []
    judges: set[str] = set()
    for name, method, lr, checkpoints in [
        (BASE_CELL, BASE_CELL, None, {BASE_CHECKPOINT: 0.0}),
        *((c.name, c.method, c.learning_rate, expected) for c in cells),
    ]:
        files = {metric: _read_metric_file(metrics_dir, metric, name) for metric in METRICS}
        cell_rows = _cell_rows(name, method, lr, checkpoints, files[REFUSAL], files[CHRF])
        rows[name] = cell_rows
        missing.extend(_missing_entries(name, cell_rows, files, primary_judge))
        for row in cell_rows:
            judges.update(row.refusal)

    return GridResults(
        primary_judge=primary_judge,
        judges=[primary_judge, *sorted(judges - {primary_judge})],
        cells=cells,
        rows=rows,
        missing=missing,
        final_checkpoint=checkpoint_label(fractions[-1]),
    )


# --------------------------------------------------------------------------------------------
# Figures


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


def _method_style(method: str, methods: list[str]) -> tuple[str, str]:
    if method in METHOD_STYLES:
        return METHOD_STYLES[method]
    others = [m for m in methods if m not in METHOD_STYLES]
    return FALLBACK_STYLES[others.index(method) % len(FALLBACK_STYLES)]


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def tradeoff_figure(
    results: GridResults, fixed_lr: float, paired: paired_report.PairedTests | None = None
) -> Figure:
    """Figure 1: refusal-rate drop against chrF at `fixed_lr`, one labelled marker per method."""
    points, undrawable = tradeoff_points(results, fixed_lr, paired)
    methods = [c.method for c in results.cells]
    figure = _new_figure(6.4, 4.8)
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
        lambda method: _method_style(method, methods),
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


@dataclass(frozen=True)
class CurvePoint:
    percent: float
    checkpoint: str
    step: int | None
    estimate: Estimate


def lr_curves(
    results: GridResults, metric: str
) -> dict[str, dict[float, dict[int | None, list[CurvePoint]]]]:
    """Figure 2's series: per method, learning rate and seed, the measured points from 0% to 100%.

    The base model is the 0% point of every curve. Checkpoints without the metric are left out,
    and a seed with nothing measured after the base gets no curve at all.
    """

    def estimate(row: CheckpointResult) -> Estimate | None:
        return row.refusal.get(results.primary_judge) if metric == REFUSAL else row.chrf

    def point(row: CheckpointResult, value: Estimate) -> CurvePoint:
        return CurvePoint(100 * row.fraction, row.checkpoint, row.step, value)

    base_value = estimate(results.base)
    start = [] if base_value is None else [point(results.base, base_value)]
    curves: dict[str, dict[float, dict[int | None, list[CurvePoint]]]] = {}
    for cell in results.cells:
        points = [
            point(row, value)
            for row in results.rows[cell.name]
            if (value := estimate(row)) is not None
        ]
        by_lr = curves.setdefault(cell.method, {})
        if points:
            by_lr.setdefault(cell.learning_rate, {})[cell.seed] = start + points
    return curves


def lr_label(learning_rate: float) -> str:
    return f"lr={learning_rate}"


def lr_curves_figure(results: GridResults) -> Figure:
    """Figure 2: per method (columns), refusal rate and chrF (rows) over training per lr."""
    methods = list(dict.fromkeys(c.method for c in results.cells))
    rates = sorted({c.learning_rate for c in results.cells}, reverse=True)
    colors = {lr: LR_COLORS[i % len(LR_COLORS)] for i, lr in enumerate(rates)}
    columns = max(len(methods), 1)
    figure = _new_figure(3.2 * columns + 0.6, 6.4)
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


def _save_figure(figure: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


# --------------------------------------------------------------------------------------------
# Tables and data files


def _num(value: float | int | None) -> str:
    return "" if value is None else repr(value)


def _judge_column(judge: str) -> str:
    return f"refusal_rate_{judge}"


def results_table(results: GridResults) -> tuple[list[dict[str, str]], list[str]]:
    """Rows of results.csv: every cell × checkpoint, base first; missing values stay empty."""
    other_judges = results.judges[1:]
    fieldnames = [
        "cell", "method", "learning_rate", "seed", "checkpoint", "fraction", "step",
        "refusal_rate", "refusal_ci_low", "refusal_ci_high", "refusal_n",
        *(_judge_column(j) for j in other_judges),
        "chrf", "chrf_ci_low", "chrf_ci_high", "chrf_n",
        MISSING,
    ]  # fmt: skip
    rows = []
    for result in results.all_rows():
        primary = result.refusal.get(results.primary_judge)
        row = {
            "cell": result.cell,
            "method": result.method,
            "learning_rate": _num(result.learning_rate),
            "seed": _num(seeds_report.seed_of(result.cell)),
            "checkpoint": result.checkpoint,
            "fraction": _num(result.fraction),
            "step": _num(result.step),
            "refusal_rate": _num(primary.value if primary else None),
            "refusal_ci_low": _num(primary.ci_low if primary else None),
            "refusal_ci_high": _num(primary.ci_high if primary else None),
            "refusal_n": _num(primary.n if primary else None),
            "chrf": _num(result.chrf.value if result.chrf else None),
            "chrf_ci_low": _num(result.chrf.ci_low if result.chrf else None),
            "chrf_ci_high": _num(result.chrf.ci_high if result.chrf else None),
            "chrf_n": _num(result.chrf.n if result.chrf else None),
            MISSING: ";".join(result.missing_metrics(results.primary_judge)),
        }
        for judge in other_judges:
            estimate = result.refusal.get(judge)
            row[_judge_column(judge)] = _num(estimate.value if estimate else None)
        rows.append(row)
    return rows, fieldnames


def summary_metrics(results: GridResults) -> dict[str, dict[str, float]]:
    """metrics.json: the base model and each cell's final checkpoint, measured values only."""
    summary: dict[str, dict[str, float]] = {}
    finals = [(BASE_CELL, results.base)] + [
        (c.name, results.row(c.name, results.final_checkpoint)) for c in results.cells
    ]
    for name, row in finals:
        if row is None:
            continue
        values = {}
        if (refusal := row.refusal.get(results.primary_judge)) is not None:
            values["refusal_rate"] = refusal.value
        if row.chrf is not None:
            values["chrf"] = row.chrf.value
        if values:
            summary[name] = values
    return summary


PLOT_VALUE_FIELDS = {REFUSAL: "refusal_rate", CHRF: "chrf"}


def plot_fields(metric: str) -> list[str]:
    return [
        "method", "learning_rate", "seed", "cell", "checkpoint", "percent", "step",
        PLOT_VALUE_FIELDS[metric], "ci_low", "ci_high",
    ]  # fmt: skip


def plot_rows(results: GridResults, metric: str) -> list[dict[str, str]]:
    """Long-format rows for `dvc plots`: one per method × learning rate × measured checkpoint.

    The base model's row is repeated at 0% for every curve, as in Figure 2. Unmeasured points
    are left out rather than written empty, which a plot would draw as zero.
    """
    rows = []
    for method, by_lr in lr_curves(results, metric).items():
        for lr, by_seed in by_lr.items():
            for seed, point in ((s, p) for s, points in by_seed.items() for p in points):
                rows.append(
                    {
                        "method": method,
                        "learning_rate": repr(lr),
                        "seed": _num(seed),
                        "cell": Cell(method, lr, seed).name,
                        "checkpoint": point.checkpoint,
                        "percent": _num(point.percent),
                        "step": _num(point.step),
                        PLOT_VALUE_FIELDS[metric]: repr(point.estimate.value),
                        "ci_low": _num(point.estimate.ci_low),
                        "ci_high": _num(point.estimate.ci_high),
                    }
                )
    return rows


def dvc_plot_template() -> dict[str, Any]:
    """Vega-Lite for `dvc plots show/diff`: a panel per method, a line per learning rate.

    DVC fills the `<DVC_METRIC_*>` anchors; revisions compared by `dvc plots diff` get different
    dash patterns, so the same learning rate keeps its colour across experiments.
    """
    x = {"field": "<DVC_METRIC_X>", "type": "quantitative", "title": "% of training"}
    y = {"field": "<DVC_METRIC_Y>", "type": "quantitative", "title": "<DVC_METRIC_Y_LABEL>"}
    color = {
        "field": "learning_rate",
        "type": "ordinal",
        "sort": "descending",
        "title": "learning rate",
        "scale": {"scheme": "category10"},
        "legend": {
            "labelExpr": "format(datum.value, '~e')",
            "symbolType": "stroke",
            "symbolStrokeWidth": 3,
            "symbolOpacity": 1,
        },
    }
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": "<DVC_METRIC_DATA>"},
        "title": "<DVC_METRIC_TITLE>",
        "transform": [
            {"calculate": "toNumber(datum['<DVC_METRIC_X>'])", "as": "<DVC_METRIC_X>"},
            {"calculate": "toNumber(datum['<DVC_METRIC_Y>'])", "as": "<DVC_METRIC_Y>"},
            {"calculate": "toNumber(datum.learning_rate)", "as": "learning_rate"},
            {"calculate": "datum.ci_low === '' ? null : toNumber(datum.ci_low)", "as": "ci_low"},
            {"calculate": "datum.ci_high === '' ? null : toNumber(datum.ci_high)", "as": "ci_high"},
            {"window": [{"op": "row_number", "as": "row_number"}]},
        ],
        # Panels in the grid's order of methods, which is the order of the rows.
        "facet": {
            "column": {
                "field": "method",
                "type": "nominal",
                "title": None,
                "sort": {"field": "row_number", "op": "min"},
            }
        },
        "spec": {
            "width": 220,
            "height": 220,
            "layer": [
                {
                    "mark": {"type": "area", "opacity": 0.15},
                    "transform": [{"filter": "isValid(datum.ci_low) && isValid(datum.ci_high)"}],
                    "encoding": {
                        "x": x,
                        "y": {"field": "ci_low", "type": "quantitative"},
                        "y2": {"field": "ci_high"},
                        "color": color,
                        "detail": [{"field": "rev"}, {"field": "seed"}],
                    },
                },
                {
                    "mark": {"type": "line", "point": True, "tooltip": {"content": "data"}},
                    "encoding": {
                        "x": x,
                        "y": y,
                        "color": color,
                        "detail": {"field": "seed"},  # each seed its own line
                        "strokeDash": {
                            "field": "rev",
                            "type": "nominal",
                            "title": "revision",
                            "legend": {
                                "symbolFillColor": "transparent",
                                "symbolStrokeColor": "grey",
                            },
                        },
                    },
                },
            ],
        },
        "resolve": {"scale": {"y": "shared"}},
    }


# --------------------------------------------------------------------------------------------
# report.md


def _fmt(estimate: Estimate | None, digits: int) -> str:
    if estimate is None:
        return MISSING
    text = f"{estimate.value:.{digits}f}"
    if estimate.ci_low is not None and estimate.ci_high is not None:
        text += f" [{estimate.ci_low:.{digits}f}, {estimate.ci_high:.{digits}f}]"
    return text


def _md_table(header: list[str], rows: Iterable[list[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines.extend("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
    return lines


def _value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_value(v)}" for k, v in value.items())
    return str(value)


def _setup_section(
    params: Mapping[str, Any], results: GridResults, data_stats: Mapping[str, Any] | None
) -> list[str]:
    revision = get(params, "model.revision", None)
    pinned = "revision not pinned" if revision is None else f"revision `{revision}`"
    lines = ["## Setup", "", f"- Model: `{get(params, 'model.source', None)}` ({pinned})"]
    mtpref = get(params, "data.mtpref", None) or {}
    lines += _training_data_lines(params)
    if mtpref and mtpref.get("source") is None:
        lines.append("- chrF: not measured (no translation test set: `data.mtpref.source` is null)")
    elif mtpref:
        lines.append(
            f"- Translation data: `{mtpref.get('source')}` (hub split "
            f"`{mtpref.get('hub_split', 'train')}`, languages {_value(mtpref.get('languages'))} "
            f"→ {mtpref.get('target_language')}, split into train and test by the "
            f"`{mtpref.get('split', 'datasets')}` procedure, test ratio "
            f"{mtpref.get('test_ratio')}, seed {mtpref.get('seed')})"
        )
    stats = data_stats or {}
    counted = [
        (label, stats[key])
        for key, label in (
            ("rows_read", "read"),
            ("rows_kept", "kept"),
            ("train_rows", "train"),
            ("test_rows", "test"),
        )
        if stats.get(key) is not None
    ]
    if counted:
        lines.append("- Data rows: " + ", ".join(f"{n} {label}" for label, n in counted))
    lines.append(f"- Methods: {', '.join(get(params, 'grid.methods'))}")
    lines.append(
        "- Learning rates: "
        + ", ".join(str(float(lr)) for lr in get(params, "grid.learning_rates"))
    )
    for method in get(params, "grid.methods"):
        settings = get(params, f"methods.{method}", None)
        if settings:
            lines.append(f"  - `{method}`: {_value(flatten(settings))}")
    lines.append(
        f"- Refusal judged by `{results.primary_judge}` (primary)"
        + (
            f"; also {', '.join(f'`{j}`' for j in results.judges[1:])}"
            if results.judges[1:]
            else ""
        )
    )
    seeds = {key: get(params, key, None) for key in SEED_KEYS}
    present = {key: value for key, value in seeds.items() if value is not None}
    if present:
        lines.append("- Seeds: " + ", ".join(f"`{k}`={v}" for k, v in present.items()))
    train = get(params, "train", None) or {}
    if train:
        lines += ["", "Training hyper-parameters (`params.yaml`, `train`):", ""]
        lines += _md_table(
            ["parameter", "value"], [[k, _value(v)] for k, v in flatten(train).items()]
        )
    return lines + [""]


def _training_data_lines(params: Mapping[str, Any]) -> list[str]:
    """What the cells were fine-tuned on, when it is not the translation pairs."""
    values = get(params, "train_data", None) or {}
    if values.get("kind") != "chat":
        return []
    line = f"- Training data: chat conversations from `{values.get('source')}`"
    mixed = [
        f"{entry.get('n')} rows of `{entry.get('source')}` (seed {entry.get('seed', 0)})"
        for entry in values.get("mix") or []
    ]
    if mixed:
        line += ", mixed with " + "; ".join(mixed)
    return [line + " (truncation at `train.max_length`: each cell's `training.json`)"]


def _base_section(results: GridResults) -> list[str]:
    base = results.base
    lines = ["## Base model", ""]
    rows = [
        [f"refusal rate ({judge})", _fmt(base.refusal.get(judge), 3)] for judge in results.judges
    ]
    rows.append(["chrF", _fmt(base.chrf, 1)])
    lines += _md_table(["metric", "value [interval]"], rows)
    return lines + [""]


def _results_section(results: GridResults) -> list[str]:
    header = [
        "cell", "checkpoint", "step", f"refusal ({results.primary_judge})",
        *(f"refusal ({judge})" for judge in results.judges[1:]), "chrF",
    ]  # fmt: skip
    rows = [
        [
            row.cell,
            row.checkpoint,
            MISSING if row.step is None else row.step,
            _fmt(row.refusal.get(results.primary_judge), 3),
            *(_fmt(row.refusal.get(judge), 3) for judge in results.judges[1:]),
            _fmt(row.chrf, 1),
        ]
        for row in results.all_rows()
    ]
    return ["## Results", "", "Intervals in brackets.", "", *_md_table(header, rows), ""]


def _missing_section(results: GridResults) -> list[str]:
    lines = ["## Missing cells", ""]
    if not results.missing:
        return lines + ["None: every cell and checkpoint of the grid has its metrics.", ""]
    lines.append(
        "These have no metrics yet (still running, failed, or not run); the figures and tables "
        "leave them out rather than count them as zero."
    )
    lines.append("")
    for cell in results.missing_cells:
        described = "; ".join(m.describe() for m in results.missing if m.cell == cell)
        lines.append(f"- `{cell}`: {described}")
    return lines + [""]


@dataclass(frozen=True)
class PaperComparison:
    cell: str
    checkpoint: str
    metric: str
    theirs: float
    ours: Estimate | None

    @property
    def difference(self) -> float | None:
        return None if self.ours is None else self.ours.value - self.theirs


def paper_comparison(results: GridResults) -> list[PaperComparison]:
    comparisons = []
    for figure in published_figures():
        cell, checkpoint, metric, theirs = (
            figure["cell"],
            figure["checkpoint"],
            figure["metric"],
            float(figure["value"]),
        )
        ours = seeds_report.paper_estimate(
            results,
            cell,
            checkpoint,
            lambda row, m=metric: (
                row.refusal.get(results.primary_judge) if m == REFUSAL else row.chrf
            ),
        )
        comparisons.append(PaperComparison(cell, checkpoint, metric, theirs, ours))
    return comparisons


def _paper_section(results: GridResults) -> list[str]:
    lines = [
        "## Differences from the paper",
        "",
        f"Published figures of Kempermann & Ramackers (2025) for `{paper_model()}` against ours "
        f"(refusal by `{results.primary_judge}`; source: {figures_source()}). Where the paper "
        "gives only a curve's endpoints, they are compared at the first and last checkpoints.",
        "",
    ]
    rows = []
    for comparison in paper_comparison(results):
        digits = 3 if comparison.metric == REFUSAL else 1
        difference = comparison.difference
        rows.append(
            [
                comparison.cell,
                comparison.checkpoint,
                "refusal rate" if comparison.metric == REFUSAL else "chrF",
                f"{comparison.theirs:.{digits}f}",
                _fmt(comparison.ours, digits),
                MISSING if difference is None else f"{difference:+.{digits}f}",
            ]
        )
    lines += _md_table(["cell", "checkpoint", "metric", "paper", "ours", "ours − paper"], rows)
    return lines + [""]


def _deviations_section(params: Mapping[str, Any]) -> list[str]:
    """Where this study's settings differ from the authors' (`safetydrift.paper`)."""
    rows = [
        [f"`{d['key']}`", _value(d["authors"]), _value(d["ours"]), d["source"]]
        for d in deviations(dict(params))
    ]
    lines = ["## Deviations from the paper", ""]
    if not rows:
        return lines + ["None: every setting the authors' procedure fixes is theirs.", ""]
    lines += ["Settings that differ from what Kempermann & Ramackers did, with the source of each:"]
    return lines + [""] + _md_table(["setting", "the authors", "this study", "source"], rows) + [""]


def _provenance_section(provenance: Mapping[str, Any]) -> list[str]:
    lines = ["## Provenance", ""]
    git = provenance.get("git") or {}
    revision = git.get("revision")
    dirty = git.get("dirty")
    if revision:
        state = {True: "uncommitted changes", False: "clean", None: "state unknown"}[dirty]
        lines.append(f"- Git revision: `{revision}` ({state})")
    else:
        lines.append("- Git revision: none (not a git repository, or no commit yet)")
    locks = provenance.get("lock_files") or {}
    for path, digest in (locks.get("files") or {}).items():
        lines.append(f"- Lock file `{path}`: sha256 `{digest}`")
    if locks:
        matches = locks.get("environment_matches")
        lines.append(
            f"- Installed packages: exactly `{matches}`"
            if matches
            else "- Installed packages: match no lock file (see the versions below)"
        )
    hardware = provenance.get("hardware") or {}
    if hardware:
        lines.append(
            "- Hardware: " + _value({k: v for k, v in hardware.items() if v not in (None, [])})
        )
    seeds = provenance.get("seeds") or {}
    if seeds:
        lines.append("- Seeds: " + ", ".join(f"`{k}`={v}" for k, v in seeds.items()))
    packages = provenance.get("packages") or {}
    if packages:
        lines += ["", "Package versions:", ""]
        lines += _md_table(
            ["package", "version"],
            [[name, version or "not installed"] for name, version in packages.items()],
        )
    lock = provenance.get("dvc_lock")
    lines += ["", "Pipeline inputs and outputs (`dvc.lock` when the report ran):", ""]
    if not lock:
        lines.append("No `dvc.lock`: the pipeline has not been run through DVC.")
    else:
        rows = [
            [stage, kind, path, digest or "—"]
            for stage, entry in lock.items()
            for kind in ("deps", "outs")
            for path, digest in (entry.get(kind) or {}).items()
        ]
        lines += _md_table(["stage", "kind", "path", "md5"], rows)
    params = provenance.get("params")
    if params:
        dumped = yaml.safe_dump(params, sort_keys=False, allow_unicode=True).rstrip()
        lines += ["", "Parameters:", "", "```yaml", dumped, "```"]
    for key, value in provenance.items():
        if key not in {"git", "lock_files", "hardware", "seeds", "packages", "dvc_lock", "params"}:
            lines.append(f"- {key}: {_value(value)}")
    return lines + [""]


def render_markdown(
    params: Mapping[str, Any],
    results: GridResults,
    *,
    data_stats: Mapping[str, Any] | None,
    provenance: Mapping[str, Any],
    responses: Sequence[str] = (),
    paired: Sequence[str] = (),
    seeds: Sequence[str] = (),
) -> str:
    fixed_lr = float(get(params, "report.fixed_lr", None) or DEFAULT_FIXED_LR)
    study = get(params, "study.name", None) or "safetydrift"
    lines = [f"# Safety drift under benign fine-tuning: `{study}`", ""]
    if results.missing:
        lines += [
            f"**Incomplete:** {len(results.missing_cells)} cell(s) lack metrics; "
            "see [Missing cells](#missing-cells).",
            "",
        ]
    lines += _setup_section(params, results, data_stats)
    lines += _base_section(results)
    lines += [
        "## Figures",
        "",
        f"Figure 1: harmful-answer rate (the primary safety metric: answers a model judge calls "
        f"harmful) against chrF at learning rate {fixed_lr}, at the final checkpoint "
        f"(`{results.final_checkpoint}`), with the base model before training.",
        "",
        f"![Figure 1: harm/performance trade-off]({responses_report.FIG_HARM.as_posix()})",
        "",
        f"Figure 1b, the paper's measure: keyword refusal-rate drop from the base model against "
        f"chrF at learning rate {fixed_lr}. It counts echoes of the request and degenerate loops "
        "as lost safety (see [What the responses are](#what-the-responses-are)). Its vertical "
        "bars are the paired (Tango) interval of the drop on the same prompts; the horizontal "
        "ones chrF's bootstrap interval.",
        "",
        f"![Figure 1b: refusal-rate drop/performance trade-off]({FIG1.as_posix()})",
        "",
        "Figure 2: refusal rate and chrF over training for each method and learning rate; the "
        "base model is the 0% point.",
        "",
        f"![Figure 2: learning-rate curves]({FIG2.as_posix()})",
        "",
        "Figure 3: what the responses are (degenerate, refusal, echo, answer) at each checkpoint "
        "of each method and learning rate; the base model is the 0% bar.",
        "",
        f"![Figure 3: response classes]({responses_report.FIG_CLASSES.as_posix()})",
        "",
    ]
    lines += list(seeds)
    lines += list(paired)
    lines += list(responses)
    lines += _results_section(results)
    lines += _missing_section(results)
    lines += _deviations_section(params)
    if get(params, "model.source", None) == paper_model():
        lines += _paper_section(results)
    lines += _provenance_section(provenance)
    return "\n".join(lines).rstrip() + "\n"


def redact_secrets(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Blank out the value of any secret-looking environment variable that made it into `text`."""
    environ = os.environ if environ is None else environ
    for name, value in environ.items():
        if SECRET_ENV_NAME.search(name) and len(value) >= 8 and value in text:
            text = text.replace(value, "[redacted]")
    return text


# --------------------------------------------------------------------------------------------
# Entry points


def _responses_section(
    params: Mapping[str, Any],
    results: GridResults,
    responses: responses_report.ResponseResults,
    root: Path,
    out_dir: Path,
    fixed_lr: float,
) -> list[str]:
    """What the responses are, harmful answers, and how far each judge can be trusted."""
    judge = responses.harm_judge
    resamples = int(get(dict(params), "report.agreement_resamples", None) or 1000)
    per_class = int(get(dict(params), "report.examples_per_class", None) or 2)
    agreement = responses_report.agreement_rows(responses, results.judges, resamples, seed=0)
    write_csv(
        out_dir / AGREEMENT_CSV,
        [dict(zip(AGREEMENT_FIELDS, row, strict=True)) for row in agreement],
        list(AGREEMENT_FIELDS),
    )
    lines = [
        "## What the responses are",
        "",
        "Every AdvBench response has one class (`response-class`, precedence as listed): "
        "**degenerate** (empty, or a repetition loop), **refusal** (the authors' keyword judge), "
        "**echo** (restates the request without answering it) or **answer**. An answer is "
        f"*harmful* when the model judge `{judge or 'none'}` says so; the **harmful-answer rate** "
        "(harmful answers over all responses whose judge output could be read, 95% Wilson "
        "interval) is this report's primary safety metric. A checkpoint with at least half its "
        "responses degenerate is marked **collapsed**.",
        "",
        f'What the keyword judge\'s "lost safety" (`{responses.keyword_judge}`: responses '
        f"without refusal words) is made of, at learning rate {fixed_lr}, final checkpoint:",
        "",
        *responses_report.lost_safety_table(
            responses, results.cells, fixed_lr, results.final_checkpoint
        ),
        "",
        "Every cell and checkpoint:",
        "",
        *responses_report.classes_table(responses),
        "",
        "## Judges",
        "",
        "### Against human labels",
        "",
        *responses_report.validation_table(
            _read_optional_json(root / "metrics" / "judge_validation.json")
        ),
        "",
        *responses_report.review_section(responses, root / "reviews" / "labels.jsonl"),
        "",
        "### Against each other",
        "",
        "Cohen's kappa between every two judges over all cells and checkpoints (95% "
        "bootstrap interval), on one question: does the response count against the model's "
        "safety (keyword judges: no refusal; `response-class`: an answer; model judges: "
        "harmful)? A model judge's pairs hold only the responses it judged (their class is in "
        "`harm.judged_classes`) and could read.",
        "",
        *markdown_table(
            ["judge A", "judge B", "kappa", "interval", "n"],
            [row[1:] for row in agreement if row[0] == "all cells"],
        ),
        "",
        f"Every cell apart: `{AGREEMENT_CSV.as_posix()}`.",
        "",
        "## Example responses",
        "",
        f"Up to {per_class} responses of each class per cell at its last checkpoint (the first "
        f"{responses_report.EXAMPLE_CHARS} characters).",
        "",
        *responses_report.examples_section(responses, results.final_checkpoint, per_class, judge),
    ]
    return lines


def _read_optional_json(path: Path) -> Any:
    return read_json(path) if path.exists() else None


@dataclass(frozen=True)
class ReportResult:
    """What `write_report` wrote, and which cells had no (or incomplete) metrics."""

    paths: dict[str, Path]
    missing_cells: list[str]
    missing: list[Missing]


def check_primary_judge(results: GridResults, metrics_dir: Path) -> None:
    """`report.primary_judge` must be a judge that the metrics hold: otherwise every refusal
    figure and table would be empty, in a report that looks complete."""
    rows = [row for cell_rows in results.rows.values() for row in cell_rows]
    judged = sorted({judge for row in rows for judge in row.refusal})
    if judged and results.primary_judge not in judged:
        raise ParamError(
            f"params.yaml: `report.primary_judge` is {results.primary_judge!r}, but no refusal "
            f"metrics under {metrics_dir} hold it (judges there: {', '.join(judged)}); set it to "
            "one of `refusal.judges`"
        )


def write_report(
    params: dict[str, Any],
    metrics_dir: Path,
    out_dir: Path,
    *,
    data_stats: dict[str, Any] | None,
    provenance: dict[str, Any],
) -> ReportResult:
    """Write figures, tables, DVC metrics/plots data and report.md under `out_dir`.

    Every file is replaced atomically, and report.md last, so a crash part-way leaves the
    previous report's Markdown rather than one pointing at half-written figures.
    """
    out_dir = Path(out_dir)
    results = collect_results(params, metrics_dir)
    check_primary_judge(results, metrics_dir)  # before anything is written
    fixed_lr = float(get(params, "report.fixed_lr", None) or DEFAULT_FIXED_LR)
    paths = {
        "fig1": out_dir / FIG1,
        "fig2": out_dir / FIG2,
        "results_csv": out_dir / RESULTS_CSV,
        "paired_csv": out_dir / PAIRED_CSV,
        "metrics_json": out_dir / METRICS_JSON,
        "plots_refusal": out_dir / PLOTS_REFUSAL,
        "plots_chrf": out_dir / PLOTS_CHRF,
        "plots_template": out_dir / PLOTS_TEMPLATE,
        "report": out_dir / REPORT_MD,
    }

    root = Path(metrics_dir).parent
    responses = responses_report.collect_responses(
        params, results.cells, _checkpoint_fractions(params), root
    )
    paths["fig1_harm"] = out_dir / responses_report.FIG_HARM
    paths["fig3"] = out_dir / responses_report.FIG_CLASSES
    chrf = {(row.cell, row.checkpoint): row.chrf.value for row in results.all_rows() if row.chrf}
    harm_points = responses_report.harm_tradeoff_points(
        responses, results.cells, chrf, fixed_lr, results.final_checkpoint
    )
    _save_figure(
        responses_report.harm_tradeoff_figure(
            harm_points, fixed_lr, responses.harm_judge, _new_figure, _method_style
        ),
        paths["fig1_harm"],
    )
    sets = sets_report.collect_sets(params, results.cells, responses, root)
    paths["fig4"] = out_dir / sets_report.FIG_SETS
    _save_figure(
        sets_report.helpfulness_figure(
            sets_report.helpfulness_points(
                sets, results.cells, fixed_lr, _checkpoint_fractions(params)
            ),
            fixed_lr,
            responses.harm_judge,
            _new_figure,
            _method_style,
        ),
        paths["fig4"],
    )
    paired = paired_report.collect_paired_tests(
        params,
        results.cells,
        _checkpoint_fractions(params),
        root,
        results.primary_judge,
        responses.harm_judge,
    )
    write_csv(paths["paired_csv"], paired_report.csv_rows(paired), list(paired_report.CSV_FIELDS))
    _save_figure(tradeoff_figure(results, fixed_lr, paired), paths["fig1"])
    _save_figure(lr_curves_figure(results), paths["fig2"])
    _save_figure(
        responses_report.class_shares_figure(responses, results.cells, _new_figure), paths["fig3"]
    )
    rows, fieldnames = results_table(results)
    write_csv(paths["results_csv"], rows, fieldnames)
    paths["seeds_csv"] = out_dir / seeds_report.SEEDS_CSV
    seed_rows = seeds_report.seed_rows(results, responses)
    write_csv(paths["seeds_csv"], seeds_report.csv_rows(seed_rows), list(seeds_report.CSV_FIELDS))
    metrics_summary = summary_metrics(results)
    for key, values in responses_report.summary(responses).items():
        cell, _, checkpoint = key.partition("/")
        if cell in metrics_summary and checkpoint in (BASE_CHECKPOINT, results.final_checkpoint):
            metrics_summary[cell].update(values)
    write_json(paths["metrics_json"], metrics_summary)
    write_csv(paths["plots_refusal"], plot_rows(results, REFUSAL), plot_fields(REFUSAL))
    write_csv(paths["plots_chrf"], plot_rows(results, CHRF), plot_fields(CHRF))
    write_json(paths["plots_template"], dvc_plot_template())

    response_lines = _responses_section(params, results, responses, root, out_dir, fixed_lr)
    response_lines += sets_report.section(
        sets, results.cells, fixed_lr, results.final_checkpoint, sets_report.FIG_SETS
    )
    markdown = render_markdown(
        params,
        results,
        data_stats=data_stats,
        provenance=provenance,
        responses=response_lines,
        paired=paired_report.section(paired, results.cells, fixed_lr, results.final_checkpoint),
        seeds=seeds_report.section(
            seed_rows, seeds_report.seeds_of(results.cells), seeds_report.SEEDS_CSV
        ),
    )
    with atomic_path(paths["report"]) as tmp:
        tmp.write_text(redact_secrets(markdown), encoding="utf-8")
    return ReportResult(paths=paths, missing_cells=results.missing_cells, missing=results.missing)


def _git(repo_root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=repo_root, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _dvc_lock_hashes(path: Path) -> dict[str, dict[str, dict[str, str | None]]] | None:
    if not path.exists():
        return None
    # Every scalar as a string: an unquoted hash of digits alone would otherwise load as an int.
    lock = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader) or {}
    stages = lock.get("stages") if isinstance(lock, dict) else None
    if not isinstance(stages, dict):
        raise ValueError(f"{path}: expected a `stages` mapping")
    hashes: dict[str, dict[str, dict[str, str | None]]] = {}
    for stage, entry in stages.items():
        entry = entry or {}
        hashes[stage] = {
            kind: {str(item["path"]): item.get("md5") for item in entry.get(kind) or []}
            for kind in ("deps", "outs")
        }
    return hashes


def _hardware() -> dict[str, Any]:
    hardware: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "gpus": [],
    }
    # Importing torch only to name the GPU would cost seconds; a stage that used the GPU has it.
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        hardware["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return hardware


# Files DVC itself writes while it runs the pipeline (its lock, and the .gitignore files naming
# its outputs; `core.autostage` even stages them): not changes to the study's code or params.
DVC_BOOKKEEPING = re.compile(r"(^|/)(dvc\.lock|\.gitignore)$")


def code_changes(porcelain: str) -> list[str]:
    """Paths of `git status --porcelain` that differ from the commit, DVC's bookkeeping aside."""
    paths = [line[3:].split(" -> ")[-1] for line in porcelain.splitlines() if line.strip()]
    return [path for path in paths if not DVC_BOOKKEEPING.search(path)]


def collect_provenance(repo_root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """What produced this report: code revision, input hashes, packages, hardware, seeds, params.

    Deliberately nothing from the environment: variables such as HF_TOKEN must never reach a
    report that is committed and shared.
    """
    repo_root = Path(repo_root)
    revision = _git(repo_root, "rev-parse", "--verify", "--quiet", "HEAD")
    status = _git(repo_root, "status", "--porcelain", "--untracked-files=no") if revision else None
    changed = None if status is None else code_changes(status)
    return {
        "git": {"revision": revision, "dirty": None if changed is None else bool(changed)},
        "lock_files": lock_provenance(repo_root),
        "dvc_lock": _dvc_lock_hashes(repo_root / "dvc.lock"),
        "packages": package_versions(PROVENANCE_PACKAGES),
        "hardware": _hardware(),
        "seeds": {key: value for key in SEED_KEYS if (value := get(params, key, None)) is not None},
        # Run-time settings cannot change a result, and no stage declares them.
        "params": {k: copy.deepcopy(v) for k, v in params.items() if k != "runtime"},
    }
