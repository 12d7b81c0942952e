"""The study's fine-tuning methods as thin recipes over TRL and PEFT.

full and lora/qlora are TRL SFT on (user: bare source text, assistant: `chosen`), or on chat
conversations (`safetydrift.training_data`), with the loss on the answer's tokens only; dpo is TRL
DPO on (`chosen`, `rejected`) with full weights. Rows are tokenized here, in `prompt.format` (the
same text generation encodes), and handed to TRL as ids.
Every method shares the study's schedule; only the learning rate varies across the grid.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetydrift.cells import Cell, checkpoint_label, grid_seeds, reject_train_seed, seed_value
from safetydrift.compat import fast_path_verified
from safetydrift.data import TranslationPair
from safetydrift.determinism import deterministic_mode
from safetydrift.io import write_json
from safetydrift.models import PromptFormat
from safetydrift.params import ParamError, boolean, get, positive_float
from safetydrift.training_data import (
    TrainingExample,
    count_preference_truncation,
    encode_example,
    fit_to_max_length,
)

log = logging.getLogger(__name__)

METHODS = ("full", "lora", "qlora", "dpo")
# torch.compile's modes. The CUDA-graph ones record a graph per sequence length: pair them with
# `train.pad_to_multiple_of`, so that a run meets a few lengths instead of one per batch.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# Methods whose decoder `train.cuda_graphs` records: TRL's SFT, one forward a step. DPO's paired
# forwards and QLoRA's 4-bit layers have not been measured with it.
GRAPHED_METHODS = ("full", "lora")
MASTER_DTYPES = ("float32", "bfloat16")
CHECKPOINT_INFO_FILE = "checkpoint.json"
# `train.keep_checkpoints`: every checkpoint's weights stay in the train stage's DVC output
# (`all`, for audits), or only the final one's (`final`): the others are set aside until their
# generations exist, then deleted (docs/running.md, "Disk").
KEEP_CHECKPOINTS = ("all", "final")


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )

    @classmethod
    def from_params(cls, values: dict[str, Any], where: str) -> LoraSettings:
        settings = cls(
            **{k: values[k] for k in ("r", "alpha", "dropout", "target_modules") if k in values}
        )
        if settings.r <= 0 or settings.alpha <= 0:
            raise ParamError(f"params.yaml: `{where}.r` and `{where}.alpha` must be > 0")
        if not settings.target_modules:
            raise ParamError(f"params.yaml: `{where}.target_modules` is empty")
        return settings


@dataclass
class TrainSettings:
    """What one grid cell trains with: the shared schedule plus its method's own settings."""

    method: str
    learning_rate: float
    seed: int
    epochs: float
    effective_batch_size: int
    per_device_batch_size: int
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    optimizer: str
    max_length: int | None
    checkpoint_fractions: list[float]
    precision: str  # "auto" (bf16 where the hardware has it), "bf16" or "fp32"
    master_dtype: str  # dtype of the weights that the optimizer updates, for full and dpo
    padding_free: bool
    gradient_checkpointing: bool
    compile: str = "auto"  # regional torch.compile of the decoder blocks: auto (CUDA only), on, off
    compile_mode: str = "default"  # torch.compile's mode; "reduce-overhead" adds CUDA graphs
    pad_to_multiple_of: int | None = None  # batch lengths rounded up: few shapes to graph
    cuda_graphs: str = "off"  # the decoder replayed as CUDA graphs (safetydrift.cudagraphs)
    num_processes: int = 1
    distributed: str = "ddp"  # or "fsdp", when num_processes > 1
    lora: LoraSettings | None = None
    quantization: dict[str, Any] | None = None
    beta: float | None = None
    prompt_format: PromptFormat = field(default_factory=PromptFormat)
    # SFT: whether the end-of-turn (eos) token closing the answer is a target. The authors' pad =
    # eos made their collator mask it. DPO scores whole completions and always includes it.
    train_on_eos: bool = True
    # QLoRA: PEFT's prepare_model_for_kbit_training (float32 norms, input grads, checkpointing)
    prepare_kbit: bool = False
    # Bit-for-bit repeatable on one GPU (`safetydrift.determinism`): eager, no CUDA graphs, the
    # math attention kernel, deterministic algorithms.
    deterministic: bool = False
    keep_checkpoints: str = "all"  # KEEP_CHECKPOINTS

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.effective_batch_size // (self.per_device_batch_size * self.num_processes)

    @property
    def trainer(self) -> str:
        return "dpo" if self.method == "dpo" else "sft"


def train_settings(
    params: dict[str, Any], method: str, learning_rate: float, seed: int | str | None = None
) -> TrainSettings:
    """Validate everything a cell needs before any model is loaded.

    `seed` is the cell's entry of `grid.seeds` (the train stage's `--seed`); without one, the
    first of `grid.seeds`.
    """
    if method not in METHODS:
        raise ParamError(f"unknown method `{method}` (known: {', '.join(METHODS)})")
    reject_train_seed(params)
    seed = grid_seeds(params)[0] if seed is None else seed_value(seed)
    train = get(params, "train")
    method_params = get(params, f"methods.{method}", {}) or {}
    settings = TrainSettings(
        method=method,
        learning_rate=positive_float(learning_rate, "grid.learning_rates"),
        seed=seed,
        epochs=positive_float(train["epochs"], "train.epochs"),
        effective_batch_size=int(train["effective_batch_size"]),
        per_device_batch_size=int(train["per_device_batch_size"]),
        lr_scheduler=str(train["lr_scheduler"]),
        warmup_ratio=float(train["warmup_ratio"]),
        weight_decay=float(train["weight_decay"]),
        optimizer=str(method_params.get("optimizer", train["optimizer"])),
        max_length=train.get("max_length"),
        checkpoint_fractions=checkpoint_fractions(train.get("checkpoint_fractions")),
        precision=str(train.get("precision", "auto")),
        master_dtype=str(train.get("master_dtype", "float32")),
        padding_free=boolean(train.get("padding_free", False), "train.padding_free"),
        gradient_checkpointing=boolean(
            train.get("gradient_checkpointing", False), "train.gradient_checkpointing"
        ),
        compile=switch_setting(
            method_params.get("compile", train.get("compile", "auto")), "compile", method
        ),
        compile_mode=str(method_params.get("compile_mode", train.get("compile_mode", "default"))),
        pad_to_multiple_of=train.get("pad_to_multiple_of"),
        cuda_graphs=switch_setting(
            method_params.get("cuda_graphs", train.get("cuda_graphs", False)),
            "cuda_graphs",
            method,
        ),
        num_processes=int(train.get("num_processes", 1)),
        distributed=str(train.get("distributed", "ddp")),
        prompt_format=PromptFormat.from_params(get(params, "prompt", None)),
        train_on_eos=bool(train.get("train_on_eos", True)),
        prepare_kbit=bool(method_params.get("prepare_for_kbit_training", False)),
        deterministic=boolean(train.get("deterministic", False), "train.deterministic"),
        keep_checkpoints=keep_checkpoints_setting(train.get("keep_checkpoints", "all")),
    )
    if settings.master_dtype not in MASTER_DTYPES:
        raise ParamError(
            f"params.yaml: `train.master_dtype` must be one of {', '.join(MASTER_DTYPES)}, "
            f"got {settings.master_dtype!r}"
        )
    if settings.per_device_batch_size <= 0 or settings.effective_batch_size <= 0:
        raise ParamError(
            "params.yaml: `train.effective_batch_size` and `per_device_batch_size` must be > 0"
        )
    per_step = settings.per_device_batch_size * settings.num_processes
    if settings.effective_batch_size % per_step:
        raise ParamError(
            f"params.yaml: `train.effective_batch_size` ({settings.effective_batch_size}) is not a "
            f"multiple of `train.per_device_batch_size` × `train.num_processes` ({per_step})"
        )
    if settings.num_processes < 1:
        raise ParamError(
            f"params.yaml: `train.num_processes` must be >= 1, got {settings.num_processes}"
        )
    if settings.distributed not in ("ddp", "fsdp"):
        raise ParamError(
            f"params.yaml: `train.distributed` must be ddp or fsdp, got {settings.distributed!r}"
        )
    if settings.compile_mode not in COMPILE_MODES:
        raise ParamError(
            f"params.yaml: `train.compile_mode` (or `methods.{method}.compile_mode`) must be one "
            f"of {', '.join(COMPILE_MODES)}, got {settings.compile_mode!r}"
        )
    if (
        method in ("lora", "qlora")
        and settings.compile != "off"
        and settings.compile_mode in CUDA_GRAPH_MODES
    ):
        # Measured on an H100 (torch 2.11, PEFT 0.21): the first backward through the graphed
        # LoRA blocks kills the process with a segmentation fault, so refuse before any work.
        raise ParamError(
            f"params.yaml: `compile_mode: {settings.compile_mode}` (CUDA graphs) crashes "
            f"{method} training with a segmentation fault; set `methods.{method}.compile_mode` "
            f"to default or max-autotune-no-cudagraphs, or `methods.{method}.compile: false`"
        )
    multiple = settings.pad_to_multiple_of
    if multiple is not None and (
        isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1
    ):
        raise ParamError(
            f"params.yaml: `train.pad_to_multiple_of` must be a positive integer or null, "
            f"got {multiple!r}"
        )
    if settings.precision not in ("auto", "bf16", "fp32"):
        raise ParamError(
            f"params.yaml: `train.precision` must be auto, bf16 or fp32, got {settings.precision}"
        )
    check_deterministic(settings)  # first: its contradiction is the one to name
    check_cuda_graphs(settings)
    if method in ("lora", "qlora"):
        settings.lora = LoraSettings.from_params(
            method_params.get("lora", {}), f"methods.{method}.lora"
        )
    if method == "qlora":
        settings.quantization = method_params.get("quantization") or {}
        if "double_quant" in settings.quantization:
            boolean(
                settings.quantization["double_quant"], "methods.qlora.quantization.double_quant"
            )
    if method == "dpo":
        settings.beta = positive_float(method_params.get("beta", 0.1), "methods.dpo.beta")
    return settings


def check_deterministic(settings: TrainSettings) -> None:
    """`train.deterministic` runs eager: compilation or CUDA graphs asked for explicitly (`true`,
    not `auto`) contradict it and are refused before any work."""
    if not settings.deterministic:
        return
    asked = [key for key in ("compile", "cuda_graphs") if getattr(settings, key) == "on"]
    if asked:
        raise ParamError(
            f"params.yaml: `train.deterministic` is true, but {' and '.join(asked)} "
            f"{'is' if len(asked) == 1 else 'are'} true for {settings.method}: deterministic "
            f"training runs eager; set {'it' if len(asked) == 1 else 'them'} to auto or false"
        )


def keep_checkpoints_setting(value: Any) -> str:
    """`train.keep_checkpoints`: all or final."""
    if value not in KEEP_CHECKPOINTS:
        raise ParamError(
            f"params.yaml: `train.keep_checkpoints` must be one of {', '.join(KEEP_CHECKPOINTS)}, "
            f"got {value!r}"
        )
    return str(value)


def checkpoint_fractions(values: Any) -> list[float]:
    """`train.checkpoint_fractions`: distinct numbers in (0, 1], each a saved checkpoint."""
    key = "params.yaml: `train.checkpoint_fractions`"
    if not isinstance(values, list) or not values:
        raise ParamError(f"{key} must be a list of fractions in (0, 1], got {values!r}")
    fractions = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamError(
                f"{key} must hold numbers in (0, 1] (e.g. [0.25, 0.5, 1.0]), got {value!r}"
            )
        if not 0 < value <= 1:
            raise ParamError(f"{key} must be fractions in (0, 1], got {value!r}")
        fractions.append(float(value))
    repeated = sorted({f for f in fractions if fractions.count(f) > 1})
    if repeated:
        raise ParamError(
            f"{key} lists {', '.join(map(str, repeated))} more than once; list each fraction once"
        )
    return fractions


def switch_setting(value: Any, key: str, method: str) -> str:
    """`train.KEY` (or `methods.METHOD.KEY`): auto, or a boolean."""
    # `1 in (True,)` holds in Python: a boolean is checked by its type, not by equality.
    if value == "auto" or isinstance(value, bool):
        return {True: "on", False: "off"}.get(value, "auto")
    raise ParamError(
        f"params.yaml: `train.{key}` (or `methods.{method}.{key}`) must be auto, true or "
        f"false, got {value!r}"
    )


def cuda_graph_obstacles(settings: TrainSettings) -> list[str]:
    """Why the decoder cannot be recorded as CUDA graphs with these settings (none: it can)."""
    obstacles = {
        f"CUDA graphs are for {' and '.join(GRAPHED_METHODS)} only (set "
        f"`methods.{settings.method}.cuda_graphs: false`)": settings.method not in GRAPHED_METHODS,
        "`train.pad_to_multiple_of` is null (every batch length would be a new recording; "
        "use e.g. 64)": settings.pad_to_multiple_of is None,
        "`train.padding_free` is true (packed rows have no fixed shapes)": settings.padding_free,
        "`train.gradient_checkpointing` is true": settings.gradient_checkpointing,
        "`train.num_processes` > 1 (DDP's hooks run inside the backward)": (
            settings.num_processes > 1
        ),
        f"`compile_mode` is {settings.compile_mode} (graphs of its own)": (
            settings.compile != "off" and settings.compile_mode in CUDA_GRAPH_MODES
        ),
    }
    return [reason for reason, applies in obstacles.items() if applies]


def check_cuda_graphs(settings: TrainSettings) -> None:
    """`cuda_graphs: true` where the recording cannot work is refused before any work."""
    obstacles = cuda_graph_obstacles(settings) if settings.cuda_graphs == "on" else []
    if obstacles:
        raise ParamError(
            f"params.yaml: `train.cuda_graphs` (or `methods.{settings.method}.cuda_graphs`) is "
            f"true, but {'; '.join(obstacles)}"
        )


def distributed_launch(settings: TrainSettings, script_and_args: Sequence[str]) -> list[str] | None:
    """The `accelerate launch` command that reruns the train stage on several processes.

    One process a GPU; with accelerate's own switch for the CPU (`ACCELERATE_USE_CPU=true`, what
    `accelerate launch --cpu` sets) the processes train on the CPU and meet over gloo, which is
    how the launch is tested without GPUs. None when one process trains, or when this process
    already is one of the launched ranks.
    """
    import os
    import sys

    if settings.num_processes == 1 or "LOCAL_RANK" in os.environ:
        return None
    from accelerate.utils import parse_flag_from_env

    on_cpu = parse_flag_from_env("ACCELERATE_USE_CPU")
    if on_cpu and settings.distributed == "fsdp":
        raise ParamError(
            "params.yaml: `train.distributed` is fsdp, which shards the model across GPUs, but "
            "ACCELERATE_USE_CPU is set: FSDP needs GPUs (ddp runs on the CPU)"
        )
    if not on_cpu:
        import torch

        gpus = torch.cuda.device_count()
        if gpus < settings.num_processes:
            raise ParamError(
                f"params.yaml: `train.num_processes` is {settings.num_processes}, but this machine "
                f"has {gpus} CUDA GPU(s); one process trains on each GPU "
                "(ACCELERATE_USE_CPU=true trains the processes on the CPU instead)"
            )
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    command += ["--num_processes", str(settings.num_processes), "--num_machines", "1"]
    if settings.distributed == "fsdp":
        command += [
            "--use_fsdp",
            "--fsdp_sharding_strategy",
            "FULL_SHARD",
            "--fsdp_auto_wrap_policy",
            "TRANSFORMER_BASED_WRAP",
            "--fsdp_state_dict_type",
            "FULL_STATE_DICT",
            "--fsdp_use_orig_params",
            "true",
        ]
    else:
        # torchrun's launcher, whatever the device: accelerate's `--cpu` alone would start one
        # process. The ranks read ACCELERATE_USE_CPU from the environment they inherit.
        command += ["--multi_gpu"]
    return [*command, *script_and_args]


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


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def use_compile(settings: TrainSettings) -> bool:
    # On a CPU, inductor's C++ compilation costs more than the few steps that tests and the smoke
    # preset train; on a GPU the per-step kernel launches are the bottleneck that it removes.
    # Deterministic runs are eager: compiled kernels and their autotuning are not bit-stable.
    if settings.deterministic:
        return False
    if settings.compile == "auto":
        return cuda_available()
    return settings.compile == "on"


def use_cuda_graphs(settings: TrainSettings) -> bool:
    """`auto` records where it applies: a CUDA GPU, full or LoRA, one process, padded lengths,
    and library versions the recording was verified with (`safetydrift.compat`)."""
    if settings.cuda_graphs == "off" or settings.deterministic:
        return False
    if not fast_path_verified("cudagraphs"):
        return False
    if settings.cuda_graphs == "on":
        if not cuda_available():
            raise ParamError(
                "params.yaml: `train.cuda_graphs` is true, but this machine has no CUDA GPU; "
                "set it to auto or false"
            )
        return True
    return cuda_available() and not cuda_graph_obstacles(settings)


def compile_blocks(model, mode: str = "default") -> int:
    """Regional compilation: compile each repeated decoder block in place, with dynamic shapes.

    The blocks share one code object, so the compiler's work is paid once for all of them and for
    every sequence length; the embedding, LM head and TRL's fused loss stay eager (the loss
    selects its tokens with a data-dependent mask, which would recompile a whole-model graph for
    every batch). With `mode="reduce-overhead"` each block's forward and backward also replay as
    CUDA graphs, one recording per sequence length: a step's host time was mostly the compiled
    blocks' own Python wrappers launching kernels one by one (profiled on an H100, docs/design.md).
    Returns the number of blocks compiled.
    """
    block_classes = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in block_classes]
    for block in blocks:
        block.compile(dynamic=True, mode=None if mode == "default" else mode)
    return len(blocks)


@contextlib.contextmanager
def training_attention(deterministic: bool = False):
    """Keep scaled-dot-product attention off cuDNN's backend while training.

    PyTorch 2.11's cuDNN attention backward returns NaN gradients when a mask is passed and the
    sequence length is 64 mod 128 (pytorch/pytorch#196678); Qwen2.5's massive-activation head
    meets its other condition, so a study run diverged to NaN within ~100 steps on an H100.
    Flash and memory-efficient attention compute the same function. Deterministic runs use the
    math kernel alone (matrix products and a softmax): the fused kernels' backward passes
    accumulate with atomics unless PyTorch picks a deterministic variant, which we have not
    measured.
    """
    import torch

    if not torch.cuda.is_available():
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if deterministic:
        backends = [SDPBackend.MATH]
    with sdpa_kernel(backends):
        yield


def use_bf16(settings: TrainSettings) -> bool:
    import torch

    if settings.precision == "fp32":
        return False
    supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if settings.precision == "bf16" and not supported:
        raise ParamError("params.yaml: `train.precision` is bf16 but this machine has no bf16 GPU")
    return supported


# --------------------------------------------------------------------------------------------
# Data in TRL's conversational formats


def sft_rows(
    pairs: Sequence[TrainingExample],
    tokenizer,
    prompt_format: PromptFormat,
    train_on_eos: bool = True,
) -> list[dict[str, Any]]:
    """Tokenized rows: `completion_mask` puts TRL's loss on the answer tokens only (and, without
    `train_on_eos`, not on the eos token that closes the answer, as the authors' pad = eos did)."""
    prompt_format.check(tokenizer)
    rows = []
    for pair in pairs:
        prompt_ids, completion_ids = encode_example(pair, tokenizer, prompt_format)
        mask = [0] * len(prompt_ids) + [1] * len(completion_ids)
        if not train_on_eos:
            mask = [
                0 if token == tokenizer.eos_token_id else bit
                for token, bit in zip(prompt_ids + completion_ids, mask, strict=True)
            ]
        rows.append({"input_ids": prompt_ids + completion_ids, "completion_mask": mask})
    return rows


def dpo_rows(
    pairs: Sequence[TranslationPair], tokenizer, prompt_format: PromptFormat
) -> list[dict[str, Any]]:
    prompt_format.check(tokenizer)
    rows = []
    for pair in pairs:
        prompt_ids, chosen_ids = prompt_format.encode_exchange(
            tokenizer, pair.source_text, pair.chosen
        )
        rejected_prompt_ids, rejected_ids = prompt_format.encode_exchange(
            tokenizer, pair.source_text, pair.rejected
        )
        shared = min(len(prompt_ids), len(rejected_prompt_ids))
        rows.append(
            {
                "prompt_ids": prompt_ids[:shared],
                "chosen_ids": prompt_ids[shared:] + chosen_ids,
                "rejected_ids": rejected_prompt_ids[shared:] + rejected_ids,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# Models


def load_training_model(base_dir: Path, settings: TrainSettings, bf16: bool):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if settings.method == "qlora":
        if not cuda_available():
            raise ParamError(
                "qlora needs a CUDA GPU: bitsandbytes' 4-bit NF4 layers do not train on this "
                "machine's CPU. Leave `qlora` out of `grid.methods` here, or run on a GPU."
            )
        from transformers import BitsAndBytesConfig

        quant = settings.quantization or {}
        compute_dtype = getattr(torch, quant.get("compute_dtype", "bfloat16"))
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant.get("quant_type", "nf4"),
            bnb_4bit_use_double_quant=bool(quant.get("double_quant", True)),
            bnb_4bit_compute_dtype=compute_dtype,
        )
        kwargs["dtype"] = compute_dtype
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    elif settings.method == "lora":
        # The base weights are frozen: keep them in the compute dtype. PEFT keeps the adapter
        # weights in float32, which is what the optimizer updates.
        kwargs["dtype"] = torch.bfloat16 if bf16 else torch.float32
    else:
        kwargs["dtype"] = getattr(torch, settings.master_dtype)
    if torch.cuda.is_available():
        kwargs.setdefault("attn_implementation", "sdpa")
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), **kwargs)
    if settings.method == "qlora" and settings.prepare_kbit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=settings.gradient_checkpointing
        )
    return model


def check_target_modules(model, settings: TrainSettings) -> None:
    if settings.lora is None:
        return
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in settings.lora.target_modules if m not in leaf_names]
    if missing:
        linear = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, m in model.named_modules()
                if type(m).__name__.endswith("Linear")
            }
        )
        raise ParamError(
            f"params.yaml: `methods.{settings.method}.lora.target_modules` names {missing}, which "
            f"the model does not have (its linear layers: {', '.join(linear)})"
        )


def peft_config(settings: TrainSettings):
    from peft import LoraConfig

    assert settings.lora is not None
    return LoraConfig(
        r=settings.lora.r,
        lora_alpha=settings.lora.alpha,
        lora_dropout=settings.lora.dropout,
        target_modules=list(settings.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


# --------------------------------------------------------------------------------------------
# Trainer


def trainer_arguments(settings: TrainSettings, output_dir: Path, bf16: bool) -> dict[str, Any]:
    """TrainingArguments shared by the SFT and DPO configs."""
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": settings.epochs,
        "per_device_train_batch_size": settings.per_device_batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": settings.lr_scheduler,
        "warmup_steps": settings.warmup_ratio,  # a float below 1 is a ratio of the total steps
        "weight_decay": settings.weight_decay,
        "optim": settings.optimizer,
        "bf16": bf16,
        "fp16": False,
        "seed": settings.seed,
        "data_seed": settings.seed,
        "logging_steps": 1,
        "logging_nan_inf_filter": False,  # a diverged run must show its NaN, not an average
        "save_strategy": "no",  # checkpoints are written by CheckpointWriter, as safetensors
        "report_to": "none",  # metrics go to the stage's own MLflow run
        "gradient_checkpointing": settings.gradient_checkpointing,
        "max_length": settings.max_length,
        "dataloader_num_workers": 0,
        # Padded positions are masked out of attention and loss: the loss does not change.
        "pad_to_multiple_of": settings.pad_to_multiple_of,
        "remove_unused_columns": True,
        "disable_tqdm": False,
    }


def build_trainer(
    settings: TrainSettings, base_dir: Path, pairs: Sequence[TrainingExample], work_dir: Path
):
    import datasets

    bf16 = use_bf16(settings)
    graphed = use_cuda_graphs(settings)  # a refused setting fails before the model loads
    model = load_training_model(base_dir, settings, bf16)
    check_target_modules(model, settings)
    compiled = use_compile(settings)
    if compiled:
        compile_blocks(model, settings.compile_mode)
    from safetydrift.models import load_tokenizer

    tokenizer = load_tokenizer(base_dir)
    common = trainer_arguments(settings, work_dir, bf16)
    peft = peft_config(settings) if settings.lora else None
    if settings.trainer == "dpo":
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(**common, beta=settings.beta, padding_free=settings.padding_free)
        rows = dpo_rows(pairs, tokenizer, settings.prompt_format)
        truncation = count_preference_truncation(rows, settings.max_length)
        dataset = datasets.Dataset.from_list(rows)
        # The frozen reference model, loaded as TRL would (the base weights in the policy's
        # dtype), so that its blocks can be compiled too.
        reference = load_training_model(base_dir, settings, bf16)
        if compiled:
            compile_blocks(reference, settings.compile_mode)
        trainer = pretokenized_dpo_trainer(DPOTrainer)(
            model=model,
            ref_model=reference,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        trainer.truncation = truncation
        return trainer
    from trl import SFTConfig, SFTTrainer

    if settings.padding_free:
        # TRL does not truncate padding-free batches; MT-Pref sentences are far below max_length.
        common["max_length"] = None
    config = SFTConfig(
        **common,
        completion_only_loss=True,
        padding_free=settings.padding_free,
        packing=False,  # packing would change how many examples make a step
    )
    # Counted here, where the prompt format is applied; an example whose answer would be cut
    # away entirely is left out now rather than by TRL, so that the steps are counted right.
    rows, truncation = fit_to_max_length(
        sft_rows(pairs, tokenizer, settings.prompt_format, settings.train_on_eos),
        common["max_length"],
    )
    if not rows:
        raise ParamError(
            f"params.yaml: `train.max_length` ({settings.max_length}) leaves no example an answer "
            "token to train on: every prompt fills it"
        )
    dataset = datasets.Dataset.from_list(rows)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft,
    )
    trainer.truncation = truncation
    if compiled and peft is not None:
        # With frozen embeddings the first block's input does not require grad and every other
        # block's does: two graphs to compile where full fine-tuning has one. Making the
        # embedding output require grad costs one block's input gradient per step.
        trainer.model.enable_input_require_grads()
    if graphed:
        from safetydrift.cudagraphs import GraphedBackbone, backbone_of

        trainer.graphed_backbone = GraphedBackbone(
            backbone_of(trainer.model), settings.per_device_batch_size
        )
    return trainer


def pretokenized_dpo_trainer(dpo_trainer_class):
    """TRL's DPOTrainer, taking rows already tokenized in `prompt.format` as they are (TRL would
    tokenize text again, adding the tokenizer's BOS to a format that writes its own)."""

    class PretokenizedDPOTrainer(dpo_trainer_class):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return PretokenizedDPOTrainer


def saved_dtype(base_dir: Path):
    """The dtype the base model was saved in, for checkpoints of the same size and precision."""
    import json

    import torch

    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype")
    return getattr(torch, name) if isinstance(name, str) and hasattr(torch, name) else None


def peak_memory_bytes() -> int | None:
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def make_recorder(
    settings: TrainSettings, steps: dict[int, float], out_dir: Path, tracker, save_dtype
):
    """A TrainerCallback that writes the checkpoints and sends step metrics to MLflow."""
    from transformers import TrainerCallback

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
    # How `train.max_length` met the examples (safetydrift.training_data.Truncation.as_dict).
    truncation: dict[str, Any] | None = None


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
    pairs: Sequence[TranslationPair],
    out_dir: Path,
    work_dir: Path,
    tracker,
    callbacks: Sequence[Any],
    determinism: dict[str, Any],
) -> TrainResult:
    import torch

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
