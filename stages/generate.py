"""DVC stages `generate_refusal@CELL` and `generate_chrf@CELL`: every checkpoint's responses.

The base model is loaded once; each checkpoint's weights or adapter are copied into it
(`safetydrift.generation`). Outputs: generations/MEASUREMENT/CELL/ckpt-*.jsonl (`id`, `prompt`,
`response`, `new_tokens`, `finish_reason`, and `reference` for chrF) and generation.json (the
prompts, engine and checkpoints). Where the stage's time went goes to MLflow and
timings/generate_MEASUREMENT/CELL.json, outside DVC's outputs, so that reruns compare equal.
"""

import argparse
import time
from typing import Any

from safetydrift import tracking
from safetydrift.cells import BASE_CELL
from safetydrift.data import read_advbench, read_pairs
from safetydrift.generation import (
    GenerationSettings,
    PromptSettings,
    base_checkpoint,
    generate_for_checkpoints,
    import_libraries,
    list_checkpoints,
)
from safetydrift.io import atomic_dir, write_json, write_jsonl
from safetydrift.models import PromptFormat, default_device
from safetydrift.params import get, load_params
from safetydrift.process import process_age_seconds
from safetydrift.stage import (
    ADVBENCH_FILE,
    BASE_MODEL_DIR,
    GENERATIONS_DIR,
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
}


def cell_checkpoints(cell: str):
    if cell == BASE_CELL:
        return [base_checkpoint(BASE_MODEL_DIR)]
    return list_checkpoints(MODELS_DIR / cell)


def measurement_prompts(params: dict[str, Any], measurement: str, cell: str = ""):
    """(ids, conversations, references) of the refusal or chrF prompts, as params frame them."""
    prompts = PromptSettings.from_params(get(params, f"{measurement}.prompts", {}))
    base = cell == BASE_CELL
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
        [r["pair"].chosen for r in indexed],
    )


def main(params: dict[str, Any], measurement: str, cell: str) -> dict[str, Any]:
    startup_seconds = process_age_seconds()  # interpreter start and imports, before any work
    started = time.perf_counter()
    settings = GenerationSettings.from_params(get(params, "generation"))
    prompt_format = PromptFormat.from_params(get(params, "prompt", None))
    checkpoints = cell_checkpoints(cell)
    ids, conversations, references = measurement_prompts(params, measurement, cell)
    stage = f"generate_{measurement}"
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
            declared_params(params, PARAMS[measurement]),
            cell=cell,
            inputs=dict.fromkeys(
                [
                    str(ADVBENCH_FILE if measurement == "refusal" else MTPREF_DIR / "test.jsonl"),
                    str(BASE_MODEL_DIR),
                    *([] if cell == BASE_CELL else [str(MODELS_DIR / cell)]),
                ],
                "evaluation",
            ),
        ) as run,
        atomic_dir(GENERATIONS_DIR / measurement / cell) as tmp,
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
            if references is not None:
                for row, reference in zip(rows, references, strict=True):
                    row["reference"] = reference
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
            "prompts": len(ids),
            "device": device,
            "backend": settings.backend,
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
    write_json(TIMINGS_DIR / stage / f"{cell}.json", timing)
    return {**summary, **timing}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("measurement", choices=sorted(PARAMS))
    parser.add_argument("--cell", required=True, help="`base` or METHOD-LR, e.g. lora-5e-05")
    args = parser.parse_args()
    run_stage(lambda: main(load_params(), args.measurement, args.cell))
