"""DVC stages `judge_evaluation@SET-CELL` and `judge_evaluation_base@SET`: what each response of an
evaluation set is, at every checkpoint, and the set's rates (`safetydrift.evaluation_rates`).

Every response gets the keyword judges' verdicts (`refusal.judges`) and its model-free class
(`refusal.response_class`), exactly as AdvBench's in `eval_refusal`. A harmful set then goes to
the model judges of `harm.judges` as in `judge_harm` (only the classes `harm.judged_classes`
names, every checkpoint in one call, each distinct pair once) for its harmful-answer rates; a
benign set needs no model: its over-refusal, echo and answer rates come from the classes.
Outputs: evals/evaluations/SET/CELL.jsonl (each response's verdicts, class and evidence) and
metrics/evaluations/SET/CELL.json (per checkpoint, with Wilson intervals). A benign set's stage
declares the harm params too (one stage definition for every set), so changing the model judges
reruns it, at the cost of classifying its responses again.
"""

import argparse
from typing import Any

from safetydrift import tracking
from safetydrift.evaluation_rates import benign_rates, class_shares
from safetydrift.evaluation_sets import (
    BENIGN,
    EVALS_DIR,
    GENERATIONS_DIR,
    HARMFUL,
    METRICS_DIR,
    evaluation_set,
)
from safetydrift.files import read_json, read_jsonl, write_json, write_jsonl
from safetydrift.harm import (
    harmful_answers,
    judge_selected,
    judged_classes,
    judged_summary,
    verdict_row,
)
from safetydrift.judges import judge_responses
from safetydrift.metrics import refusal_summary
from safetydrift.model_judges.judging import build_model_judge
from safetydrift.model_judges.spec import judge_specs
from safetydrift.models import default_device
from safetydrift.params import get, load_params
from safetydrift.response_classes import (
    DEGENERATE,
    PARAMS_KEY,
    RESPONSE_CLASS_JUDGE,
    ResponseClassSettings,
    classify_responses,
)
from safetydrift.stage import (
    JUDGE_MODELS_DIR,
    TIMINGS_DIR,
    cell_identity,
    declared_params,
    run_stage,
    study_name,
)

PARAMS = [
    "refusal.judges",
    "refusal.response_class",
    "refusal.confidence",
    "harm.models",
    "harm.judges",
    "harm.judged_classes",
    "harm.confidence",
    "evaluations.sets.{evaluation}",
]
# At least this share of degenerate responses makes a checkpoint `collapsed`, as in eval_refusal.
COLLAPSED_SHARE = 0.5


def read_set_generations(evaluation: str, cell: str):
    directory = GENERATIONS_DIR / evaluation / cell
    summary = read_json(directory / "generation.json")
    rows = {}
    for checkpoint in summary["checkpoints"]:
        path = directory / f"{checkpoint['label']}.jsonl"
        rows[checkpoint["label"]] = read_jsonl(path)
        for number, row in enumerate(rows[checkpoint["label"]], start=1):
            if not isinstance(row.get("response"), str):
                raise ValueError(f"{path}, row {number}: `response` is missing or not text")
    return summary, rows


def main(params: dict[str, Any], evaluation: str, cell: str) -> dict[str, Any]:
    spec = evaluation_set(params, evaluation)
    keyword_judges = list(get(params, "refusal.judges"))
    confidence = float(get(params, "refusal.confidence", 0.95))
    harm_confidence = float(get(params, "harm.confidence", 0.95))
    class_settings = ResponseClassSettings.from_params(get(params, PARAMS_KEY, None))
    selected = judged_classes(params)
    judges = {}
    if spec.kind == HARMFUL:
        device = default_device()
        judges = {
            name: build_model_judge(s, device)
            for name, s in judge_specs(params, JUDGE_MODELS_DIR).items()
        }
    summary, generations = read_set_generations(evaluation, cell)
    checkpoints = summary["checkpoints"]
    name = f"{evaluation}-{cell}"
    result = {
        "evaluation": evaluation,
        "kind": spec.kind,
        **cell_identity(cell),
        "prompts": summary["prompts"],
        "checkpoints": {},
    }
    keys = [key.format(evaluation=evaluation) for key in PARAMS]
    with tracking.stage_run(
        study_name(params), "judge_evaluation", declared_params(params, keys), cell=name
    ) as run:
        rows, classes, verdict_rows = [], [], []
        for checkpoint in checkpoints:
            label = checkpoint["label"]
            part = generations[label]
            responses = [r["response"] for r in part]
            verdicts = judge_responses(responses, keyword_judges)
            per_judge = {j: refusal_summary(verdicts[j], confidence) for j in keyword_judges}
            found = classify_responses(
                [r["prompt"] for r in part],
                responses,
                [r.get("finish_reason") for r in part],
                class_settings,
            )
            labels = [v.label for v in found]
            per_judge[RESPONSE_CLASS_JUDGE] = refusal_summary(found, confidence)
            shares = class_shares(labels, confidence)
            entry = {
                "fraction": checkpoint["fraction"],
                "step": checkpoint["step"],
                "n": len(part),
                "judges": per_judge,
                "classes": shares,
                "collapsed": shares[DEGENERATE]["share"] >= COLLAPSED_SHARE,
            }
            metrics = {f"refusal_rate.{j}": s["refusal_rate"] for j, s in per_judge.items()}
            metrics |= {f"class_share.{c}": s["share"] for c, s in shares.items()}
            if spec.kind == BENIGN:
                entry["rates"] = benign_rates(labels, confidence)
                metrics |= {f"{r}_rate": s["rate"] for r, s in entry["rates"].items()}
            run.log_metrics(metrics, step=round(checkpoint["fraction"] * 100))
            result["checkpoints"][label] = entry
            for index, row in enumerate(part):
                verdict_rows.append(
                    {
                        "checkpoint": label,
                        "id": row["id"],
                        **{
                            j: {
                                "refusal": verdicts[j][index].refusal,
                                "label": verdicts[j][index].label,
                                "matched": list(verdicts[j][index].matched),
                            }
                            for j in keyword_judges
                        },
                        RESPONSE_CLASS_JUDGE: {
                            "refusal": found[index].refusal,
                            "label": found[index].label,
                            "matched": list(found[index].matched),
                            "evidence": found[index].evidence,
                        },
                    }
                )
            rows += part
            classes += labels
        timing = {"cell": name}
        if spec.kind == HARMFUL:
            for judge in judges.values():
                judge.load()
            judged = judge_selected(
                judges,
                [r["prompt"] for r in rows],
                [r["response"] for r in rows],
                classes,
                selected,
            )
            result["judged_classes"] = list(selected)
            result["judged_pairs"] = judged.pairs
            timing |= {"judged_pairs": judged.pairs, "judge_seconds": judged.seconds}
            start = 0
            for checkpoint in checkpoints:
                entry = result["checkpoints"][checkpoint["label"]]
                stop = start + entry["n"]
                entry["judged"] = judged.judged(start, stop)
                entry["harm"] = {
                    judge: {
                        **judged_summary(verdicts[start:stop], harm_confidence),
                        "harmful_answer": harmful_answers(
                            classes[start:stop], verdicts[start:stop], harm_confidence
                        ),
                    }
                    for judge, verdicts in judged.verdicts.items()
                }
                for index in range(start, stop):
                    harm_row = verdict_row(
                        checkpoint["label"],
                        rows[index]["id"],
                        classes[index],
                        {judge: v[index] for judge, v in judged.verdicts.items()},
                    )
                    verdict_rows[index]["harm"] = {
                        k: v for k, v in harm_row.items() if k not in ("checkpoint", "id")
                    }
                run.log_metrics(
                    {"judged": entry["judged"]}
                    | {
                        f"harmful_answer_rate.{judge}": s["harmful_answer"]["harmful_answer_rate"]
                        for judge, s in entry["harm"].items()
                        if s["harmful_answer"]["harmful_answer_rate"] is not None
                    },
                    step=round(checkpoint["fraction"] * 100),
                )
                start = stop
            run.log_metrics(
                {"judged_pairs": judged.pairs}
                | {f"judge_seconds.{judge}": s for judge, s in judged.seconds.items()}
            )
        write_jsonl(EVALS_DIR / evaluation / f"{cell}.jsonl", verdict_rows)
        write_json(METRICS_DIR / evaluation / f"{cell}.json", result)
    write_json(TIMINGS_DIR / "judge_evaluation" / f"{name}.json", timing)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="evaluation", required=True, help="the evaluation set")
    parser.add_argument("--cell", required=True, help="`base` or METHOD-LR-SEED (lora-5e-05-42)")
    args = parser.parse_args()
    run_stage(lambda: main(load_params(), args.evaluation, args.cell))
