"""The engines that decode greedily from a loaded model: `hf` (transformers' `generate` in
length-sorted, left-padded batches; always works) and `static` (our static-cache decode loop with
CUDA graphs, `safetydrift.fastpaths.decoding`, where the installed libraries are verified for it).
Each returns, per prompt, the new token ids up to the end of the turn and why it stopped.

torch, transformers and `safetydrift.fastpaths.decoding` (which imports both at its top) are
imported inside the engines' `generate`, for their import cost (~2 s on this project's 2-core
machine): the judge modules and `safetydrift check` import this module before they check their
inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from safetydrift.compat import fast_path_verified
from safetydrift.generation.settings import GenerationSettings
from safetydrift.models import ModelError
from safetydrift.params import ParamError


class HFEngine:
    """transformers' `generate`, greedy, in length-sorted batches with left padding."""

    name = "hf"

    def __init__(self, tokenizer, settings: GenerationSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings

    def generate(self, model, prompt_ids: Sequence[list[int]]) -> list[tuple[list[int], str]]:
        # The import cost: see the module's docstring.
        import torch
        from transformers import GenerationConfig

        eos = eos_token_ids(self.tokenizer, model)
        # A fresh config: the model's own may sample or penalise repetition; the study is greedy.
        greedy = GenerationConfig(
            do_sample=False,
            max_new_tokens=self.settings.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
        results: list[tuple[list[int], str]] = [([], "")] * len(prompt_ids)
        pad = self.tokenizer.pad_token_id
        device = next(model.parameters()).device
        for start in range(0, len(order), self.settings.batch_size):
            batch = order[start : start + self.settings.batch_size]
            width = max(len(prompt_ids[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                tokens = prompt_ids[index]
                ids[row, width - len(tokens) :] = torch.tensor(tokens)
                mask[row, width - len(tokens) :] = 1
            with torch.inference_mode():
                output = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=greedy,
                )
            for row, index in enumerate(batch):
                results[index] = split_at_stop(output[row, width:].tolist(), eos)
        return results


def split_at_stop(tokens: list[int], eos: Sequence[int]) -> tuple[list[int], str]:
    for position, token in enumerate(tokens):
        if token in eos:
            return tokens[:position], "stop"
    return tokens, "length"


def eos_token_ids(tokenizer, model) -> list[int]:
    """Every id that ends a turn: the generation config's and the tokenizer's."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if value is None:
            continue
        for token in value if isinstance(value, list) else [value]:
            if token not in ids:
                ids.append(int(token))
    if not ids:
        raise ModelError("the model and tokenizer name no end-of-sequence token")
    return ids


class StaticEngine:
    """Our static-cache decode loop (CUDA graphs on a GPU), reused across checkpoints."""

    name = "static"

    def __init__(self, tokenizer, settings: GenerationSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self._decoder = None
        self._model = None

    def generate(self, model, prompt_ids: Sequence[list[int]]) -> list[tuple[list[int], str]]:
        # The import cost: see the module's docstring.
        from safetydrift.fastpaths.decoding import StaticCacheDecoder

        if self._decoder is None or self._model is not model:
            self._decoder = StaticCacheDecoder(
                model,
                eos_token_ids=eos_token_ids(self.tokenizer, model),
                pad_token_id=self.tokenizer.pad_token_id,
                max_new_tokens=self.settings.max_new_tokens,
                max_batch_size=self.settings.batch_size,
                # A captured graph replays the same kernels, but whether each replay is
                # bit-stable has not been measured: deterministic runs take eager steps.
                use_cuda_graphs=False if self.settings.deterministic else None,
                compact_rows=self.settings.compact_rows,
            )
            self._model = model
        return [(d.token_ids, d.finish_reason) for d in self._decoder.decode(prompt_ids)]


def build_engine(tokenizer, settings: GenerationSettings):
    if settings.backend == "hf":
        return HFEngine(tokenizer, settings)
    if settings.backend == "static":
        if fast_path_verified("static-decoding"):
            return StaticEngine(tokenizer, settings)
        return HFEngine(tokenizer, settings)
    raise ParamError(
        "params.yaml: `generation.backend: vllm` is handled by generate_for_checkpoints' vLLM path"
    )
