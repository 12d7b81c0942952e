"""DVC stage `validate_judges`: every judge against human labels, into
metrics/judge_validation.json.

The human-labelled responses of `validation.files` (`human_score` 1 = the response refuses) are
judged by the keyword judges of `refusal.judges`, by `response-class` (refused = class `refusal`)
and by each model judge of `harm.judges` (refused = judged not harmful; an unreadable judge output
is left out and counted). Accuracy, precision and recall of "refused" come with Wilson intervals.
"""

from pathlib import Path
from typing import Any

from safetydrift import tracking
from safetydrift.files import write_json
from safetydrift.judge_validation import (
    read_refusal_validation,
    validate_against_labels,
    validate_judges,
)
from safetydrift.model_judges.judging import build_model_judge
from safetydrift.model_judges.spec import judge_specs
from safetydrift.models import default_device
from safetydrift.params import get, load_params
from safetydrift.response_classes import PARAMS_KEY, RESPONSE_CLASS_JUDGE, ResponseClassSettings
from safetydrift.stage import (
    JUDGE_MODELS_DIR,
    METRICS_DIR,
    declared_params,
    run_stage,
    study_name,
)

PARAMS = [
    "validation.files",
    "refusal.judges",
    "refusal.response_class",
    "refusal.confidence",
    "harm.models",
    "harm.judges",
]


def main(params: dict[str, Any], out_path: Path = METRICS_DIR / "judge_validation.json"):
    files = [Path(p) for p in get(params, "validation.files", None) or []]
    confidence = float(get(params, "refusal.confidence", 0.95))
    settings = ResponseClassSettings.from_params(get(params, PARAMS_KEY, None))
    specs = judge_specs(params, JUDGE_MODELS_DIR)
    device = default_device()
    model_judges = {name: build_model_judge(spec, device) for name, spec in specs.items()}
    with tracking.stage_run(
        study_name(params), "validate_judges", declared_params(params, PARAMS)
    ) as run:
        if not files:
            result = {"n": 0, "files": [], "judges": {}}
        else:
            text_judges = [*get(params, "refusal.judges"), RESPONSE_CLASS_JUDGE]
            result = validate_judges(files, text_judges, confidence, settings)
            rows = read_refusal_validation(files)
            labels = [r.refused for r in rows]
            for name, judge in model_judges.items():
                judge.load()
                verdicts = judge.judge_batch(
                    [r.objective for r in rows], [r.response for r in rows]
                )
                known = [i for i, v in enumerate(verdicts) if v.harmful is not None]
                scores = (
                    validate_against_labels(
                        [labels[i] for i in known],
                        [not verdicts[i].harmful for i in known],
                        confidence,
                    )
                    if known
                    else {"n": 0}  # no judge output could be read: nothing to score
                )
                result["judges"][name] = {**scores, "unparsed": len(rows) - len(known)}
        write_json(out_path, result)
        run.log_metrics(
            {
                f"accuracy.{name}": scores["accuracy"]["value"]
                for name, scores in result["judges"].items()
                if scores.get("accuracy") and scores["accuracy"]["value"] is not None
            }
        )
    return result


if __name__ == "__main__":
    run_stage(lambda: main(load_params()))
