"""What a train stage trains on: MT-Pref translation pairs (`train_data.kind: mtpref`) or chat
conversations (`chat`), tokenized into TRL's rows (`sft_rows`, `dpo_rows`), and how many
examples `train.max_length` cuts.

A conversation is encoded as the prompt (every turn before the last, through `prompt.format` with
the assistant's turn opened) and the completion (the last, the assistant's answer, with its end
of turn): TRL's prompt-completion split, with the loss on the completion only. A conversation of
one user turn and its answer is encoded exactly as an MT-Pref pair is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetydrift.chat_data import CHAT_DIR, Conversation, read_conversations
from safetydrift.data.mtpref import TranslationPair, read_pairs
from safetydrift.models import PromptFormat, split_completion
from safetydrift.params import ParamError

TrainingExample = TranslationPair | Conversation
TRAIN_FILES = {"mtpref": Path("data/mtpref/train.jsonl"), "chat": CHAT_DIR / "train.jsonl"}
# Methods that train on one answer per prompt; DPO needs a chosen and a rejected answer.
CHAT_METHODS = ("full", "lora", "qlora")


def train_file(kind: str) -> Path:
    return TRAIN_FILES[kind]


def check_method(kind: str, method: str) -> None:
    """Refuse, before any loading, a method that the kind of data cannot train."""
    if kind == "chat" and method not in CHAT_METHODS:
        raise ParamError(
            f"params.yaml: `train_data.kind` is chat, whose conversations have one answer each, "
            f"but `grid.methods` holds {method}, which trains on (chosen, rejected) pairs; "
            f"chat data trains {', '.join(CHAT_METHODS)}"
        )


def read_training_examples(kind: str, path: Path | None = None) -> list[TrainingExample]:
    path = path or train_file(kind)
    if kind == "chat":
        return list(read_conversations(path))
    if path.exists() and not path.read_text(encoding="utf-8").strip():
        raise ParamError(
            f"{path} is empty: `train_data.kind` is mtpref but `data.mtpref.source` is null "
            "(no translation data); set `train_data.kind: chat` or a `data.mtpref.source`"
        )
    return list(read_pairs(path))


def encode_conversation(
    prompt_format: PromptFormat, tokenizer, messages: Sequence[dict[str, str]]
) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of a conversation whose last turn is the answer."""
    *context, answer = messages
    if len(context) == 1 and context[0]["role"] == "user":
        return prompt_format.encode_exchange(tokenizer, context[0]["content"], answer["content"])
    # Several turns, or a system turn: only a chat template renders them (render_prompt names
    # `prompt.format` otherwise).
    prompt_ids = prompt_format.encode_prompt(tokenizer, list(context))
    extra = {} if prompt_format.date_string is None else {"date_string": prompt_format.date_string}
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, **extra)
    return split_completion(prompt_ids, tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_example(
    example: TrainingExample, tokenizer, prompt_format: PromptFormat
) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of one SFT example: a pair's `chosen` answer to its bare
    source text, or a conversation's last turn."""
    if isinstance(example, TranslationPair):
        return prompt_format.encode_exchange(tokenizer, example.source_text, example.chosen)
    return encode_conversation(prompt_format, tokenizer, example.messages)


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
    """Tokenized preference rows: the prompt ids that the chosen and the rejected exchange share,
    and each answer's ids after them."""
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


@dataclass
class Truncation:
    """How `train.max_length` met the examples, in tokens with the prompt format applied.

    `truncated`: examples longer than `max_length`, trained on their first `max_length` tokens.
    `dropped`: those whose prompt alone fills `max_length`, leaving no answer token to train on
    (TRL would drop them; they are left out before the steps and checkpoints are counted).
    """

    max_length: int | None
    examples: int
    truncated: int
    dropped: int
    longest: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_length": self.max_length,
            "examples": self.examples,
            "truncated_examples": self.truncated,
            "dropped_examples": self.dropped,
            "longest_example_tokens": self.longest,
        }


def fit_to_max_length(
    rows: Sequence[dict[str, Any]], max_length: int | None
) -> tuple[list[dict[str, Any]], Truncation]:
    """SFT rows (`input_ids`, `completion_mask`) that keep at least one answer token within
    `max_length`, and the count of those it cuts. No limit (`None`) cuts nothing."""
    kept, truncated, dropped = [], 0, 0
    for row in rows:
        length = len(row["input_ids"])
        if max_length is not None and length > max_length:
            truncated += 1
            if not any(row["completion_mask"][:max_length]):
                dropped += 1
                continue
        kept.append(row)
    longest = max((len(row["input_ids"]) for row in rows), default=0)
    return kept, Truncation(max_length, len(rows), truncated, dropped, longest)


def count_preference_truncation(
    rows: Sequence[dict[str, Any]], max_length: int | None
) -> Truncation:
    """DPO rows: an example is cut when its prompt with the longer of its answers exceeds
    `max_length`."""
    lengths = [
        len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))
        for row in rows
    ]
    truncated = 0 if max_length is None else sum(length > max_length for length in lengths)
    return Truncation(max_length, len(rows), truncated, 0, max(lengths, default=0))
