"""DVC stage `prepare_advbench`: AdvBench's requests into data/advbench.jsonl (`id`, `prompt`)."""

from pathlib import Path
from typing import Any

from safetydrift import tracking
from safetydrift.data.advbench import prepare_advbench
from safetydrift.data.sources import Source
from safetydrift.params import get, load_params
from safetydrift.stage import ADVBENCH_FILE, declared_params, run_stage, study_name

PARAMS = ["data.advbench"]


def main(params: dict[str, Any], out_path: Path = ADVBENCH_FILE) -> dict[str, Any]:
    advbench = get(params, "data.advbench")
    with tracking.stage_run(
        study_name(params), "prepare_advbench", declared_params(params, PARAMS)
    ) as run:
        stats = prepare_advbench(
            Source(str(advbench["source"]), advbench.get("revision")), out_path
        )
        run.log_metrics({"rows": stats["rows"]})
    return stats


if __name__ == "__main__":
    run_stage(lambda: main(load_params()))
