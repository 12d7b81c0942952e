"""DVC stage `train@METHOD-LR-SEED`: fine-tune one grid cell; checkpoints into models/CELL/.

The seed (`--seed`, the matrix item's entry of `grid.seeds`) seeds everything the training draws:
weight initialisation of adapters, data order, dropout (`safetydrift.determinism`).
With `train.keep_checkpoints: final` only the last checkpoint stays in that output; the earlier
ones go to models/.intermediate/CELL/ until their generations exist (docs/running.md, "Disk").
It trains on data/mtpref/train.jsonl or data/chat/train.jsonl, as `train_data.kind` says (dvc.yaml
depends on the same path), and records how many examples `train.max_length` cut.

With `train.num_processes` > 1 the stage reruns itself under `accelerate launch` (DDP, or FSDP
with `train.distributed: fsdp`); DVC sees the launcher's exit status.

The training is `safetydrift.training` (its package docstring maps the modules); this script
reads the params, trains, writes training.json and the timings, and logs to MLflow.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from safetydrift import tracking
from safetydrift.cells import Cell
from safetydrift.chat_data import data_kind
from safetydrift.files import atomic_dir, write_json
from safetydrift.params import get, load_params
from safetydrift.process import process_age_seconds
from safetydrift.stage import (
    BASE_MODEL_DIR,
    INTERMEDIATE_DIR,
    MODELS_DIR,
    TIMINGS_DIR,
    declared_params,
    elapsed,
    run_stage,
    study_name,
)
from safetydrift.training.checkpoints import keep_checkpoints
from safetydrift.training.examples import check_method, read_training_examples, train_file
from safetydrift.training.launch import distributed_launch
from safetydrift.training.run import train_cell
from safetydrift.training.settings import train_settings

PARAMS = ["train", "methods.{method}", "prompt", "train_data.kind"]
TRAINER_SCRATCH = ".trainer"


def main(
    params: dict[str, Any], method: str, learning_rate: float | str, seed: int | str
) -> dict[str, Any]:
    startup_seconds = process_age_seconds()
    started = time.perf_counter()
    # Every check before any loading.
    settings = train_settings(params, method, learning_rate, seed)
    kind = data_kind(get(params, "train_data", None))
    check_method(kind, method)
    cell = Cell(method, settings.learning_rate, settings.seed)
    data_file = train_file(kind)
    pairs = read_training_examples(kind, data_file)
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
        "seed": settings.seed,
    }
    with (
        tracking.stage_run(
            study_name(params),
            "train",
            logged,
            cell=cell.name,
            inputs={str(data_file): "training", str(BASE_MODEL_DIR): "training"},
        ) as run,
        atomic_dir(MODELS_DIR / cell.name) as tmp_out,
    ):
        # The trainer's scratch lives inside the output's temporary directory: a killed run
        # leaves it there, and the next run of this cell removes it with the rest.
        work_dir = tmp_out / TRAINER_SCRATCH
        result = train_cell(settings, BASE_MODEL_DIR, pairs, tmp_out, work_dir, tracker=run)
        shutil.rmtree(work_dir, ignore_errors=True)
        summary = result.summary(settings)
        write_json(tmp_out / "training.json", summary)
        keep_checkpoints(settings.keep_checkpoints, tmp_out, INTERMEDIATE_DIR / cell.name)
        # Where the time went differs on every run, so it stays out of DVC's outputs: MLflow's
        # metrics and timings/train/CELL.json. A fresh process's time: imports (startup); loading
        # model and data and building the trainer (setup); training; the whole stage.
        timing = {
            "cell": cell.name,
            "startup_seconds": startup_seconds,
            **result.timing(),
            "stage_seconds": elapsed(started),
        }
        run.log_metrics(
            {
                **{key: value for key, value in timing.items() if isinstance(value, float | int)},
                "final_loss": result.final_loss,
                **{
                    key: value
                    for key, value in (result.truncation or {}).items()
                    if key.endswith(("_examples", "_tokens"))
                },
            }
        )
    write_json(TIMINGS_DIR / "train" / f"{cell.name}.json", timing)
    return {**summary, **timing}


def launch_or_train(method: str, learning_rate: float | str, seed: str) -> None:
    params = load_params()
    launch = distributed_launch(train_settings(params, method, learning_rate, seed), sys.argv)
    if launch is not None:
        os.execv(launch[0], launch)
    main(params, method, learning_rate, seed)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", required=True, help="full, lora, qlora or dpo")
    # Read as text: train_settings names `grid.learning_rates` when it is not a number.
    parser.add_argument("--lr", required=True, help="peak learning rate")
    # Read as text too: seed_value names `grid.seeds` when it is not a seed.
    parser.add_argument("--seed", required=True, help="the cell's seed, an entry of grid.seeds")
    args = parser.parse_args()
    run_stage(lambda: launch_or_train(args.method, args.lr, args.seed))
