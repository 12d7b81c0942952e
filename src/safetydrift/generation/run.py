"""A whole generation stage: every checkpoint of a cell on one set of prompts, the base model and
tokenizer loaded once, each checkpoint's responses yielded with the seconds spent loading and
generating (`generate_for_checkpoints`); with the `vllm` backend, vLLM does the same.

vLLM is an optional dependency (`safetydrift[vllm]`), imported only when the backend asks for it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetydrift.determinism import deterministic_mode
from safetydrift.generation.checkpoints import Checkpoint, ModelHolder, quantized_base
from safetydrift.generation.engines import build_engine
from safetydrift.generation.prompts import encode_conversations
from safetydrift.generation.settings import GenerationSettings, hf_only
from safetydrift.models import PromptFormat, load_tokenizer
from safetydrift.params import ParamError


@dataclass
class CheckpointGenerations:
    checkpoint: Checkpoint
    rows: list[dict[str, Any]]
    seconds: float  # generating (for the first checkpoint, graph capture included)
    load_seconds: float  # loading its weights; for the first, the tokenizer and base model too
    engine: str  # the engine that ran: `static` falls back to `hf` on unverified libraries


def import_libraries(adapters: bool) -> None:
    """Import what generating needs (torch, transformers' models, PEFT for adapters) now, so that a
    stage reports its imports apart from its loading: in a fresh process they cost more."""
    import torch  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    if adapters:
        import peft  # noqa: F401


def generate_for_checkpoints(
    base_dir: Path,
    checkpoints: Sequence[Checkpoint],
    conversations: Sequence[list[dict[str, str]]],
    ids: Sequence[Any],
    settings: GenerationSettings,
    device: str,
    prompt_format: PromptFormat | None = None,
):
    """Yield each checkpoint's generations (`id`, `prompt`, `response`, counts, finish reason).

    With `settings.deterministic` everything, model loading included, runs in deterministic
    mode (greedy decoding draws no random numbers; the seed is fixed all the same).
    """
    with deterministic_mode(seed=0, enabled=settings.deterministic):
        yield from _generate(
            base_dir, checkpoints, conversations, ids, settings, device, prompt_format
        )


def _generate(base_dir, checkpoints, conversations, ids, settings, device, prompt_format):
    quantization = quantized_base(checkpoints, settings)
    if settings.backend == "vllm":
        yield from _generate_vllm(
            base_dir, checkpoints, conversations, ids, settings, prompt_format
        )
        return
    loading = time.perf_counter()
    tokenizer = load_tokenizer(base_dir)
    holder = ModelHolder(base_dir, settings.dtype, device, quantization)
    # The static decoder runs a QLoRA adapter on its 4-bit base once the base's layers are
    # dequantized (ModelHolder); not on bitsandbytes' 4-bit layers themselves.
    engine = build_engine(tokenizer, hf_only(settings) if holder.keeps_4bit_layers else settings)
    prompt_ids = encode_conversations(tokenizer, conversations, prompt_format)
    for checkpoint in checkpoints:
        model = holder.activate(checkpoint)
        started = time.perf_counter()
        load_seconds = started - loading
        outputs = engine.generate(model, prompt_ids)
        seconds = time.perf_counter() - started
        responses = tokenizer.batch_decode(
            [tokens for tokens, _ in outputs], skip_special_tokens=True
        )
        rows = [
            {
                "id": row_id,
                "prompt": conversation[-1]["content"],
                "response": response,
                "new_tokens": len(tokens),
                "finish_reason": reason,
            }
            for row_id, conversation, response, (tokens, reason) in zip(
                ids, conversations, responses, outputs, strict=True
            )
        ]
        yield CheckpointGenerations(checkpoint, rows, seconds, load_seconds, engine.name)
        loading = time.perf_counter()


def _generate_vllm(base_dir, checkpoints, conversations, ids, settings, prompt_format=None):
    try:  # vLLM is optional: `pip install 'safetydrift[vllm]'`
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise ParamError(
            "params.yaml: `generation.backend` is vllm, but vLLM is not installed "
            "(pip install 'safetydrift[vllm]'), or use the hf backend"
        ) from None
    sampling = SamplingParams(temperature=0.0, max_tokens=settings.max_new_tokens)
    # The prompts as token ids, so that vLLM decodes exactly what the other engines do.
    prompts = [
        {"prompt_token_ids": ids_}
        for ids_ in encode_conversations(load_tokenizer(base_dir), conversations, prompt_format)
    ]
    has_adapters = any(c.kind == "adapter" for c in checkpoints)
    llm = None
    for number, checkpoint in enumerate(checkpoints, start=1):
        loading = time.perf_counter()
        lora = None
        if checkpoint.kind == "adapter":
            lora = LoRARequest(checkpoint.label, number, str(checkpoint.path))
            model_path = base_dir
        else:
            model_path = checkpoint.path
        if llm is None or checkpoint.kind == "model":
            llm = LLM(model=str(model_path), dtype=settings.dtype, enable_lora=has_adapters, seed=0)
        started = time.perf_counter()
        outputs = llm.generate(prompts, sampling, lora_request=lora, use_tqdm=False)
        rows = [
            {
                "id": row_id,
                "prompt": conversation[-1]["content"],
                "response": out.outputs[0].text,
                "new_tokens": len(out.outputs[0].token_ids),
                "finish_reason": out.outputs[0].finish_reason,
            }
            for row_id, conversation, out in zip(ids, conversations, outputs, strict=True)
        ]
        yield CheckpointGenerations(
            checkpoint, rows, time.perf_counter() - started, started - loading, "vllm"
        )
