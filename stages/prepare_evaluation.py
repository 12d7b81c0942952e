"""DVC stage `prepare_evaluation@SET`: an evaluation set's prompts into data/evaluations/SET.jsonl
(`id`, `prompt`), from its source and column mapping (`evaluations.sets.SET`,
`safetydrift.evaluation_sets`): local files (CSV, JSON, JSON Lines, Parquet) or a hub id with its
pinned revision, rows kept by `filter`, a context column put before the prompt (HarmBench).
"""

import argparse
from pathlib import Path
from typing import Any

from safetydrift import tracking
from safetydrift.evaluation_sets import DATA_DIR, evaluation_set, prepare_prompts
from safetydrift.params import load_params
from safetydrift.stage import declared_params, run_stage, study_name

PARAMS = ["evaluations.sets.{evaluation}"]


def main(params: dict[str, Any], evaluation: str, out_dir: Path = DATA_DIR) -> dict[str, Any]:
    spec = evaluation_set(params, evaluation)
    keys = [key.format(evaluation=evaluation) for key in PARAMS]
    with tracking.stage_run(
        study_name(params), "prepare_evaluation", declared_params(params, keys), cell=evaluation
    ) as run:
        stats = prepare_prompts(spec, out_dir / f"{evaluation}.jsonl")
        run.log_metrics({"rows": stats["rows"]})
    return stats


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="evaluation", required=True, help="the evaluation set")
    args = parser.parse_args()
    run_stage(lambda: main(load_params(), args.evaluation))
