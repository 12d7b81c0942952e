"""DVC stage `eval_chrf@CELL`: sacrebleu's corpus chrF of every checkpoint's translations against
MT-Pref's `chosen`, with a percentile-bootstrap interval, into metrics/chrf/CELL.json."""

import argparse
from typing import Any

from safetydrift import tracking
from safetydrift.files import write_json
from safetydrift.metrics import chrf_summary
from safetydrift.params import get, load_params
from safetydrift.stage import (
    METRICS_DIR,
    cell_identity,
    declared_params,
    read_generations,
    run_stage,
    study_name,
)

PARAMS = ["chrf.bootstrap_resamples", "chrf.confidence", "chrf.seed"]


def main(params: dict[str, Any], cell: str) -> dict[str, Any]:
    chrf = get(params, "chrf")
    summary, generations = read_generations("chrf", cell)
    result = {**cell_identity(cell), "checkpoints": {}}
    if "skipped" in summary:  # no translation test set: no checkpoint was translated
        result["skipped"] = summary["skipped"]
    with tracking.stage_run(
        study_name(params), "eval_chrf", declared_params(params, PARAMS), cell=cell
    ) as run:
        for checkpoint in summary["checkpoints"]:
            rows = generations[checkpoint["label"]]
            scores = chrf_summary(
                [r["response"] for r in rows],
                [r["reference"] for r in rows],
                n_resamples=int(chrf.get("bootstrap_resamples", 1000)),
                confidence=float(chrf.get("confidence", 0.95)),
                seed=int(chrf.get("seed", 0)),
            )
            result["checkpoints"][checkpoint["label"]] = {
                "fraction": checkpoint["fraction"],
                "step": checkpoint["step"],
                **{k: scores[k] for k in ("chrf", "ci_low", "ci_high", "n")},
            }
            run.log_metrics({"chrf": scores["chrf"]}, step=round(checkpoint["fraction"] * 100))
        write_json(METRICS_DIR / "chrf" / f"{cell}.json", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cell", required=True, help="`base` or METHOD-LR-SEED (lora-5e-05-42)")
    args = parser.parse_args()
    run_stage(lambda: main(load_params(), args.cell))
