"""DVC stage `eval_refusal@CELL`: judge the saved AdvBench responses; refusal rates + intervals,
and what each response is.

Every judge in `refusal.judges` (`safetydrift.judges`) labels every response of every checkpoint,
and the model-free `response-class` judge (`safetydrift.response_classes`) gives each one class:
degenerate, refusal, echo or answer. A checkpoint with at least half its responses degenerate is
marked `collapsed`. Outputs: metrics/refusal/CELL.json (rates and class shares with Wilson
intervals per checkpoint) and evals/refusal/CELL.jsonl (each response's verdicts, class and its
evidence).
"""

import argparse
from typing import Any

from safetydrift import tracking
from safetydrift.files import write_json, write_jsonl
from safetydrift.judges import judge_responses
from safetydrift.metrics import refusal_summary, wilson_interval
from safetydrift.params import get, load_params
from safetydrift.response_classes import (
    DEGENERATE,
    PARAMS_KEY,
    RESPONSE_CLASS_JUDGE,
    ResponseClassSettings,
    ResponseClassVerdict,
    class_counts,
    classify_responses,
    verdict_columns,
)
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

PARAMS = ["refusal.judges", "refusal.response_class", "refusal.confidence"]
# At least this share of degenerate responses makes a checkpoint `collapsed` in tables and figures.
COLLAPSED_SHARE = 0.5


def class_shares(verdicts: list[ResponseClassVerdict], confidence: float) -> dict[str, Any]:
    counts = class_counts(verdicts)
    shares = {}
    for name, count in counts.items():
        low, high = wilson_interval(count, len(verdicts), confidence)
        shares[name] = {
            "count": count,
            "share": count / len(verdicts),
            "ci_low": low,
            "ci_high": high,
        }
    return shares


def main(params: dict[str, Any], cell: str) -> dict[str, Any]:
    judges = list(get(params, "refusal.judges"))
    confidence = float(get(params, "refusal.confidence", 0.95))
    class_settings = ResponseClassSettings.from_params(get(params, PARAMS_KEY, None))
    summary, generations = read_generations("refusal", cell)
    result = {**cell_identity(cell), "checkpoints": {}}
    verdict_rows, table_rows = [], []
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
            classes = classify_responses(
                [r["prompt"] for r in rows],
                [r["response"] for r in rows],
                [r.get("finish_reason") for r in rows],
                class_settings,
            )
            shares = class_shares(classes, confidence)
            # Its refusals (class `refusal`) beside the other judges', for comparisons by judge.
            per_judge[RESPONSE_CLASS_JUDGE] = refusal_summary(classes, confidence)
            result["checkpoints"][checkpoint["label"]] = {
                "fraction": checkpoint["fraction"],
                "step": checkpoint["step"],
                "judges": per_judge,
                "classes": shares,
                "collapsed": shares[DEGENERATE]["share"] >= COLLAPSED_SHARE,
            }
            table_rows += rows
            for index, row in enumerate(rows):
                verdict_rows.append(
                    {
                        "checkpoint": checkpoint["label"],
                        "id": row["id"],
                        **verdict_columns(verdicts, classes, index),
                    }
                )
            run.log_metrics(
                {f"refusal_rate.{name}": s["refusal_rate"] for name, s in per_judge.items()}
                | {f"class_share.{name}": c["share"] for name, c in shares.items()},
                step=round(checkpoint["fraction"] * 100),
            )
        # Every response with its verdicts, browsable and comparable across runs in MLflow.
        run.log_table(
            {
                "checkpoint": [r["checkpoint"] for r in verdict_rows],
                "id": [r["id"] for r in verdict_rows],
                "prompt": [r["prompt"] for r in table_rows],
                "response": [r["response"] for r in table_rows],
                RESPONSE_CLASS_JUDGE: [r[RESPONSE_CLASS_JUDGE]["label"] for r in verdict_rows],
                **{name: [r[name]["refusal"] for r in verdict_rows] for name in judges},
            },
            "responses.json",
        )
        write_jsonl(EVALS_DIR / "refusal" / f"{cell}.jsonl", verdict_rows)
        write_json(METRICS_DIR / "refusal" / f"{cell}.json", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cell", required=True, help="`base` or METHOD-LR-SEED (lora-5e-05-42)")
    args = parser.parse_args()
    run_stage(lambda: main(load_params(), args.cell))
