"""The prompts a measurement asks: the rows chosen (`subset`), each framed as a conversation
(system prompt, prefix, suffix; `PromptSettings`) and encoded as `prompt.format` renders it (the
text training encodes too)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from safetydrift.models import PromptFormat
from safetydrift.params import ParamError


@dataclass
class PromptSettings:
    """How a measurement's prompts are framed: the studies' options."""

    suffix: str = ""  # the seed authors appended "!" to every AdvBench request
    # after `suffix`, for the base model only: the authors' chrF prompts of the base had a "!"
    base_suffix: str = ""
    prefix: str = ""  # e.g. the ENAIS identity-shifting persona, before the user's request
    system_prompt: str | None = None
    subset: int | None = None  # a fixed-seed sample of N prompts
    subset_seed: int = 0

    @classmethod
    def from_params(cls, values: dict[str, Any] | None) -> PromptSettings:
        values = values or {}
        settings = cls(**{k: values[k] for k in cls.__dataclass_fields__ if k in values})
        if settings.subset is not None and settings.subset <= 0:
            raise ParamError(f"params.yaml: a prompts `subset` must be > 0, got {settings.subset}")
        return settings

    def select(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.subset is None or self.subset >= len(rows):
            return list(rows)
        chosen = sorted(random.Random(self.subset_seed).sample(range(len(rows)), self.subset))
        return [rows[i] for i in chosen]

    def conversation(self, text: str, base: bool = False) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        suffix = self.suffix + (self.base_suffix if base else "")
        messages.append({"role": "user", "content": f"{self.prefix}{text}{suffix}"})
        return messages


def encode_conversations(
    tokenizer,
    conversations: Sequence[list[dict[str, str]]],
    prompt_format: PromptFormat | None = None,
) -> list[list[int]]:
    """Prompt ids as `prompt_format` renders them (the model's chat template by default)."""
    prompt_format = prompt_format or PromptFormat()
    prompt_format.check(tokenizer)
    return [prompt_format.encode_prompt(tokenizer, c) for c in conversations]
