"""DVC stage `prepare_evaluation@UNIT`: the prompts of an entry of `evaluations.run` (a set, or a
group of sets) into data/evaluations/UNIT.jsonl (`id`, `prompt`, `set`: the member set's name),
from each set's source and column mapping (`evaluations.sets.UNIT`,
`safetydrift.evaluation_sets`): local files (CSV, JSON, JSON Lines, Parquet) or a hub id with its
pinned revision, rows kept by `filter`, a context column put before the prompt (HarmBench).
"""

import argparse
from pathlib import Path
from typing import Any

from safetydrift import tracking
from safetydrift.evaluation_sets import DATA_DIR, evaluation_unit, prepare_unit
from safetydrift.params import load_params
from safetydrift.stage import declared_params, run_stage, study_name

PARAMS = ["evaluations.sets.{evaluation}"]


def main(params: dict[str, Any], evaluation: str, out_dir: Path = DATA_DIR) -> dict[str, Any]:
    unit = evaluation_unit(params, evaluation)
    keys = [key.format(evaluation=evaluation) for key in PARAMS]
    with tracking.stage_run(
        study_name(params), "prepare_evaluation", declared_params(params, keys), cell=evaluation
    ) as run:
        stats = prepare_unit(unit, out_dir / f"{evaluation}.jsonl")
        run.log_metrics(
            {"rows": stats["rows"]}
            | {
                f"{unit.metric_prefix(name)}rows": member["rows"]
                for name, member in stats["sets"].items()
                if unit.grouped
            }
        )
    return stats


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="evaluation", required=True, help="the set or group")
    args = parser.parse_args()
    run_stage(lambda: main(load_params(), args.evaluation))
