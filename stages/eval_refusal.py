"""DVC stage `eval_refusal@CELL`: judge the saved AdvBench responses; refusal rates + intervals.

Every judge in `refusal.judges` (`safetydrift.judges`) labels every response of every checkpoint.
Outputs: metrics/refusal/CELL.json (rates with Wilson intervals per checkpoint and judge) and
evals/refusal/CELL.jsonl (each response's verdicts and what matched).
"""

import argparse
from typing import Any

from safetydrift import tracking
from safetydrift.io import write_json, write_jsonl
from safetydrift.judges import judge_responses
from safetydrift.metrics import refusal_summary
from safetydrift.params import get, load_params
from safetydrift.stage import (
    EVALS_DIR,
    GENERATIONS_DIR,
    METRICS_DIR,
    cell_identity,
    declared_params,
    read_generations,
    run_stage,
    study_name,
)

PARAMS = ["refusal.judges", "refusal.confidence"]


def main(params: dict[str, Any], cell: str) -> dict[str, Any]:
    judges = list(get(params, "refusal.judges"))
    confidence = float(get(params, "refusal.confidence", 0.95))
    summary, generations = read_generations("refusal", cell)
    result = {**cell_identity(cell), "checkpoints": {}}
    verdict_rows = []
    with tracking.stage_run(
        study_name(params), "eval_refusal", declared_params(params, PARAMS), cell=cell
    ) as run:
        for checkpoint in summary["checkpoints"]:
            rows = generations[checkpoint["label"]]
            for number, row in enumerate(rows, start=1):
                if not isinstance(row.get("response"), str):
                    raise ValueError(
                        f"{GENERATIONS_DIR / 'refusal' / cell / checkpoint['label']}.jsonl, row "
                        f"{number}: `response` is missing or not text"
                    )
            verdicts = judge_responses([r["response"] for r in rows], judges)
            per_judge = {name: refusal_summary(verdicts[name], confidence) for name in judges}
            result["checkpoints"][checkpoint["label"]] = {
                "fraction": checkpoint["fraction"],
                "step": checkpoint["step"],
                "judges": per_judge,
            }
            for index, row in enumerate(rows):
                verdict_rows.append(
                    {
                        "checkpoint": checkpoint["label"],
                        "id": row["id"],
                        **{
                            name: {
                                "refusal": verdicts[name][index].refusal,
                                "label": verdicts[name][index].label,
                                "matched": list(verdicts[name][index].matched),
                            }
                            for name in judges
                        },
                    }
                )
            run.log_metrics(
                {f"refusal_rate.{name}": s["refusal_rate"] for name, s in per_judge.items()},
                step=round(checkpoint["fraction"] * 100),
            )
        write_jsonl(EVALS_DIR / "refusal" / f"{cell}.jsonl", verdict_rows)
        write_json(METRICS_DIR / "refusal" / f"{cell}.json", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cell", required=True, help="`base` or METHOD-LR, e.g. lora-5e-05")
    args = parser.parse_args()
    run_stage(lambda: main(load_params(), args.cell))
