"""`write_report`: every figure, table, DVC metrics/plots file and report.md of a report, from
the metric files under `metrics/` and the per-prompt results beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetydrift.files import atomic_path, write_csv, write_json
from safetydrift.params import get
from safetydrift.report import evaluation_sets as sets_report
from safetydrift.report import judges as judges_report
from safetydrift.report import paired as paired_report
from safetydrift.report import responses as responses_report
from safetydrift.report import seeds as seeds_report
from safetydrift.report.figures import (
    FIG1,
    FIG2,
    lr_curves_figure,
    method_style,
    new_figure,
    save_figure,
    tradeoff_figure,
)
from safetydrift.report.markdown import (
    REPORT_MD,
    redact_secrets,
    render_markdown,
    responses_section,
)
from safetydrift.report.results import (
    BASE_CHECKPOINT,
    CHRF,
    REFUSAL,
    Missing,
    check_primary_judge,
    checkpoint_fractions,
    collect_results,
    fixed_learning_rate,
)
from safetydrift.report.tables import (
    AGREEMENT_CSV,
    AGREEMENT_FIELDS,
    METRICS_JSON,
    PAIRED_CSV,
    PLOTS_CHRF,
    PLOTS_REFUSAL,
    PLOTS_TEMPLATE,
    RESULTS_CSV,
    dvc_plot_template,
    plot_fields,
    plot_rows,
    results_table,
    summary_metrics,
)


@dataclass(frozen=True)
class ReportResult:
    """What `write_report` wrote, and which cells had no (or incomplete) metrics."""

    paths: dict[str, Path]
    missing_cells: list[str]
    missing: list[Missing]


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
    fixed_lr = fixed_learning_rate(params)
    fractions = checkpoint_fractions(params)
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
    responses = responses_report.collect_responses(params, results.cells, fractions, root)
    paths["fig1_harm"] = out_dir / responses_report.FIG_HARM
    paths["fig3"] = out_dir / responses_report.FIG_CLASSES
    chrf = {(row.cell, row.checkpoint): row.chrf.value for row in results.all_rows() if row.chrf}
    harm_points = responses_report.harm_tradeoff_points(
        responses, results.cells, chrf, fixed_lr, results.final_checkpoint
    )
    save_figure(
        responses_report.harm_tradeoff_figure(
            harm_points, fixed_lr, responses.harm_judge, new_figure, method_style
        ),
        paths["fig1_harm"],
    )
    sets = sets_report.collect_sets(params, results.cells, responses, root)
    paths["fig4"] = out_dir / sets_report.FIG_SETS
    save_figure(
        sets_report.helpfulness_figure(
            sets_report.helpfulness_points(sets, results.cells, fixed_lr, fractions),
            fixed_lr,
            responses.harm_judge,
            new_figure,
            method_style,
        ),
        paths["fig4"],
    )
    paired = paired_report.collect_paired_tests(
        params,
        results.cells,
        fractions,
        root,
        results.primary_judge,
        responses.harm_judge,
    )
    write_csv(paths["paired_csv"], paired_report.csv_rows(paired), list(paired_report.CSV_FIELDS))
    save_figure(tradeoff_figure(results, fixed_lr, paired), paths["fig1"])
    save_figure(lr_curves_figure(results), paths["fig2"])
    save_figure(
        responses_report.class_shares_figure(responses, results.cells, new_figure), paths["fig3"]
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

    resamples = int(get(params, "report.agreement_resamples", None) or 1000)
    agreement = judges_report.agreement_rows(responses, results.judges, resamples, seed=0)
    write_csv(
        out_dir / AGREEMENT_CSV,
        [dict(zip(AGREEMENT_FIELDS, row, strict=True)) for row in agreement],
        list(AGREEMENT_FIELDS),
    )
    response_lines = responses_section(params, results, responses, agreement, root, fixed_lr)
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
