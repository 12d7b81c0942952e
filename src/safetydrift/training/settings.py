"""What one grid cell trains with: `train.*` and `methods.METHOD.*` read and checked into a
`TrainSettings` before any model is loaded.

Every method shares the study's schedule; only the learning rate varies across the grid. A
combination that cannot work (CUDA graphs where they cannot record, compilation in a
deterministic run, LoRA under a CUDA-graph compile mode) is refused here, naming the param.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from safetydrift.cells import grid_seeds, reject_train_seed, seed_value
from safetydrift.models import PromptFormat
from safetydrift.params import ParamError, boolean, choice, get, positive_float

METHODS = ("full", "lora", "qlora", "dpo")
# torch.compile's modes. The CUDA-graph ones record a graph per sequence length: pair them with
# `train.pad_to_multiple_of`, so that a run meets a few lengths instead of one per batch.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# Methods whose decoder `train.cuda_graphs` records: TRL's SFT, one forward a step (DPO's paired
# forwards are not). QLoRA's 4-bit layers record too: on an H200, 100 against 24 examples/s with the
# same losses (benchmarks/RESULTS.md, "2026-12-02 (third lease)").
GRAPHED_METHODS = ("full", "lora", "qlora")
MASTER_DTYPES = ("float32", "bfloat16")
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
    cuda_graphs: str = "off"  # the decoder replayed as CUDA graphs (safetydrift.fastpaths)
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
    choice(settings.master_dtype, MASTER_DTYPES, "train.master_dtype")
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
    return choice(value, KEEP_CHECKPOINTS, "train.keep_checkpoints")


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
        f"CUDA graphs are for {', '.join(GRAPHED_METHODS)} only (set "
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
