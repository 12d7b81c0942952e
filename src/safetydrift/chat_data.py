"""Chat training data (`train_data.kind: chat`): the user's conversations, optionally mixed with
a fixed-seed sample of other data sets, normalized into one `messages` form.

A source is a local `.jsonl`, `.parquet` or `.json` (an array of objects) file, or a hub id
(pinned by `revision`). Its rows are either conversations (`format: messages`: a list of
`{role, content}` turns, as TRL's conversational format) or `format: prompt-completion` rows
whose columns `columns.prompt` (one column, or several joined by a blank line, as Alpaca-style
`instruction` + `input`) and `columns.completion` hold the user turn and the answer. A prompt or
completion that is itself a list of turns is taken as those turns. Every conversation ends with
the assistant's answer, the turn that training puts its loss on.

`mix: [{source, n, seed, ...}]` adds exactly `n` rows of each mixed source, sampled without
replacement by `random.Random(seed)`: the ENAIS attacks' 50 normal examples, or Bianchi et al.'s
safety data as a defence. The same params give the same rows in the same order.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetydrift.data.sources import (
    DataError,
    Source,
    read_source,
    resolve_hub_revision,
    sha256_file,
)
from safetydrift.files import read_jsonl, write_json, write_jsonl
from safetydrift.params import choice

KINDS = ("mtpref", "chat")
# Where `prepare_train_data` writes the chat kind's train.jsonl and stats.json; the mtpref kind's
# pairs stay where `prepare_mtpref` writes them (data/mtpref), as before there was a choice.
CHAT_DIR = Path("data/chat")
FORMATS = ("messages", "prompt-completion")
ROLES = ("system", "user", "assistant")
PARAM = "train_data"


@dataclass
class Conversation:
    """One training example: its turns, the last the assistant's answer, and where it came from
    (`train_data` for the main source, `mix[i]` for a mixed one) with its row number there."""

    messages: list[dict[str, str]]
    origin: str = PARAM
    row: int | None = None

    def as_row(self) -> dict[str, Any]:
        return {"messages": self.messages, "origin": self.origin, "row": self.row}


@dataclass
class ChatSource:
    """One source of conversations, as `train_data` or an entry of `train_data.mix` gives it."""

    key: str  # the params key that names it, for errors: `train_data` or `train_data.mix[0]`
    source: Source
    hub_split: str = "train"
    format: str = "messages"
    columns: dict[str, Any] = field(default_factory=dict)
    n: int | None = None  # rows sampled; None: every row
    seed: int = 0

    @classmethod
    def from_params(cls, values: Mapping[str, Any], key: str, sample_required: bool) -> ChatSource:
        if not isinstance(values, Mapping) or not values.get("source"):
            raise DataError(f"params.yaml: `{key}.source` must name a file or hub data set")
        data_format = choice(
            str(values.get("format", "messages")), FORMATS, f"{key}.format", DataError
        )
        columns = values.get("columns") or {}
        if not isinstance(columns, Mapping):
            raise DataError(f"params.yaml: `{key}.columns` must be a mapping, got {columns!r}")
        n = values.get("n")
        if n is None and sample_required:
            raise DataError(f"params.yaml: `{key}.n` is missing: how many rows to mix in")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise DataError(f"params.yaml: `{key}.n` must be a positive integer, got {n!r}")
        seed = values.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise DataError(f"params.yaml: `{key}.seed` must be an integer, got {seed!r}")
        return cls(
            key=key,
            source=Source(str(values["source"]), values.get("revision")),
            hub_split=str(values.get("hub_split", "train")),
            format=data_format,
            columns=dict(columns),
            n=n,
            seed=seed,
        )

    @property
    def origin(self) -> str:
        return self.key.removeprefix(f"{PARAM}.")


@dataclass
class ChatDataSpec:
    """`train_data` of the chat kind: the main source and the sources mixed into it."""

    main: ChatSource
    mix: list[ChatSource]

    @classmethod
    def from_params(cls, values: Mapping[str, Any]) -> ChatDataSpec:
        mix = values.get("mix") or []
        if not isinstance(mix, list):
            raise DataError(
                f"params.yaml: `{PARAM}.mix` must be a list of {{source, n, seed}}, got {mix!r}"
            )
        return cls(
            main=ChatSource.from_params(values, PARAM, sample_required=False),
            mix=[
                ChatSource.from_params(entry, f"{PARAM}.mix[{i}]", sample_required=True)
                for i, entry in enumerate(mix)
            ],
        )


def data_kind(values: Mapping[str, Any] | None) -> str:
    """`train_data.kind`: mtpref (the translation pairs, the default) or chat."""
    return choice((values or {}).get("kind", "mtpref"), KINDS, f"{PARAM}.kind", DataError)


# --------------------------------------------------------------------------------------------
# Reading and normalizing


def read_json_array(path: Path) -> list[dict[str, Any]]:
    """A `.json` file holding one array of objects (Bianchi et al.'s safety data)."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid UTF-8 ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(rows).__name__}")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}, row {number}: expected an object, got {type(row).__name__}")
    return rows


def read_rows(chat_source: ChatSource) -> list[dict[str, Any]]:
    source = chat_source.source
    if source.location.endswith(".json"):
        return read_json_array(Path(source.location).expanduser())
    try:
        return read_source(source, chat_source.hub_split, key=f"{chat_source.key}.source")
    except ValueError as error:  # io's line errors: one type for every bad input
        raise DataError(str(error)) from None


def _turns(value: Any, role: str, where: str, column: str) -> list[dict[str, str]]:
    """A prompt or completion cell as turns: text is one turn of `role`, a list is turns."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return check_messages(value, where, column, complete=False)
    raise DataError(f"{where}: `{column}` is {type(value).__name__}, not text or a list of turns")


def check_messages(
    messages: Any, where: str, column: str = "messages", complete: bool = True
) -> list[dict[str, str]]:
    """Turns of one row as `{role, content}` text; a complete conversation has a user turn and
    ends with the assistant's non-empty answer."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: `{column}` must be a non-empty list of {{role, content}} turns")
    turns = []
    for index, turn in enumerate(messages):
        if not isinstance(turn, Mapping) or "role" not in turn or "content" not in turn:
            raise DataError(f"{where}: `{column}[{index}]` is not a {{role, content}} turn")
        if turn["role"] not in ROLES:
            raise DataError(
                f"{where}: `{column}[{index}]` has role {turn['role']!r} "
                f"(expected one of {', '.join(ROLES)})"
            )
        if not isinstance(turn["content"], str):
            raise DataError(f"{where}: `{column}[{index}].content` is not text")
        turns.append({"role": str(turn["role"]), "content": turn["content"]})
    if complete:
        if not any(turn["role"] == "user" for turn in turns):
            raise DataError(f"{where}: `{column}` has no user turn")
        if turns[-1]["role"] != "assistant" or not turns[-1]["content"].strip():
            raise DataError(
                f"{where}: `{column}` must end with the assistant's non-empty answer "
                "(the turn that training puts its loss on)"
            )
    return turns


def _prompt_text(row: Mapping[str, Any], columns: Sequence[str], where: str) -> Any:
    if len(columns) == 1:
        return row[columns[0]]
    parts = []
    for column in columns:
        value = row[column]
        if value is None:
            continue
        if not isinstance(value, str):
            raise DataError(f"{where}: `{column}` is {type(value).__name__}, not text")
        if value.strip():
            parts.append(value.strip())
    return "\n\n".join(parts)


def normalize_rows(
    rows: Sequence[Mapping[str, Any]], chat_source: ChatSource
) -> list[Conversation]:
    """Every row as a Conversation; a bad row is an error naming the file (or hub id) and row."""
    location = chat_source.source.location
    if not rows:
        raise DataError(f"{location}: no rows (`{chat_source.key}.source`)")
    columns = chat_source.columns
    if chat_source.format == "messages":
        needed = [str(columns.get("messages", "messages"))]
    else:
        prompt = columns.get("prompt", "prompt")
        prompt_columns = [str(c) for c in (prompt if isinstance(prompt, list) else [prompt])]
        completion = str(columns.get("completion", "completion"))
        needed = [*prompt_columns, completion]
    conversations = []
    for number, row in enumerate(rows, start=1):
        where = f"{location}, row {number}"
        if missing := [c for c in needed if c not in row]:
            raise DataError(
                f"{where}: no column {', '.join(f'`{c}`' for c in missing)} "
                f"(`{chat_source.key}.format` is {chat_source.format}; present: "
                f"{', '.join(sorted(map(str, row)))}; map them with `{chat_source.key}.columns`)"
            )
        if chat_source.format == "messages":
            messages = check_messages(row[needed[0]], where, needed[0])
        else:
            messages = check_messages(
                _turns(_prompt_text(row, prompt_columns, where), "user", where, "prompt")
                + _turns(row[completion], "assistant", where, completion),
                where,
                "prompt + completion",
            )
        conversations.append(Conversation(messages, chat_source.origin, number))
    return conversations


def sample(conversations: Sequence[Conversation], chat_source: ChatSource) -> list[Conversation]:
    """Exactly `n` of the rows, drawn without replacement by `random.Random(seed)`, in the order
    drawn; every row, in file order, when `n` is not given."""
    if chat_source.n is None:
        return list(conversations)
    if chat_source.n > len(conversations):
        raise DataError(
            f"params.yaml: `{chat_source.key}.n` is {chat_source.n}, but "
            f"{chat_source.source.location} has {len(conversations)} rows"
        )
    indices = random.Random(chat_source.seed).sample(range(len(conversations)), chat_source.n)
    return [conversations[i] for i in indices]


def load_chat_source(chat_source: ChatSource) -> tuple[list[Conversation], dict[str, Any]]:
    """The sampled conversations of one source and what identifies them."""
    rows = read_rows(chat_source)
    chosen = sample(normalize_rows(rows, chat_source), chat_source)
    source = chat_source.source
    if source.is_local:
        identity = {"source": source.location, "sha256": sha256_file(Path(source.location))}
    else:
        identity = {
            "source": source.location,
            "revision": source.revision or "main",
            "resolved_revision": resolve_hub_revision(source.location, source.revision),
        }
    return chosen, {
        **identity,
        "format": chat_source.format,
        "rows_read": len(rows),
        "rows_used": len(chosen),
        "n": chat_source.n,
        "seed": chat_source.seed,
    }


def prepare_chat_data(spec: ChatDataSpec, out_dir: Path) -> dict[str, Any]:
    """Write `train.jsonl` (the main source's rows, then each mixed source's) and `stats.json`."""
    conversations, main_stats = load_chat_source(spec.main)
    sources = {spec.main.origin: main_stats}
    for chat_source in spec.mix:
        mixed, stats = load_chat_source(chat_source)
        conversations += mixed
        sources[chat_source.origin] = stats
    summary = {
        "kind": "chat",
        "train_rows": len(conversations),
        "sources": sources,
    }
    write_jsonl(out_dir / "train.jsonl", (c.as_row() for c in conversations))
    write_json(out_dir / "stats.json", summary)
    return summary


def read_conversations(path: Path) -> list[Conversation]:
    """The prepared chat training file, written by `prepare_chat_data`."""
    rows = read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: no conversations to train on")
    return [
        Conversation(
            check_messages(row.get("messages"), f"{path}, row {number}"),
            str(row.get("origin", PARAM)),
            row.get("row"),
        )
        for number, row in enumerate(rows, start=1)
    ]
