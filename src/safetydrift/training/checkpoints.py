"""Checkpoints at the study's fractions of training: the optimizer steps they fall on, the
callback that writes them (safetensors; adapters alone for LoRA) with their checkpoint.json and
sends the step metrics to MLflow, and `train.keep_checkpoints: final`, which sets every
checkpoint but the last aside until its generations exist (docs/running.md, "Disk").
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetydrift.cells import checkpoint_label
from safetydrift.files import atomic_dir, write_json
from safetydrift.params import ParamError
from safetydrift.training.settings import TrainSettings

# torch and transformers are imported where they are used (import cost:
# safetydrift/training/__init__.py).

CHECKPOINT_INFO_FILE = "checkpoint.json"


def total_steps(n_examples: int, settings: TrainSettings) -> int:
    """Optimizer steps of the run: the last, partial batch of an epoch still makes a step."""
    return math.ceil(n_examples / settings.effective_batch_size) * math.ceil(settings.epochs)


def checkpoint_steps(n_steps: int, fractions: Sequence[float]) -> dict[int, float]:
    """Step of each checkpoint fraction, rounded up as the paper's 148/296/444/591 of 591."""
    steps: dict[int, float] = {}
    for fraction in sorted(fractions):
        step = max(1, math.ceil(fraction * n_steps))
        if step in steps:
            raise ParamError(
                f"the train split gives only {n_steps} optimizer steps: too few for checkpoints at "
                f"{list(fractions)} (fractions {steps[step]} and {fraction} fall on step {step}); "
                "use more training rows or a smaller `train.effective_batch_size`"
            )
        steps[step] = fraction
    return steps


def saved_dtype(base_dir: Path):
    """The dtype the base model was saved in, for checkpoints of the same size and precision."""
    import torch  # import cost: training/__init__.py

    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype")
    return getattr(torch, name) if isinstance(name, str) and hasattr(torch, name) else None


def make_recorder(
    settings: TrainSettings, steps: dict[int, float], out_dir: Path, tracker, save_dtype
):
    """A TrainerCallback that writes the checkpoints and sends step metrics to MLflow."""
    from transformers import TrainerCallback  # import cost: training/__init__.py

    class TrainingRecorder(TrainerCallback):
        """Checkpoints at the study's fractions (adapters alone for LoRA; safetensors), and
        per-step loss, learning rate and gradient norm, sent to MLflow in one batch a checkpoint.

        It works on `on_log`, which `logging_steps=1` makes fire after every optimizer step with
        that step's loss, so each checkpoint's record holds the loss of its own step.
        """

        def __init__(self) -> None:
            self.losses: list[float] = []
            self.step_times: list[float] = []  # when each optimizer step's loss was logged
            self.pending: list[tuple[int, dict[str, float]]] = []
            self.written: list[dict[str, Any]] = []

        trainer = None  # set once the trainer exists: FSDP gathers weights through it

        def on_log(self, args, state, control, logs=None, model=None, processing_class=None, **kw):
            if not logs:
                return
            if state.global_step in steps and state.global_step not in self.written_steps:
                weights = self.gathered_weights()  # a collective: every rank must take part
                if not state.is_world_process_zero:
                    self.written.append({"step": state.global_step})
                    return
            elif not state.is_world_process_zero:
                return
            metrics = {k: logs[k] for k in ("loss", "learning_rate", "grad_norm") if k in logs}
            metrics.update({k: v for k, v in logs.items() if k.startswith(("rewards/", "logps/"))})
            if "loss" in metrics:
                loss = float(metrics["loss"])
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"training diverged: the loss is {loss} at step {state.global_step}; "
                        "no checkpoint of this run is kept (try a lower learning rate or fp32)"
                    )
                self.losses.append(loss)
                self.step_times.append(time.perf_counter())
            if metrics:
                self.pending.append((state.global_step, metrics))
            if state.global_step in steps and state.global_step not in self.written_steps:
                self.write(state, model, processing_class, weights)
                self.flush()

        def gathered_weights(self):
            """Full weights of an FSDP-sharded model; None where the model holds them already."""
            if self.trainer is not None and getattr(self.trainer, "is_fsdp_enabled", False):
                return self.trainer.accelerator.get_state_dict(self.trainer.model_wrapped)
            return None

        @property
        def written_steps(self) -> set[int]:
            return {record["step"] for record in self.written}

        def write(self, state, model, tokenizer, weights) -> None:
            fraction = steps[state.global_step]
            path = out_dir / checkpoint_label(fraction)
            if weights is None and settings.lora is None:
                weights = model.state_dict()
            if settings.lora is None and save_dtype is not None:
                # The optimizer's float32 master weights are saved in the base model's dtype.
                weights = {k: v.to(save_dtype) for k, v in weights.items()}
            model.save_pretrained(path, safe_serialization=True, state_dict=weights)
            if settings.lora is None and tokenizer is not None:
                tokenizer.save_pretrained(path)
            previous = self.written[-1]["step"] if self.written else 0
            recent = self.losses[-(state.global_step - previous) :]
            record = {
                "method": settings.method,
                "learning_rate": settings.learning_rate,
                "step": state.global_step,
                "fraction": fraction,
                "total_steps": state.max_steps,
                "loss": recent[-1] if recent else None,
                "mean_loss_since_previous_checkpoint": sum(recent) / len(recent)
                if recent
                else None,
                "weights": "adapter" if settings.lora else "full",
                # The 4-bit base a QLoRA adapter was trained on, for evaluation on the same base.
                "quantization": settings.quantization,
            }
            write_json(path / CHECKPOINT_INFO_FILE, record)
            self.written.append(record)

        def flush(self) -> None:
            if tracker is not None:
                tracker.log_metric_history(self.pending)
            self.pending.clear()

    return TrainingRecorder()


def keep_checkpoints(setting: str, out_dir: Path, intermediate_dir: Path) -> None:
    """`train.keep_checkpoints`: with `final`, set every checkpoint but the last aside in
    `intermediate_dir`; with `all`, remove what an earlier `final` run set aside there, since
    `out_dir` holds every checkpoint now."""
    if setting == "final":
        set_aside_intermediate(out_dir, intermediate_dir)
    else:
        shutil.rmtree(intermediate_dir, ignore_errors=True)


def set_aside_intermediate(out_dir: Path, intermediate_dir: Path) -> None:
    """Move every checkpoint but the last out of `out_dir` into `intermediate_dir`, with a copy of
    training.json that ties them to this training."""
    checkpoints = sorted(p for p in out_dir.iterdir() if p.is_dir() and p.name.startswith("ckpt-"))
    with atomic_dir(intermediate_dir) as tmp:
        for checkpoint in checkpoints[:-1]:
            shutil.move(checkpoint, tmp / checkpoint.name)
        shutil.copy2(out_dir / "training.json", tmp / "training.json")
