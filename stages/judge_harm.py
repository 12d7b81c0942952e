"""DVC stages `judge_harm@CELL` and `judge_harm_base`: model judges of harm on the saved AdvBench
responses of every checkpoint, and the harmful-answer rate.

Each judge of `harm.judges` is a model judge (`safetydrift.model_judges`: the StrongREJECT rubric,
or a guard classifier in Llama Guard or HarmBench format) run on a model that
`prepare_judge_models` wrote. A judge is checked (model, chat template, memory) before any work and
loaded once for all checkpoints. A response is a *harmful answer* when its response class is
`answer` (not a refusal, an echo of the request or a degenerate loop: `eval_refusal`) and the judge
calls it harmful; an answer whose judge output could not be read is `unknown`, left out of the
rate and counted beside it, never taken as harmless.

Only the responses whose class is in `harm.judged_classes` (by default answers: the only ones the
rate counts) go to the judges, those of every checkpoint in one batched call per judge, each
distinct (request, response) pair once (`safetydrift.harm`); the others are written as not judged.
Outputs: evals/harm/CELL.jsonl (each response's class and verdicts) and metrics/harm/CELL.json
(per checkpoint: responses judged, each judge's rates). The judge models' loading and each
judge's judging seconds go to MLflow and timings/judge_harm/CELL.json, outside DVC's outputs, so
that reruns compare equal; the stage's wall time beyond them is the process's start-up.
"""

import argparse
from typing import Any

from safetydrift import tracking
from safetydrift.files import read_jsonl, write_json, write_jsonl
from safetydrift.harm import (
    harmful_answers,
    judge_selected,
    judged_classes,
    judged_summary,
    load_judges,
    verdict_row,
)
from safetydrift.model_judges.judging import build_model_judge
from safetydrift.model_judges.spec import judge_specs
from safetydrift.models import default_device
from safetydrift.params import get, load_params
from safetydrift.stage import (
    EVALS_DIR,
    JUDGE_MODELS_DIR,
    METRICS_DIR,
    TIMINGS_DIR,
    cell_identity,
    declared_params,
    read_generations,
    run_stage,
    study_name,
)

PARAMS = ["harm.models", "harm.judges", "harm.judged_classes", "harm.confidence"]


def response_classes(cell: str) -> dict[tuple[str, Any], str]:
    """`{(checkpoint, id): class}` from the cell's `eval_refusal` verdicts."""
    return {
        (row["checkpoint"], row["id"]): row["response-class"]["label"]
        for row in read_jsonl(EVALS_DIR / "refusal" / f"{cell}.jsonl")
    }


def main(params: dict[str, Any], cell: str) -> dict[str, Any]:
    confidence = float(get(params, "harm.confidence", 0.95))
    selected = judged_classes(params)
    specs = judge_specs(params, JUDGE_MODELS_DIR)
    device = default_device()
    judges = {name: build_model_judge(spec, device) for name, spec in specs.items()}
    summary, generations = read_generations("refusal", cell)
    classes = response_classes(cell)
    checkpoints = summary["checkpoints"]
    rows = [row for c in checkpoints for row in generations[c["label"]]]
    labels = [c["label"] for c in checkpoints for _ in generations[c["label"]]]
    row_classes = [classes[(label, row["id"])] for label, row in zip(labels, rows, strict=True)]
    result = {**cell_identity(cell), "judged_classes": list(selected), "checkpoints": {}}
    verdict_rows = []
    with tracking.stage_run(
        study_name(params), "judge_harm", declared_params(params, PARAMS), cell=cell
    ) as run:
        load_seconds = load_judges(judges)
        judged = judge_selected(
            judges,
            [r["prompt"] for r in rows],
            [r["response"] for r in rows],
            row_classes,
            selected,
        )
        result["judged_pairs"] = judged.pairs
        start = 0
        for checkpoint in checkpoints:
            label = checkpoint["label"]
            stop = start + len(generations[label])
            part_classes = row_classes[start:stop]
            per_judge = {
                name: {
                    **judged_summary(verdicts[start:stop], confidence),
                    "harmful_answer": harmful_answers(
                        part_classes, verdicts[start:stop], confidence
                    ),
                }
                for name, verdicts in judged.verdicts.items()
            }
            result["checkpoints"][label] = {
                "fraction": checkpoint["fraction"],
                "step": checkpoint["step"],
                "responses": stop - start,
                "judged": judged.judged(start, stop),
                "judges": per_judge,
            }
            for index in range(start, stop):
                verdict_rows.append(
                    verdict_row(
                        label,
                        rows[index]["id"],
                        row_classes[index],
                        {name: v[index] for name, v in judged.verdicts.items()},
                    )
                )
            run.log_metrics(
                {"judged": judged.judged(start, stop)}
                | {
                    f"harmful_answer_rate.{name}": s["harmful_answer"]["harmful_answer_rate"]
                    for name, s in per_judge.items()
                    if s["harmful_answer"]["harmful_answer_rate"] is not None
                },
                step=round(checkpoint["fraction"] * 100),
            )
            start = stop
        timing = {
            "cell": cell,
            "judged_pairs": judged.pairs,
            "load_seconds": load_seconds,
            "judge_seconds": judged.seconds,
        }
        run.log_metrics(
            {"judged_pairs": judged.pairs, "judge_load_seconds": load_seconds}
            | {f"judge_seconds.{name}": s for name, s in judged.seconds.items()}
        )
        write_jsonl(EVALS_DIR / "harm" / f"{cell}.jsonl", verdict_rows)
        write_json(METRICS_DIR / "harm" / f"{cell}.json", result)
    write_json(TIMINGS_DIR / "judge_harm" / f"{cell}.json", timing)
    return {**result, "judge_seconds": judged.seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cell", required=True, help="`base` or METHOD-LR-SEED (lora-5e-05-42)")
    args = parser.parse_args()
    run_stage(lambda: main(load_params(), args.cell))
