"""`train_cell`: one grid cell trained end to end, from its settings and examples to its
checkpoints, and what the run did (`TrainResult`): the train stage's training.json (steps, losses,
checkpoints, truncation) and its timings (speed, memory).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetydrift.cells import Cell
from safetydrift.determinism import deterministic_mode
from safetydrift.training.checkpoints import (
    checkpoint_steps,
    make_recorder,
    saved_dtype,
    total_steps,
)
from safetydrift.training.examples import TrainingExample
from safetydrift.training.launch import world_size
from safetydrift.training.model import cuda_available, load_training_model, training_attention
from safetydrift.training.settings import TrainSettings
from safetydrift.training.trainer import build_trainer

# torch is imported where it is used (import cost: safetydrift/training/__init__.py).


def peak_memory_bytes() -> int | None:
    import torch  # import cost: training/__init__.py

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


@dataclass
class TrainResult:
    cell: str
    steps: int
    examples: int
    train_seconds: float
    examples_per_second: float
    tokens_per_second: float | None
    peak_memory_bytes: int | None
    checkpoints: list[dict[str, Any]]
    final_loss: float | None
    losses: list[float]
    steady_examples_per_second: float | None = None  # after the first 10% of steps (compilation)
    setup_seconds: float | None = None  # loading the model and data, building the trainer
    # With `train.cuda_graphs`: each recording's batch shape and seconds, and how many training
    # forwards ran eager (batches of another size).
    cuda_graphs: dict[str, Any] | None = None
    # `deterministic` and the switches it ran under (`safetydrift.determinism`).
    determinism: dict[str, Any] | None = None
    # How `train.max_length` met the examples (safetydrift.training.examples.Truncation.as_dict).
    truncation: dict[str, Any] | None = None

    def summary(self, settings: TrainSettings) -> dict[str, Any]:
        """What the training did, the same on every rerun of the same inputs: the train stage's
        training.json, a DVC output."""
        return {
            "cell": self.cell,
            "method": settings.method,
            "learning_rate": settings.learning_rate,
            "seed": settings.seed,
            # `train.deterministic` and the switches the run had (safetydrift.determinism).
            "determinism": self.determinism,
            "steps": self.steps,
            "examples": self.examples,
            # Processes that trained together (`train.num_processes`), each accumulating its
            # share of the effective batch: the steps above are the same for any number.
            "processes": world_size(),
            "gradient_accumulation_steps": settings.gradient_accumulation_steps,
            "final_loss": self.final_loss,
            "losses": self.losses,
            "cuda_graphs": None
            if self.cuda_graphs is None
            else {"recordings": [c["shape"] for c in self.cuda_graphs["recordings"]]},
            "checkpoints": self.checkpoints,
            "keep_checkpoints": settings.keep_checkpoints,
            "truncation": self.truncation,
        }

    def timing(self) -> dict[str, Any]:
        """Where the training's time went, and its memory: different on every run, so kept out
        of DVC's outputs. Compilation happens in the first steps, inside `train_seconds`."""
        return {
            "setup_seconds": self.setup_seconds,
            "train_seconds": self.train_seconds,
            "examples_per_second": self.examples_per_second,
            "steady_examples_per_second": self.steady_examples_per_second,
            "tokens_per_second": self.tokens_per_second,
            "peak_memory_bytes": self.peak_memory_bytes,
            "cuda_graphs": self.cuda_graphs,
        }


def steady_rate(step_times: Sequence[float], examples_per_step: int) -> float | None:
    """Examples a second over the steps after the first 10%, where compilation and warm-up fall."""
    first = len(step_times) // 10
    if len(step_times) - first < 2:
        return None
    return (len(step_times) - 1 - first) * examples_per_step / (step_times[-1] - step_times[first])


def train_cell(
    settings: TrainSettings,
    base_dir: Path,
    pairs: Sequence[TrainingExample],
    out_dir: Path,
    work_dir: Path,
    tracker=None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train one grid cell and write its checkpoints under `out_dir` (a fresh directory).

    `callbacks` are extra `TrainerCallback`s (the training benchmark's profiler). With
    `settings.deterministic` the whole run, model loading included, is in deterministic mode.
    """
    if settings.method == "qlora" and not cuda_available():
        load_training_model(base_dir, settings, bf16=False)  # raises the clear error, early
    with deterministic_mode(settings.seed, settings.deterministic) as determinism:
        return _train(settings, base_dir, pairs, out_dir, work_dir, tracker, callbacks, determinism)


def _train(
    settings: TrainSettings,
    base_dir: Path,
    pairs: Sequence[TrainingExample],
    out_dir: Path,
    work_dir: Path,
    tracker,
    callbacks: Sequence[Any],
    determinism: dict[str, Any],
) -> TrainResult:
    import torch  # import cost: training/__init__.py

    n_steps = total_steps(len(pairs), settings)
    steps = checkpoint_steps(n_steps, settings.checkpoint_fractions)
    setup_started = time.perf_counter()
    torch.manual_seed(settings.seed)
    trainer = build_trainer(settings, base_dir, pairs, work_dir)
    examples = len(pairs) - trainer.truncation.dropped
    if examples != len(pairs):
        steps = checkpoint_steps(total_steps(examples, settings), settings.checkpoint_fractions)
    recorder = make_recorder(settings, steps, out_dir, tracker, saved_dtype(base_dir))
    recorder.trainer = trainer
    trainer.add_callback(recorder)
    for callback in callbacks:
        trainer.add_callback(callback)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    setup_seconds = started - setup_started
    graphs = getattr(trainer, "graphed_backbone", None)
    try:
        with training_attention(settings.deterministic):
            output = trainer.train()
    finally:
        if graphs is not None:
            graphs.restore()  # frees the recordings' memory pool with the trainer
    seconds = time.perf_counter() - started
    recorder.flush()
    if len(recorder.written) != len(steps):
        raise RuntimeError(
            f"training ran {trainer.state.global_step} steps but wrote checkpoints at "
            f"{[w['step'] for w in recorder.written]}, not at {sorted(steps)}"
        )
    tokens = getattr(trainer, "_total_train_tokens", None)
    result = TrainResult(
        cell=Cell(settings.method, settings.learning_rate, settings.seed).name,
        steps=trainer.state.global_step,
        examples=examples,
        train_seconds=seconds,
        examples_per_second=examples * math.ceil(settings.epochs) / seconds,
        tokens_per_second=(tokens / seconds) if tokens else None,
        peak_memory_bytes=peak_memory_bytes(),
        checkpoints=recorder.written,
        final_loss=output.training_loss,
        losses=recorder.losses,
        steady_examples_per_second=steady_rate(recorder.step_times, settings.effective_batch_size),
        setup_seconds=setup_seconds,
        cuda_graphs=None
        if graphs is None
        else {"recordings": graphs.captures, "eager_forwards": graphs.eager_calls},
        determinism=determinism,
        truncation=trainer.truncation.as_dict(),
    )
    return result
