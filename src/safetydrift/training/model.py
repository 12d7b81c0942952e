"""The model a cell trains and how it runs: loaded in its method's dtype (4-bit NF4 through
bitsandbytes for QLoRA), its LoRA config, bf16 autocast, regional torch.compile, CUDA graphs, and
the attention kernels training may use.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from safetydrift.compat import fast_path_verified
from safetydrift.params import ParamError
from safetydrift.training.settings import (
    TrainSettings,
    cuda_graph_obstacles,
)

# torch, transformers and PEFT are imported where they are used (import cost:
# safetydrift/training/__init__.py).


def cuda_available() -> bool:
    import torch  # import cost: training/__init__.py

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
    """`auto` records where it applies: a CUDA GPU, full, LoRA or QLoRA, one process, padded
    lengths, and library versions the recording was verified with (`safetydrift.compat`)."""
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
    import torch  # import cost: training/__init__.py

    if not torch.cuda.is_available():
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel  # import cost: training/__init__.py

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if deterministic:
        backends = [SDPBackend.MATH]
    with sdpa_kernel(backends):
        yield


def use_bf16(settings: TrainSettings) -> bool:
    import torch  # import cost: training/__init__.py

    if settings.precision == "fp32":
        return False
    supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if settings.precision == "bf16" and not supported:
        raise ParamError("params.yaml: `train.precision` is bf16 but this machine has no bf16 GPU")
    return supported


def load_training_model(base_dir: Path, settings: TrainSettings, bf16: bool):
    import torch  # import cost: training/__init__.py
    from transformers import AutoModelForCausalLM  # import cost: training/__init__.py

    kwargs: dict[str, Any] = {}
    if settings.method == "qlora":
        if not cuda_available():
            raise ParamError(
                "qlora needs a CUDA GPU: bitsandbytes' 4-bit NF4 layers do not train on this "
                "machine's CPU. Leave `qlora` out of `grid.methods` here, or run on a GPU."
            )
        from transformers import BitsAndBytesConfig  # import cost: training/__init__.py

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
        from peft import prepare_model_for_kbit_training  # import cost: training/__init__.py

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
    from peft import LoraConfig  # import cost: training/__init__.py

    assert settings.lora is not None
    return LoraConfig(
        r=settings.lora.r,
        lora_alpha=settings.lora.alpha,
        lora_dropout=settings.lora.dropout,
        target_modules=list(settings.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
