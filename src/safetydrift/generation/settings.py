"""How generation runs, from params.yaml's `generation.*`: the engine, the token and batch limits,
the dtype, where QLoRA adapters are evaluated and whether runs must repeat bit for bit."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from safetydrift.params import ParamError, boolean

BACKENDS = ("hf", "static", "vllm")
# Where a QLoRA adapter is evaluated: on the bf16 base, or on the 4-bit base it was trained on (the
# authors' way; its layers dequantized to their exact 4-bit values: ModelHolder).
QLORA_BASES = ("merged", "quantized")


@dataclass
class GenerationSettings:
    backend: str = "hf"
    max_new_tokens: int = 256
    batch_size: int = 64
    dtype: str = "bfloat16"
    qlora_base: str = "merged"
    # Bit-for-bit repeatable on one GPU (`safetydrift.determinism`): the static engine's steps
    # run eager, without CUDA graphs.
    deterministic: bool = False
    # The static engine moves the rows still running into a smaller batch once they fit in half
    # of it (`fastpaths.decoding`); off only to measure what that saves (the benchmarks).
    compact_rows: bool = True

    @classmethod
    def from_params(cls, values: dict[str, Any]) -> GenerationSettings:
        settings = cls(
            **{
                k: values[k]
                for k in ("backend", "max_new_tokens", "batch_size", "dtype", "qlora_base")
                if k in values
            },
            deterministic=boolean(values.get("deterministic", False), "generation.deterministic"),
        )
        if settings.deterministic and settings.backend == "vllm":
            raise ParamError(
                "params.yaml: `generation.deterministic` needs the hf or static backend; vLLM "
                "schedules its batches at run time"
            )
        if settings.qlora_base not in QLORA_BASES:
            raise ParamError(
                f"params.yaml: `generation.qlora_base` must be one of {QLORA_BASES}, "
                f"got {settings.qlora_base!r}"
            )
        if settings.backend not in BACKENDS:
            raise ParamError(
                f"params.yaml: `generation.backend` must be one of {BACKENDS}, "
                f"got {settings.backend!r}"
            )
        if settings.max_new_tokens <= 0 or settings.batch_size <= 0:
            raise ParamError(
                "params.yaml: `generation.max_new_tokens` and `generation.batch_size` must be > 0"
            )
        return settings


def hf_only(settings: GenerationSettings) -> GenerationSettings:
    return replace(settings, backend="hf")
