"""The report's tables and data files: results.csv, metrics.json (DVC metrics), and the long
rows and Vega-Lite template of `dvc plots`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetydrift.cells import BASE_CELL, Cell
from safetydrift.report import seeds as seeds_report
from safetydrift.report.results import CHRF, MISSING, REFUSAL, GridResults, csv_number, lr_curves

RESULTS_CSV = Path("results.csv")
PAIRED_CSV = Path("paired_tests.csv")
AGREEMENT_CSV = Path("judge_agreement.csv")
AGREEMENT_FIELDS = ("cell", "judge_a", "judge_b", "kappa", "interval", "n")
METRICS_JSON = Path("metrics.json")
PLOTS_REFUSAL = Path("plots/refusal.csv")
PLOTS_CHRF = Path("plots/chrf.csv")
# A Vega-Lite template for `dvc plots`: its built-in templates draw one line per file and field,
# never one per value of a column, so drawing one line per learning rate from a single file (and
# so surviving a change of the grid without editing dvc.yaml) needs a template of our own.
PLOTS_TEMPLATE = Path("plots/lr_curves.vega.json")


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
            "learning_rate": csv_number(result.learning_rate),
            "seed": csv_number(seeds_report.seed_of(result.cell)),
            "checkpoint": result.checkpoint,
            "fraction": csv_number(result.fraction),
            "step": csv_number(result.step),
            "refusal_rate": csv_number(primary.value if primary else None),
            "refusal_ci_low": csv_number(primary.ci_low if primary else None),
            "refusal_ci_high": csv_number(primary.ci_high if primary else None),
            "refusal_n": csv_number(primary.n if primary else None),
            "chrf": csv_number(result.chrf.value if result.chrf else None),
            "chrf_ci_low": csv_number(result.chrf.ci_low if result.chrf else None),
            "chrf_ci_high": csv_number(result.chrf.ci_high if result.chrf else None),
            "chrf_n": csv_number(result.chrf.n if result.chrf else None),
            MISSING: ";".join(result.missing_metrics(results.primary_judge)),
        }
        for judge in other_judges:
            estimate = result.refusal.get(judge)
            row[_judge_column(judge)] = csv_number(estimate.value if estimate else None)
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
                        "seed": csv_number(seed),
                        "cell": Cell(method, lr, seed).name,
                        "checkpoint": point.checkpoint,
                        "percent": csv_number(point.percent),
                        "step": csv_number(point.step),
                        PLOT_VALUE_FIELDS[metric]: repr(point.estimate.value),
                        "ci_low": csv_number(point.estimate.ci_low),
                        "ci_high": csv_number(point.estimate.ci_high),
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
