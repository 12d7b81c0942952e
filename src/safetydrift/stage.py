"""What every DVC stage script in `stages/` shares: the workspace layout, the params a stage
declares, and how a stage process runs and ends.

Each stage script holds its own logic (read params, call the library, write outputs, track) and
lists the params keys it reads in `PARAMS`; dvc.yaml declares the same keys (tests/test_stages.py
holds them together), so DVC reruns a stage exactly when something it reads has changed.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetydrift.cells import BASE_CELL, parse_cell
from safetydrift.files import DiskFullError, read_json, read_jsonl
from safetydrift.gpu_slots import DEFAULT_JUDGES_PER_GPU, set_judges_per_gpu
from safetydrift.gpu_slots import PARAMS_KEY as JUDGES_PER_GPU
from safetydrift.params import PARAMS_FILE, ParamError, get, load_params, select
from safetydrift.process import enable_bytecode_cache, exit_now
from safetydrift.tracking import FALLBACK_PARAM, TrackingError, set_fallback

MTPREF_DIR = Path("data/mtpref")
ADVBENCH_FILE = Path("data/advbench.jsonl")
BASE_MODEL_DIR = Path("models/base")
MODELS_DIR = Path("models")
# With `train.keep_checkpoints: final`, the checkpoints before the last, per cell, until their
# generations exist: scratch beside the DVC outputs, never one itself (gitignored), so deleting it
# changes no stage's status (docs/running.md, "Disk").
INTERMEDIATE_DIR = Path("models/.intermediate")
JUDGE_MODELS_DIR = Path("models/judges")
GENERATIONS_DIR = Path("generations")
METRICS_DIR = Path("metrics")
EVALS_DIR = Path("evals")
REPORTS_DIR = Path("reports")
# Wall-clock times of each stage run: they differ on every run, so they stay out of DVC's outputs
# (and out of git: .gitignore) and identical reruns leave identical outputs.
TIMINGS_DIR = Path("timings")

# Errors that come from the user's input (params, data, model paths): one clear line instead of a
# traceback. Anything else (a CUDA out-of-memory error, a bug) keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FloatingPointError,  # a training loss that became NaN or infinite
    TrackingError,  # the MLflow store refused the run; its message says why
    DiskFullError,  # an output's filesystem is full; the output was left as it was
)


def declared_params(params: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The params a stage declared (its `PARAMS`), as logged to MLflow."""
    return select(params, [k for k in keys if get(params, k, None) is not None])


def study_name(params: dict[str, Any]) -> str:
    # Only names the MLflow experiment, so no stage declares `study.name` as a dependency.
    return str(get(params, "study.name"))


def cell_identity(cell: str) -> dict[str, Any]:
    """What a metrics file says of its cell: name, method, learning rate and seed."""
    if cell == BASE_CELL:
        return {"cell": cell, "method": BASE_CELL, "learning_rate": None, "seed": None}
    parsed = parse_cell(cell)
    return {
        "cell": cell,
        "method": parsed.method,
        "learning_rate": parsed.learning_rate,
        "seed": parsed.seed,
    }


def read_generations(measurement: str, cell: str) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """A generation stage's summary and its rows per checkpoint label."""
    directory = GENERATIONS_DIR / measurement / cell
    summary = read_json(directory / "generation.json")
    return summary, {
        c["label"]: read_jsonl(directory / f"{c['label']}.jsonl") for c in summary["checkpoints"]
    }


def elapsed(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("alembic", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_user_command(function: Callable[..., Any], *args: Any) -> None:
    """Run `function`; a bad-input error exits 1 with its message and no traceback."""
    configure_logging()
    try:
        function(*args)
    except USER_ERRORS as error:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def apply_runtime_settings(params: dict[str, Any]) -> None:
    """Apply `runtime:`, the settings that cannot change any output (no stage declares them, so
    changing one reruns nothing): whether progress bars are drawn, where a stage tracks when
    its MLflow store cannot be opened, and how many model judges share a GPU at a time."""
    progress = get(params, "runtime.progress", True)
    if not isinstance(progress, bool):
        raise ParamError(f"params.yaml: `runtime.progress` must be true or false, got {progress!r}")
    if not progress:
        # tqdm (transformers, datasets, TRL, huggingface_hub) reads its defaults from TQDM_*.
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    set_fallback(get(params, FALLBACK_PARAM, None))
    set_judges_per_gpu(get(params, JUDGES_PER_GPU, DEFAULT_JUDGES_PER_GPU))


def run_stage(function: Callable[..., Any], *args: Any) -> None:
    """A DVC stage's process: run its function, then end the process (exit status 0).

    Bytecode is cached where the environment forbids writing it, and a finished stage skips the
    interpreter's teardown (`safetydrift.process`). A failed stage exits 1 with its error.
    """
    enable_bytecode_cache()
    if Path(PARAMS_FILE).exists():
        run_user_command(lambda: apply_runtime_settings(load_params()))
    run_user_command(function, *args)
    exit_now(0)
