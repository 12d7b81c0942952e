"""DVC stages `generate_refusal@CELL`, `generate_chrf@CELL` and `generate_evaluation@UNIT-CELL`
(an evaluation set beyond AdvBench, or a group of them, `safetydrift.evaluation_sets`): every
checkpoint's responses.

The base model is loaded once; each checkpoint's weights or adapter are copied into it
(`safetydrift.generation`). Outputs: generations/MEASUREMENT/CELL/ckpt-*.jsonl (`id`, `prompt`,
`response`, `new_tokens`, `finish_reason`, and `reference` for chrF, `set` for an evaluation set)
and generation.json (the prompts, engine and checkpoints); for an evaluation unit
generations/evaluations/UNIT/CELL/, every member set's prompts framed by that set's own params and
decoded in one batch per checkpoint. Where
the stage's time went goes to MLflow and timings/generate_MEASUREMENT/CELL.json, outside DVC's
outputs, so that reruns compare equal.
"""

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any

from safetydrift import tracking
from safetydrift.cells import BASE_CELL
from safetydrift.data.advbench import read_advbench
from safetydrift.data.mtpref import read_pairs
from safetydrift.files import atomic_dir, write_json, write_jsonl
from safetydrift.generation.checkpoints import base_checkpoint, trained_checkpoints
from safetydrift.generation.prompts import PromptSettings
from safetydrift.generation.run import generate_for_checkpoints, import_libraries
from safetydrift.generation.settings import GenerationSettings
from safetydrift.models import PromptFormat, default_device
from safetydrift.params import get, load_params
from safetydrift.process import process_age_seconds
from safetydrift.stage import (
    ADVBENCH_FILE,
    BASE_MODEL_DIR,
    GENERATIONS_DIR,
    INTERMEDIATE_DIR,
    MODELS_DIR,
    MTPREF_DIR,
    TIMINGS_DIR,
    declared_params,
    elapsed,
    run_stage,
    study_name,
)

PARAMS = {
    "refusal": ["generation", "prompt", "refusal.prompts"],
    "chrf": ["generation", "prompt", "chrf.prompts"],
    # Only the unit's own key (a set, or a group of sets): adding or changing another unit
    # reruns nothing here.
    "evaluation": ["generation", "prompt", "evaluations.sets.{evaluation}"],
}
EVALUATION = "evaluation"
# Where `prepare_evaluation@UNIT` writes a unit's prompts and where its responses go, and the key
# of a group's members (as `safetydrift.evaluation_sets` names them: importing it would make every
# generation stage, AdvBench's and chrF's too, depend on that module).
EVALUATION_DATA_DIR = Path("data/evaluations")
EVALUATION_GENERATIONS_DIR = GENERATIONS_DIR / "evaluations"
EVALUATION_GROUP_KEY = "group"


def declared_keys(measurement: str, evaluation: str | None) -> list[str]:
    return [key.format(evaluation=evaluation) for key in PARAMS[measurement]]


def output_dir(measurement: str, cell: str, evaluation: str | None = None) -> Path:
    if measurement == EVALUATION:
        return EVALUATION_GENERATIONS_DIR / str(evaluation) / cell
    return GENERATIONS_DIR / measurement / cell


def prompts_file(measurement: str, evaluation: str | None = None) -> Path:
    if measurement == EVALUATION:
        return EVALUATION_DATA_DIR / f"{evaluation}.jsonl"
    return ADVBENCH_FILE if measurement == "refusal" else MTPREF_DIR / "test.jsonl"


def cell_checkpoints(cell: str):
    if cell == BASE_CELL:
        return [base_checkpoint(BASE_MODEL_DIR)]
    return trained_checkpoints(MODELS_DIR / cell, INTERMEDIATE_DIR / cell)


def unit_framings(params: dict[str, Any], evaluation: str) -> dict[str, PromptSettings]:
    """Each set of the unit `evaluations.sets.UNIT` (a group's members, or the set alone) and its
    framing keys (prefix, suffix, system_prompt, subset...) among its others; prepare_evaluation
    checked them."""
    values = get(params, f"evaluations.sets.{evaluation}")
    members = values.get(EVALUATION_GROUP_KEY, {evaluation: values})
    return {name: PromptSettings.from_params(member) for name, member in members.items()}


def measurement_prompts(
    params: dict[str, Any], measurement: str, cell: str = "", evaluation: str | None = None
):
    """(ids, conversations, extra columns per row or None) of the refusal, chrF (`reference`) or
    an evaluation unit's prompts (`set`), as params frame them."""
    base = cell == BASE_CELL
    if measurement == EVALUATION:
        # Prepared evaluation units have AdvBench's form and each row's set: `id`, `prompt`, `set`.
        prepared = read_advbench(prompts_file(measurement, evaluation))
        ids, conversations, extra = [], [], []
        for name, prompts in unit_framings(params, evaluation).items():
            rows = prompts.select([r for r in prepared if r["set"] == name])
            ids += [r["id"] for r in rows]
            conversations += [prompts.conversation(r["prompt"], base) for r in rows]
            extra += [{"set": name}] * len(rows)
        return ids, conversations, extra
    prompts = PromptSettings.from_params(get(params, f"{measurement}.prompts", {}))
    if measurement == "refusal":
        rows = prompts.select(read_advbench(ADVBENCH_FILE))
        return (
            [r["id"] for r in rows],
            [prompts.conversation(r["prompt"], base) for r in rows],
            None,
        )
    test_file = MTPREF_DIR / "test.jsonl"
    if not test_file.read_text(encoding="utf-8").strip():
        return [], [], []  # no translation data (`data.mtpref.source: null`): nothing to score
    pairs = read_pairs(test_file)
    indexed = prompts.select([{"id": i, "pair": p} for i, p in enumerate(pairs)])
    return (
        [r["id"] for r in indexed],
        [prompts.conversation(r["pair"].source_text, base) for r in indexed],
        [{"reference": r["pair"].chosen} for r in indexed],
    )


def main(
    params: dict[str, Any], measurement: str, cell: str, evaluation: str | None = None
) -> dict[str, Any]:
    startup_seconds = process_age_seconds()  # interpreter start and imports, before any work
    started = time.perf_counter()
    if (measurement == EVALUATION) != (evaluation is not None):
        raise ValueError(
            "an evaluation set or group (--set NAME) goes with `evaluation`, and only with it"
        )
    settings = GenerationSettings.from_params(get(params, "generation"))
    prompt_format = PromptFormat.from_params(get(params, "prompt", None))
    checkpoints = cell_checkpoints(cell)
    ids, conversations, extra = measurement_prompts(params, measurement, cell, evaluation)
    stage = f"generate_{measurement}"
    # The MLflow run and timings file of a unit's stage: `generate_evaluation@UNIT-CELL`.
    run_cell = f"{evaluation}-{cell}" if evaluation else cell
    if measurement == "chrf" and not ids:
        # A study without translation data (`data.mtpref.source: null`): nothing to translate,
        # so no model is loaded; eval_chrf and the report say that chrF was not measured.
        skipped = {
            "cell": cell,
            "measurement": measurement,
            "prompts": 0,
            "skipped": f"no translation test set ({MTPREF_DIR / 'test.jsonl'} is empty)",
            "checkpoints": [],
        }
        with atomic_dir(GENERATIONS_DIR / measurement / cell) as tmp:
            write_json(tmp / "generation.json", skipped)
        return skipped
    timings: dict[str, float] = {}
    load_timings: dict[str, float] = {}
    engines: set[str] = set()
    with (
        tracking.stage_run(
            study_name(params),
            stage,
            declared_params(params, declared_keys(measurement, evaluation)),
            cell=run_cell,
            inputs=dict.fromkeys(
                [
                    str(prompts_file(measurement, evaluation)),
                    str(BASE_MODEL_DIR),
                    *([] if cell == BASE_CELL else [str(MODELS_DIR / cell)]),
                ],
                "evaluation",
            ),
        ) as run,
        atomic_dir(output_dir(measurement, cell, evaluation)) as tmp,
    ):
        tracking_seconds = elapsed(started)
        importing = time.perf_counter()
        import_libraries(adapters=any(c.kind == "adapter" for c in checkpoints))
        device = default_device()
        import_seconds = elapsed(importing)
        for result in generate_for_checkpoints(
            BASE_MODEL_DIR, checkpoints, conversations, ids, settings, device, prompt_format
        ):
            rows = result.rows
            if extra is not None:
                for row, columns in zip(rows, extra, strict=True):
                    row.update(columns)
            write_jsonl(tmp / f"{result.checkpoint.label}.jsonl", rows)
            timings[result.checkpoint.label] = round(result.seconds, 3)
            load_timings[result.checkpoint.label] = round(result.load_seconds, 3)
            engines.add(result.engine)
            new_tokens = sum(r["new_tokens"] for r in rows)
            run.log_metrics(
                {
                    "generation_seconds": result.seconds,
                    "load_seconds": result.load_seconds,
                    "new_tokens": new_tokens,
                    "tokens_per_second": new_tokens / result.seconds if result.seconds else None,
                },
                step=round(result.checkpoint.fraction * 100),
            )
        # What was generated, the same on every rerun of the same inputs: a DVC output. The
        # eval stages read its `checkpoints`.
        summary = {
            "cell": cell,
            "measurement": measurement,
            **({"evaluation": evaluation} if evaluation else {}),
            "prompts": len(ids),
            # Each set's prompts among them, in the order the rows hold them.
            **({"sets": dict(Counter(c["set"] for c in extra))} if evaluation else {}),
            "device": device,
            "backend": settings.backend,
            "deterministic": settings.deterministic,  # generation.deterministic
            "engine": ", ".join(sorted(engines)),  # differs from `backend` after a fallback
            "checkpoints": [
                {"label": c.label, "fraction": c.fraction, "step": c.step} for c in checkpoints
            ],
        }
        write_json(tmp / "generation.json", summary)
        # Where a fresh process's time goes, different on every run, so outside DVC's outputs
        # (MLflow and timings/STAGE/CELL.json): interpreter start, opening the MLflow run,
        # importing torch, transformers (and PEFT), loading each checkpoint (the first: the
        # tokenizer and base model too), generating (the first pass: graph capture too), and
        # the whole stage after the interpreter's start.
        timing = {
            "cell": cell,
            "startup_seconds": startup_seconds,
            "tracking_seconds": tracking_seconds,
            "import_seconds": import_seconds,
            "load_seconds": load_timings,
            "generation_seconds": timings,
            "stage_seconds": elapsed(started),
        }
        run.set_tags({"engine": summary["engine"]})
        run.log_metrics(
            {key: value for key, value in timing.items() if isinstance(value, float | int)}
        )
    write_json(TIMINGS_DIR / stage / f"{run_cell}.json", timing)
    return {**summary, **timing}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("measurement", choices=sorted(PARAMS))
    parser.add_argument("--cell", required=True, help="`base` or METHOD-LR-SEED (lora-5e-05-42)")
    parser.add_argument(
        "--set", dest="evaluation", help="the evaluation set or group (`evaluation` only)"
    )
    args = parser.parse_args()
    run_stage(lambda: main(load_params(), args.measurement, args.cell, args.evaluation))
