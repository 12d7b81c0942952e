"""What each DVC stage does: read its params, call the library, write its outputs, track it.

`STAGE_PARAMS` lists the params keys each stage reads; dvc.yaml declares the same keys (a test
holds the two together), so DVC reruns a stage exactly when something it reads has changed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from safetydrift import tracking
from safetydrift.cells import BASE_CELL, Cell
from safetydrift.params import get, select

log = logging.getLogger(__name__)

MTPREF_DIR = Path("data/mtpref")
ADVBENCH_FILE = Path("data/advbench.jsonl")
BASE_MODEL_DIR = Path("models/base")
MODELS_DIR = Path("models")

# `study.name` only names the MLflow experiment, so no stage declares it as a dependency.
STAGE_PARAMS: dict[str, list[str]] = {
    "prepare_mtpref": ["data.mtpref"],
    "prepare_advbench": ["data.advbench"],
    "prepare_model": ["model"],
    "train": ["train", "methods.{method}"],
    "generate_refusal": ["generation", "refusal.prompts"],
    "eval_refusal": ["refusal.judges", "refusal.confidence"],
    "generate_chrf": ["generation", "chrf.prompts"],
    "eval_chrf": ["chrf.bootstrap_resamples", "chrf.confidence", "chrf.seed"],
    "report": ["study", "model", "data", "train", "grid", "methods", "report"],
}


def stage_params(params: dict[str, Any], stage: str, **fields: str) -> dict[str, Any]:
    keys = [key.format(**fields) for key in STAGE_PARAMS[stage]]
    return select(params, [k for k in keys if get(params, k, None) is not None])


def study_name(params: dict[str, Any]) -> str:
    return str(get(params, "study.name"))


# --------------------------------------------------------------------------------------------
# Preparation


def prepare_mtpref(params: dict[str, Any], out_dir: Path = MTPREF_DIR) -> dict[str, Any]:
    from safetydrift.data import Source
    from safetydrift.data import prepare_mtpref as prepare

    mtpref = get(params, "data.mtpref")
    with tracking.stage_run(
        study_name(params), "prepare_mtpref", stage_params(params, "prepare_mtpref")
    ) as run:
        stats = prepare(
            Source(str(mtpref["source"]), mtpref.get("revision")),
            split=str(mtpref.get("split", "train")),
            languages=list(mtpref["languages"]),
            target_language=str(mtpref.get("target_language", "english")),
            test_ratio=float(mtpref["test_ratio"]),
            seed=int(mtpref["seed"]),
            out_dir=out_dir,
        )
        run.log_metrics(
            {
                k: stats[k]
                for k in ("rows_read", "rows_kept", "rows_dropped", "train_rows", "test_rows")
            }
        )
        run.set_tags(
            {
                "data.sha256": stats.get("sha256"),
                "data.revision": stats.get("resolved_revision") or stats.get("revision"),
            }
        )
        run.log_artifact(out_dir / "stats.json")
    return stats


def prepare_advbench(params: dict[str, Any], out_path: Path = ADVBENCH_FILE) -> dict[str, Any]:
    from safetydrift.data import Source
    from safetydrift.data import prepare_advbench as prepare

    advbench = get(params, "data.advbench")
    with tracking.stage_run(
        study_name(params), "prepare_advbench", stage_params(params, "prepare_advbench")
    ) as run:
        stats = prepare(Source(str(advbench["source"]), advbench.get("revision")), out_path)
        run.log_metrics({"rows": stats["rows"]})
    return stats


def prepare_model(params: dict[str, Any], out_dir: Path = BASE_MODEL_DIR) -> dict[str, Any]:
    from safetydrift.models import ModelSpec
    from safetydrift.models import prepare_model as prepare

    spec = ModelSpec.from_params(get(params, "model"))
    with tracking.stage_run(
        study_name(params), "prepare_model", stage_params(params, "prepare_model")
    ) as run:
        info = prepare(spec, out_dir)
        run.log_metrics({"parameters": info["parameters"]})
        run.set_tags(
            {k: v for k, v in info.items() if k in ("sha256", "resolved_revision", "architecture")}
        )
    return info


# --------------------------------------------------------------------------------------------
# Training


def train(params: dict[str, Any], method: str, learning_rate: float) -> dict[str, Any]:
    from safetydrift.data import read_pairs
    from safetydrift.io import atomic_dir, write_json
    from safetydrift.methods import train_cell, train_settings
    from safetydrift.process import process_age_seconds

    startup_seconds = process_age_seconds()
    started = time.perf_counter()
    settings = train_settings(params, method, learning_rate)  # every check before any loading
    cell = Cell(method, settings.learning_rate)
    pairs = read_pairs(MTPREF_DIR / "train.jsonl")
    if int(os.environ.get("RANK", "0")) != 0:
        # Other ranks of an `accelerate launch` train alongside rank 0, which alone writes
        # the checkpoints and tracks the run.
        with tempfile.TemporaryDirectory(prefix="safetydrift-rank-") as scratch:
            train_cell(
                settings, BASE_MODEL_DIR, pairs, Path(scratch) / "out", Path(scratch) / "work"
            )
        return {}
    out_dir = MODELS_DIR / cell.name
    logged = {
        **stage_params(params, "train", method=method),
        "learning_rate": settings.learning_rate,
        "method": method,
    }
    with (
        tracking.stage_run(study_name(params), "train", logged, cell=cell.name) as run,
        atomic_dir(out_dir) as tmp_out,
        tempfile.TemporaryDirectory(prefix="safetydrift-trainer-") as work_dir,
    ):
        result = train_cell(settings, BASE_MODEL_DIR, pairs, tmp_out, Path(work_dir), tracker=run)
        summary = {
            "cell": cell.name,
            "method": method,
            "learning_rate": settings.learning_rate,
            "seed": settings.seed,
            "steps": result.steps,
            "examples": result.examples,
            # A fresh process's time: imports; loading model and data and building the trainer
            # (compilation happens in the first steps, inside train_seconds); the whole stage.
            "startup_seconds": startup_seconds,
            "setup_seconds": result.setup_seconds,
            "train_seconds": result.train_seconds,
            "examples_per_second": result.examples_per_second,
            "steady_examples_per_second": result.steady_examples_per_second,
            "tokens_per_second": result.tokens_per_second,
            "peak_memory_bytes": result.peak_memory_bytes,
            "final_loss": result.final_loss,
            "cuda_graphs": result.cuda_graphs,
            "checkpoints": result.checkpoints,
        }
        summary["stage_seconds"] = elapsed(started)
        write_json(tmp_out / "training.json", summary)
        run.log_metrics(
            {
                "train_seconds": result.train_seconds,
                "examples_per_second": result.examples_per_second,
                "steady_examples_per_second": result.steady_examples_per_second,
                "tokens_per_second": result.tokens_per_second,
                "peak_memory_bytes": result.peak_memory_bytes,
                "final_loss": result.final_loss,
            }
        )
    return summary


def elapsed(start: float) -> float:
    return round(time.perf_counter() - start, 3)


# --------------------------------------------------------------------------------------------
# Evaluation: generation (expensive, on the model) and judging (cheap, on saved generations)

GENERATIONS_DIR = Path("generations")
METRICS_DIR = Path("metrics")
EVALS_DIR = Path("evals")


def cell_checkpoints(cell: str):
    from safetydrift.generation import base_checkpoint, list_checkpoints

    if cell == BASE_CELL:
        return [base_checkpoint(BASE_MODEL_DIR)]
    return list_checkpoints(MODELS_DIR / cell)


def measurement_prompts(params: dict[str, Any], measurement: str):
    """(ids, conversations, references) of the refusal or chrF prompts, as params frame them."""
    from safetydrift.data import read_advbench, read_pairs
    from safetydrift.generation import PromptSettings

    prompts = PromptSettings.from_params(get(params, f"{measurement}.prompts", {}))
    if measurement == "refusal":
        rows = prompts.select(read_advbench(ADVBENCH_FILE))
        return [r["id"] for r in rows], [prompts.conversation(r["prompt"]) for r in rows], None
    pairs = read_pairs(MTPREF_DIR / "test.jsonl")
    indexed = prompts.select([{"id": i, "pair": p} for i, p in enumerate(pairs)])
    return (
        [r["id"] for r in indexed],
        [prompts.conversation(r["pair"].source_text) for r in indexed],
        [r["pair"].chosen for r in indexed],
    )


def generate(params: dict[str, Any], measurement: str, cell: str) -> dict[str, Any]:
    """Generate every checkpoint's responses for one measurement (`refusal` or `chrf`)."""
    from safetydrift.generation import (
        GenerationSettings,
        generate_for_checkpoints,
        import_libraries,
    )
    from safetydrift.io import atomic_dir, write_json, write_jsonl
    from safetydrift.models import default_device
    from safetydrift.process import process_age_seconds

    startup_seconds = process_age_seconds()  # interpreter start and imports, before any work
    started = time.perf_counter()
    settings = GenerationSettings.from_params(get(params, "generation"))
    checkpoints = cell_checkpoints(cell)
    ids, conversations, references = measurement_prompts(params, measurement)
    stage = f"generate_{measurement}"
    out_dir = GENERATIONS_DIR / measurement / cell
    timings: dict[str, float] = {}
    load_timings: dict[str, float] = {}
    with (
        tracking.stage_run(
            study_name(params), stage, stage_params(params, stage), cell=cell
        ) as run,
        atomic_dir(out_dir) as tmp,
    ):
        tracking_seconds = elapsed(started)
        importing = time.perf_counter()
        import_libraries(adapters=any(c.kind == "adapter" for c in checkpoints))
        device = default_device()
        import_seconds = elapsed(importing)
        for result in generate_for_checkpoints(
            BASE_MODEL_DIR, checkpoints, conversations, ids, settings, device
        ):
            rows = result.rows
            if references is not None:
                for row, reference in zip(rows, references, strict=True):
                    row["reference"] = reference
            write_jsonl(tmp / f"{result.checkpoint.label}.jsonl", rows)
            timings[result.checkpoint.label] = round(result.seconds, 3)
            load_timings[result.checkpoint.label] = round(result.load_seconds, 3)
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
        summary = {
            "cell": cell,
            "measurement": measurement,
            "prompts": len(ids),
            "device": device,
            "backend": settings.backend,
            "checkpoints": [
                {"label": c.label, "fraction": c.fraction, "step": c.step} for c in checkpoints
            ],
            # Where a fresh process's time goes: interpreter start, opening the MLflow run,
            # importing torch, transformers (and PEFT), loading each checkpoint (the first: the
            # tokenizer and base model too), generating (the first pass: graph capture too), and
            # the whole stage after the interpreter's start.
            "startup_seconds": startup_seconds,
            "tracking_seconds": tracking_seconds,
            "import_seconds": import_seconds,
            "load_seconds": load_timings,
            "generation_seconds": timings,
            "stage_seconds": elapsed(started),
        }
        write_json(tmp / "generation.json", summary)
        run.log_metrics({"stage_seconds": summary["stage_seconds"]})
    return summary


def read_generations(measurement: str, cell: str) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    from safetydrift.io import read_json, read_jsonl

    directory = GENERATIONS_DIR / measurement / cell
    summary = read_json(directory / "generation.json")
    return summary, {
        c["label"]: read_jsonl(directory / f"{c['label']}.jsonl") for c in summary["checkpoints"]
    }


def cell_identity(cell: str) -> dict[str, Any]:
    if cell == BASE_CELL:
        return {"cell": cell, "method": BASE_CELL, "learning_rate": None}
    method, _, rate = cell.partition("-")
    return {"cell": cell, "method": method, "learning_rate": float(rate)}


def eval_refusal(params: dict[str, Any], cell: str) -> dict[str, Any]:
    from safetydrift.io import write_json, write_jsonl
    from safetydrift.judges import judge_responses
    from safetydrift.metrics import refusal_summary

    judges = list(get(params, "refusal.judges"))
    confidence = float(get(params, "refusal.confidence", 0.95))
    summary, generations = read_generations("refusal", cell)
    result = {**cell_identity(cell), "checkpoints": {}}
    verdict_rows = []
    with tracking.stage_run(
        study_name(params), "eval_refusal", stage_params(params, "eval_refusal"), cell=cell
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
                            f"{name}": {
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


def eval_chrf(params: dict[str, Any], cell: str) -> dict[str, Any]:
    from safetydrift.io import write_json
    from safetydrift.metrics import chrf_summary

    chrf = get(params, "chrf")
    summary, generations = read_generations("chrf", cell)
    result = {**cell_identity(cell), "checkpoints": {}}
    with tracking.stage_run(
        study_name(params), "eval_chrf", stage_params(params, "eval_chrf"), cell=cell
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


# --------------------------------------------------------------------------------------------
# Report

REPORTS_DIR = Path("reports")


def report(params: dict[str, Any]):
    from safetydrift.io import read_json
    from safetydrift.report import collect_provenance, write_report

    stats_file = MTPREF_DIR / "stats.json"
    data_stats = read_json(stats_file) if stats_file.exists() else None
    with tracking.stage_run(study_name(params), "report", stage_params(params, "report")) as run:
        provenance = collect_provenance(tracking.repo_root(), params)
        result = write_report(
            params, METRICS_DIR, REPORTS_DIR, data_stats=data_stats, provenance=provenance
        )
        run.log_artifact(REPORTS_DIR / "report.md")
        for figure in sorted((REPORTS_DIR / "figures").glob("*.png")):
            run.log_artifact(figure, artifact_path="figures")
        run.set_tags({"missing_cells": ", ".join(result.missing_cells) or "none"})
    return result
