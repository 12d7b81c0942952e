"""DVC stage `report`: figures, tables and provenance of the whole grid under reports/.

`safetydrift report` runs this same file; it writes the report from whatever metrics exist, so a
grid still running shows its missing cells as missing, never as zero.
"""

from typing import Any

from safetydrift import tracking
from safetydrift.files import read_json
from safetydrift.params import load_params
from safetydrift.report.provenance import collect_provenance
from safetydrift.report.write import ReportResult, write_report
from safetydrift.stage import (
    METRICS_DIR,
    MTPREF_DIR,
    REPORTS_DIR,
    declared_params,
    run_stage,
    study_name,
)

# Every study section: the report shows them all in its provenance (run-time settings are not
# study settings and are left out of it).
PARAMS = [
    "study",
    "model",
    "prompt",
    "data",
    "train_data",
    "train",
    "grid",
    "methods",
    "generation",
    "refusal",
    "harm",
    "validation",
    "chrf",
    "evaluations",
    "report",
]


def main(params: dict[str, Any]) -> ReportResult:
    stats_file = MTPREF_DIR / "stats.json"
    data_stats = read_json(stats_file) if stats_file.exists() else None
    with tracking.stage_run(study_name(params), "report", declared_params(params, PARAMS)) as run:
        provenance = collect_provenance(tracking.repo_root(), params)
        result = write_report(
            params, METRICS_DIR, REPORTS_DIR, data_stats=data_stats, provenance=provenance
        )
        run.log_artifact(REPORTS_DIR / "report.md")
        for figure in sorted((REPORTS_DIR / "figures").glob("*.png")):
            run.log_artifact(figure, artifact_path="figures")
        run.set_tags({"missing_cells": ", ".join(result.missing_cells) or "none"})
    if result.missing_cells:
        print(f"missing cells: {', '.join(result.missing_cells)}")
    return result


if __name__ == "__main__":
    run_stage(lambda: main(load_params()))
