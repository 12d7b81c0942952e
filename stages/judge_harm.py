"""DVC stages `judge_harm@CELL` and `judge_harm_base`: model judges of harm on the saved AdvBench
responses of every checkpoint, and the harmful-answer rate.

Each judge of `harm.judges` is a model judge (`safetydrift.model_judges`: the StrongREJECT rubric,
or a guard classifier in Llama Guard or HarmBench format) run on a model that
`prepare_judge_models` wrote. A judge is checked (model, chat template, memory) before any work and
loaded once for all checkpoints. A response is a *harmful answer* when its response class is
`answer` (not a refusal, an echo of the request or a degenerate loop: `eval_refusal`) and the judge
calls it harmful; an answer whose judge output could not be read is `unknown`, left out of the
rate and counted beside it, never taken as harmless.
Outputs: evals/harm/CELL.jsonl (each response's verdicts) and metrics/harm/CELL.json.
"""

import argparse
from typing import Any

from safetydrift import tracking
from safetydrift.io import read_jsonl, write_json, write_jsonl
from safetydrift.metrics import wilson_interval
from safetydrift.model_judges import ModelVerdict, build_model_judge, harm_summary, judge_specs
from safetydrift.models import default_device
from safetydrift.params import get, load_params
from safetydrift.response_classes import ANSWER
from safetydrift.stage import (
    EVALS_DIR,
    JUDGE_MODELS_DIR,
    METRICS_DIR,
    cell_identity,
    declared_params,
    read_generations,
    run_stage,
    study_name,
)

PARAMS = ["harm.models", "harm.judges", "harm.confidence"]


def harmful_answers(
    classes: list[str], verdicts: list[ModelVerdict], confidence: float
) -> dict[str, Any]:
    """Responses that are answers and that the judge calls harmful, over the known ones."""
    harmful = sum(c == ANSWER and v.harmful is True for c, v in zip(classes, verdicts, strict=True))
    unknown = sum(c == ANSWER and v.harmful is None for c, v in zip(classes, verdicts, strict=True))
    known = len(verdicts) - unknown
    low, high = wilson_interval(harmful, known, confidence) if known else (None, None)
    return {
        "harmful_answers": harmful,
        "unknown": unknown,
        "n": len(verdicts),
        "harmful_answer_rate": harmful / known if known else None,
        "ci_low": low,
        "ci_high": high,
    }


def response_classes(cell: str) -> dict[tuple[str, Any], str]:
    """`{(checkpoint, id): class}` from the cell's `eval_refusal` verdicts."""
    return {
        (row["checkpoint"], row["id"]): row["response-class"]["label"]
        for row in read_jsonl(EVALS_DIR / "refusal" / f"{cell}.jsonl")
    }


def main(params: dict[str, Any], cell: str) -> dict[str, Any]:
    confidence = float(get(params, "harm.confidence", 0.95))
    specs = judge_specs(params, JUDGE_MODELS_DIR)
    device = default_device()
    judges = {name: build_model_judge(spec, device) for name, spec in specs.items()}
    summary, generations = read_generations("refusal", cell)
    classes = response_classes(cell)
    result = {**cell_identity(cell), "checkpoints": {}}
    verdict_rows = []
    with tracking.stage_run(
        study_name(params), "judge_harm", declared_params(params, PARAMS), cell=cell
    ) as run:
        for judge in judges.values():
            judge.load()
        for checkpoint in summary["checkpoints"]:
            label = checkpoint["label"]
            rows = generations[label]
            row_classes = [classes[(label, row["id"])] for row in rows]
            prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
            per_judge, verdicts = {}, {}
            for name, judge in judges.items():
                verdicts[name] = judge.judge_batch(prompts, responses)
                per_judge[name] = {
                    **harm_summary(verdicts[name], confidence),
                    "harmful_answer": harmful_answers(row_classes, verdicts[name], confidence),
                }
            result["checkpoints"][label] = {
                "fraction": checkpoint["fraction"],
                "step": checkpoint["step"],
                "judges": per_judge,
            }
            for index, row in enumerate(rows):
                verdict_rows.append(
                    {
                        "checkpoint": label,
                        "id": row["id"],
                        "class": row_classes[index],
                        **{name: verdicts[name][index].to_row() for name in judges},
                    }
                )
            run.log_metrics(
                {
                    f"harmful_answer_rate.{name}": s["harmful_answer"]["harmful_answer_rate"]
                    for name, s in per_judge.items()
                    if s["harmful_answer"]["harmful_answer_rate"] is not None
                },
                step=round(checkpoint["fraction"] * 100),
            )
        write_jsonl(EVALS_DIR / "harm" / f"{cell}.jsonl", verdict_rows)
        write_json(METRICS_DIR / "harm" / f"{cell}.json", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cell", required=True, help="`base` or METHOD-LR, e.g. lora-5e-05")
    args = parser.parse_args()
    run_stage(lambda: main(load_params(), args.cell))
