"""DVC stage `train@METHOD-LR`: fine-tune one grid cell; checkpoints into models/METHOD-LR/.

With `train.num_processes` > 1 the stage reruns itself under `accelerate launch` (DDP, or FSDP
with `train.distributed: fsdp`); DVC sees the launcher's exit status.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from safetydrift import tracking
from safetydrift.cells import Cell
from safetydrift.data import read_pairs
from safetydrift.io import atomic_dir, write_json
from safetydrift.methods import distributed_launch, train_cell, train_settings
from safetydrift.params import load_params
from safetydrift.process import process_age_seconds
from safetydrift.stage import (
    BASE_MODEL_DIR,
    MODELS_DIR,
    MTPREF_DIR,
    declared_params,
    elapsed,
    run_stage,
    study_name,
)

PARAMS = ["train", "methods.{method}", "prompt"]


def main(params: dict[str, Any], method: str, learning_rate: float) -> dict[str, Any]:
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
    logged = {
        **declared_params(params, [key.format(method=method) for key in PARAMS]),
        "learning_rate": settings.learning_rate,
        "method": method,
    }
    with (
        tracking.stage_run(study_name(params), "train", logged, cell=cell.name) as run,
        atomic_dir(MODELS_DIR / cell.name) as tmp_out,
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
        speed = (
            "train_seconds",
            "examples_per_second",
            "steady_examples_per_second",
            "tokens_per_second",
            "peak_memory_bytes",
            "final_loss",
        )
        run.log_metrics({key: summary[key] for key in speed})
    return summary


def launch_or_train(method: str, learning_rate: float) -> None:
    params = load_params()
    launch = distributed_launch(train_settings(params, method, learning_rate), sys.argv)
    if launch is not None:
        os.execv(launch[0], launch)
    main(params, method, learning_rate)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", required=True, help="full, lora, qlora or dpo")
    parser.add_argument("--lr", required=True, type=float, help="peak learning rate")
    args = parser.parse_args()
    run_stage(lambda: launch_or_train(args.method, args.lr))
