"""DVC stages `judge_evaluation@UNIT-CELL` and `judge_evaluation_base@UNIT`: what each response of
an evaluation unit (a set, or a group of sets) is, at every checkpoint, and each set's rates
(`safetydrift.evaluation_rates`).

Every response gets the keyword judges' verdicts (`refusal.judges`) and its model-free class
(`refusal.response_class`), exactly as AdvBench's in `eval_refusal`. The harmful sets' responses
then go to the model judges of `harm.judges` as in `judge_harm` (only the classes
`harm.judged_classes` names, every harmful member and checkpoint in one call, each distinct pair
once) for their harmful-answer rates; a benign set needs no model: its over-refusal, echo and
answer rates come from the classes. Outputs: evals/evaluations/UNIT/CELL.jsonl (each response's
set, verdicts, class and evidence) and metrics/evaluations/UNIT/CELL.json (`sets`: each member's
results per checkpoint, with Wilson intervals; read them with `evaluation_sets.unit_results`). A
unit of benign sets declares the harm params too (one stage definition for every unit), so
changing the model judges reruns it, at the cost of classifying its responses again.
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
    evaluation_unit,
)
from safetydrift.files import read_json, read_jsonl, write_json, write_jsonl
from safetydrift.harm import (
    harmful_answers,
    judge_selected,
    judged_classes,
    judged_summary,
    load_judges,
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
    verdict_columns,
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


def read_unit_generations(evaluation: str, cell: str):
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
    unit = evaluation_unit(params, evaluation)
    keyword_judges = list(get(params, "refusal.judges"))
    confidence = float(get(params, "refusal.confidence", 0.95))
    harm_confidence = float(get(params, "harm.confidence", 0.95))
    class_settings = ResponseClassSettings.from_params(get(params, PARAMS_KEY, None))
    selected = judged_classes(params)
    harmful = [spec for spec in unit.members if spec.kind == HARMFUL]
    judges = {}
    if harmful:
        device = default_device()
        judges = {
            name: build_model_judge(s, device)
            for name, s in judge_specs(params, JUDGE_MODELS_DIR).items()
        }
    summary, generations = read_unit_generations(evaluation, cell)
    checkpoints = summary["checkpoints"]
    name = f"{evaluation}-{cell}"
    results = {
        spec.name: {
            "evaluation": spec.name,
            "kind": spec.kind,
            **cell_identity(cell),
            "prompts": summary["sets"][spec.name],
            "checkpoints": {},
        }
        for spec in unit.members
    }
    keys = [key.format(evaluation=evaluation) for key in PARAMS]
    with tracking.stage_run(
        study_name(params), "judge_evaluation", declared_params(params, keys), cell=name
    ) as run:
        # Every response in member order, then checkpoint order; `spans` says which member and
        # checkpoint each stretch of `rows` is.
        rows, classes, verdict_rows, spans = [], [], [], []
        for spec in unit.members:
            prefix = unit.metric_prefix(spec.name)
            for checkpoint in checkpoints:
                label = checkpoint["label"]
                part = [r for r in generations[label] if r["set"] == spec.name]
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
                run.log_metrics(
                    {f"{prefix}{k}": v for k, v in metrics.items()},
                    step=round(checkpoint["fraction"] * 100),
                )
                results[spec.name]["checkpoints"][label] = entry
                verdict_rows += [
                    {
                        "checkpoint": label,
                        "set": row["set"],
                        "id": row["id"],
                        **verdict_columns(verdicts, found, index),
                    }
                    for index, row in enumerate(part)
                ]
                spans.append((spec, checkpoint, len(rows), len(rows) + len(part)))
                rows += part
                classes += labels
        timing: dict[str, Any] = {"cell": name}
        if harmful:
            timing["load_seconds"] = load_judges(judges)
            # The harmful members' rows of every checkpoint go to each judge in one call; each
            # span's `first` is where its rows begin among them.
            judged_spans, first = [], 0
            for spec, checkpoint, start, stop in spans:
                if spec.kind == HARMFUL:
                    judged_spans.append((spec, checkpoint, start, stop, first))
                    first += stop - start
            judged_rows = [i for _, _, start, stop, _ in judged_spans for i in range(start, stop)]
            judged = judge_selected(
                judges,
                [rows[i]["prompt"] for i in judged_rows],
                [rows[i]["response"] for i in judged_rows],
                [classes[i] for i in judged_rows],
                selected,
            )
            timing |= {"judged_pairs": judged.pairs, "judge_seconds": judged.seconds}
            pairs: dict[str, set[tuple[str, str]]] = {spec.name: set() for spec in harmful}
            for spec, checkpoint, start, stop, first in judged_spans:
                last = first + stop - start
                entry = results[spec.name]["checkpoints"][checkpoint["label"]]
                entry["judged"] = judged.judged(first, last)
                entry["harm"] = {
                    judge: {
                        **judged_summary(verdicts[first:last], harm_confidence),
                        "harmful_answer": harmful_answers(
                            classes[start:stop], verdicts[first:last], harm_confidence
                        ),
                    }
                    for judge, verdicts in judged.verdicts.items()
                }
                for index in range(start, stop):
                    if classes[index] in selected:
                        pairs[spec.name].add((rows[index]["prompt"], rows[index]["response"]))
                    harm_row = verdict_row(
                        checkpoint["label"],
                        rows[index]["id"],
                        classes[index],
                        {judge: v[first + index - start] for judge, v in judged.verdicts.items()},
                    )
                    verdict_rows[index]["harm"] = {
                        k: v for k, v in harm_row.items() if k not in ("checkpoint", "id")
                    }
                prefix = unit.metric_prefix(spec.name)
                run.log_metrics(
                    {f"{prefix}judged": entry["judged"]}
                    | {
                        f"{prefix}harmful_answer_rate.{judge}": rate
                        for judge, s in entry["harm"].items()
                        if (rate := s["harmful_answer"]["harmful_answer_rate"]) is not None
                    },
                    step=round(checkpoint["fraction"] * 100),
                )
            for spec in harmful:
                results[spec.name]["judged_classes"] = list(selected)
                results[spec.name]["judged_pairs"] = len(pairs[spec.name])
            run.log_metrics(
                {"judged_pairs": judged.pairs, "judge_load_seconds": timing["load_seconds"]}
                | {f"judge_seconds.{judge}": s for judge, s in judged.seconds.items()}
            )
        metrics = {"evaluation": evaluation, **cell_identity(cell), "sets": results}
        write_jsonl(EVALS_DIR / evaluation / f"{cell}.jsonl", verdict_rows)
        write_json(METRICS_DIR / evaluation / f"{cell}.json", metrics)
    write_json(TIMINGS_DIR / "judge_evaluation" / f"{name}.json", timing)
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="evaluation", required=True, help="the set or group")
    parser.add_argument("--cell", required=True, help="`base` or METHOD-LR-SEED (lora-5e-05-42)")
    args = parser.parse_args()
    run_stage(lambda: main(load_params(), args.evaluation, args.cell))
