"""Chat training data: reading conversations and prompt/completion rows from jsonl, parquet and
json, naming bad rows, mixing exact seeded samples, and counting what `train.max_length` cuts."""

from __future__ import annotations

import json

import pytest
from chat_models import build_tiny_llama
from conftest import FIXTURES, SHARED_DATA

from safetydrift.chat_data import (
    ChatDataSpec,
    ChatSource,
    data_kind,
    load_chat_source,
    prepare_chat_data,
    read_conversations,
)
from safetydrift.data.mtpref import TranslationPair
from safetydrift.data.sources import DataError
from safetydrift.files import read_jsonl
from safetydrift.models import ModelError, PromptFormat, load_tokenizer
from safetydrift.params import ParamError
from safetydrift.training.examples import (
    check_method,
    encode_conversation,
    encode_example,
    fit_to_max_length,
    sft_rows,
)

CHAT = FIXTURES / "chat-tiny.jsonl"
BENIGN = FIXTURES / "chat-benign-tiny.jsonl"
ALPACA_COLUMNS = {"prompt": ["instruction", "input"], "completion": "output"}
BIANCHI = SHARED_DATA / "safety-tuned-llamas" / "safety_only_data_Instructions.json"


def spec(**values):
    return ChatDataSpec.from_params({"kind": "chat", "source": str(CHAT), **values})


def mixed(n, seed, source=BENIGN):
    entry = {
        "source": str(source),
        "format": "prompt-completion",
        "columns": ALPACA_COLUMNS,
        "n": n,
        "seed": seed,
    }
    return spec(mix=[entry])


def write_jsonl_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Reading


def test_messages_rows_are_read_as_they_are():
    conversations, stats = load_chat_source(spec().main)
    rows = read_jsonl(CHAT)
    assert [c.messages for c in conversations] == [r["messages"] for r in rows]
    assert [c.row for c in conversations] == list(range(1, len(rows) + 1))
    assert stats["rows_read"] == stats["rows_used"] == len(rows) == 10
    assert len(stats["sha256"]) == 64


def test_prompt_completion_columns_become_a_user_turn_and_the_answer():
    source = mixed(1, 0).mix[0]
    conversations, _ = load_chat_source(ChatSource(**{**source.__dict__, "n": None}))
    # Alpaca's instruction and its input, joined by a blank line; an empty input adds nothing.
    assert conversations[0].messages == [
        {"role": "user", "content": "Give a word that rhymes with cat."},
        {"role": "assistant", "content": "Hat."},
    ]
    assert conversations[1].messages[0]["content"] == "Translate this word into English.\n\nHund"
    assert all(c.origin == "mix[0]" for c in conversations)


def test_prompt_completion_with_default_column_names_and_turn_lists(tmp_path):
    path = write_jsonl_rows(
        tmp_path / "pc.jsonl",
        [
            {"prompt": "Hi", "completion": "Hello."},
            # TRL's conversational prompt-completion: lists of turns.
            {
                "prompt": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                ],
                "completion": [{"role": "assistant", "content": "Hey."}],
            },
        ],
    )
    main = ChatDataSpec.from_params({"source": str(path), "format": "prompt-completion"}).main
    conversations, _ = load_chat_source(main)
    assert conversations[0].messages[-1] == {"role": "assistant", "content": "Hello."}
    assert [t["role"] for t in conversations[1].messages] == ["system", "user", "assistant"]


def test_parquet_reads_the_same_conversations_as_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = read_jsonl(CHAT)
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    from_parquet, _ = load_chat_source(spec(source=str(path)).main)
    from_jsonl, _ = load_chat_source(spec().main)
    assert [c.messages for c in from_parquet] == [c.messages for c in from_jsonl]


def test_a_json_array_with_mapped_columns_reads_the_safety_data():
    if not BIANCHI.exists():
        pytest.skip(f"{BIANCHI} is not beside the checkout")
    conversations, stats = load_chat_source(mixed(5, 3, BIANCHI).mix[0])
    assert stats["rows_read"] == 2483 and stats["rows_used"] == len(conversations) == 5
    assert all([t["role"] for t in c.messages] == ["user", "assistant"] for c in conversations)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "hi"}, r"row 2: no column `messages`.*present: text"),
        ({"messages": "hi"}, r"row 2: `messages` must be a non-empty list"),
        ({"messages": [{"role": "user"}]}, r"row 2: `messages\[0\]` is not a \{role, content\}"),
        (
            {"messages": [{"role": "bot", "content": "x"}]},
            r"row 2: `messages\[0\]` has role 'bot'",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}]},
            r"row 2: `messages` must end with the assistant's non-empty answer",
        ),
        (
            {"messages": [{"role": "assistant", "content": "x"}]},
            r"row 2: `messages` has no user turn",
        ),
        (
            {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]},
            r"row 2: `messages\[0\].content` is not text",
        ),
    ],
)
def test_a_bad_row_is_named_by_file_and_row(tmp_path, row, message):
    good = read_jsonl(CHAT)[0]
    path = write_jsonl_rows(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError, match=f"{path}, {message}"):
        load_chat_source(spec(source=str(path)).main)


def test_a_bad_line_and_a_bad_json_file_are_named(tmp_path):
    jsonl = tmp_path / "broken.jsonl"
    jsonl.write_text(CHAT.read_text().splitlines()[0] + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{jsonl}, line 2: not valid JSON"):
        load_chat_source(spec(source=str(jsonl)).main)
    array = tmp_path / "rows.json"
    array.write_text('[{"instruction": "a", "output": "b"}, 3]', encoding="utf-8")
    entry = {"source": str(array), "format": "prompt-completion", "columns": ALPACA_COLUMNS}
    with pytest.raises(DataError, match=rf"{array}, row 2: expected an object"):
        load_chat_source(ChatDataSpec.from_params(entry).main)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"source": None}, r"`train_data.source` must name"),
        ({"format": "alpaca"}, r"`train_data.format` must be one of messages, prompt-completion"),
        ({"mix": [{"source": str(BENIGN)}]}, r"`train_data.mix\[0\].n` is missing"),
        ({"mix": [{"source": str(BENIGN), "n": 0}]}, r"`train_data.mix\[0\].n` must be a positive"),
        ({"mix": {"source": str(BENIGN)}}, r"`train_data.mix` must be a list"),
    ],
)
def test_bad_params_are_named(values, message):
    with pytest.raises(DataError, match=message):
        spec(**values)


def test_the_kind_is_mtpref_unless_chat_is_asked_for():
    assert data_kind(None) == data_kind({}) == "mtpref"
    assert data_kind({"kind": "chat"}) == "chat"
    with pytest.raises(DataError, match=r"`train_data.kind` must be one of mtpref, chat"):
        data_kind({"kind": "alpaca"})


# --------------------------------------------------------------------------------------------
# Mixing


def test_mixing_adds_exactly_n_rows_after_the_main_source(tmp_path):
    stats = prepare_chat_data(mixed(5, 0), tmp_path)
    conversations = read_conversations(tmp_path / "train.jsonl")
    assert len(conversations) == stats["train_rows"] == 10 + 5
    assert [c.origin for c in conversations] == ["train_data"] * 10 + ["mix[0]"] * 5
    assert stats["sources"]["mix[0]"] == {
        **stats["sources"]["mix[0]"],
        "rows_read": 12,
        "rows_used": 5,
        "n": 5,
        "seed": 0,
    }
    # Rows without replacement: five distinct rows of the benign file.
    assert len({c.row for c in conversations[10:]}) == 5


def test_mixing_is_seeded_and_deterministic(tmp_path):
    first, again, other = tmp_path / "first", tmp_path / "again", tmp_path / "other"
    prepare_chat_data(mixed(6, 1), first)
    prepare_chat_data(mixed(6, 1), again)
    prepare_chat_data(mixed(6, 2), other)
    assert (first / "train.jsonl").read_bytes() == (again / "train.jsonl").read_bytes()
    assert (first / "stats.json").read_bytes() == (again / "stats.json").read_bytes()
    rows = lambda d: [c.row for c in read_conversations(d / "train.jsonl")][10:]  # noqa: E731
    assert rows(first) != rows(other)


def test_mixing_more_rows_than_the_source_has_is_refused():
    with pytest.raises(DataError, match=r"`train_data.mix\[0\].n` is 13, but .* has 12 rows"):
        prepare_chat_data(mixed(13, 0), FIXTURES / "never-written")


def test_the_main_source_can_be_sampled_too(tmp_path):
    stats = prepare_chat_data(spec(n=4, seed=7), tmp_path)
    assert stats["train_rows"] == 4 and stats["sources"]["train_data"]["rows_read"] == 10


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"no-such\.jsonl: no such file"):
        load_chat_source(spec(source=str(tmp_path / "no-such.jsonl")).main)


# --------------------------------------------------------------------------------------------
# Encoding and truncation


@pytest.fixture(scope="module")
def llama_tokenizer(tmp_path_factory):
    return load_tokenizer(build_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


def test_one_turn_encodes_as_a_translation_pair_does(llama_tokenizer):
    chat = PromptFormat()
    messages = [{"role": "user", "content": "Hund"}, {"role": "assistant", "content": "Dog."}]
    pair = TranslationPair("german", "Hund", "Dog.", "Cat.")
    assert encode_conversation(chat, llama_tokenizer, messages) == encode_example(
        pair, llama_tokenizer, chat
    )


def test_a_conversation_trains_on_its_last_answer_only(llama_tokenizer):
    conversation = read_conversations(CHAT)[-1]  # two exchanges
    prompt, completion = encode_conversation(PromptFormat(), llama_tokenizer, conversation.messages)
    whole = llama_tokenizer.apply_chat_template(conversation.messages, tokenize=False)
    assert prompt + completion == llama_tokenizer(whole, add_special_tokens=False)["input_ids"]
    assert llama_tokenizer.decode(completion).strip() == "A sparrow. </s>"
    assert "A robin." in llama_tokenizer.decode(prompt)


def test_a_system_turn_needs_a_chat_template(llama_tokenizer):
    conversation = read_conversations(CHAT)[-2]  # system, user, assistant
    with pytest.raises(ModelError, match=r"`prompt.format` 'chatml' holds one user turn only"):
        encode_conversation(PromptFormat("chatml"), llama_tokenizer, conversation.messages)


def rows_of(lengths_and_prompts):
    return [
        {"input_ids": [1] * length, "completion_mask": [0] * prompt + [1] * (length - prompt)}
        for length, prompt in lengths_and_prompts
    ]


def test_truncation_counts_examples_longer_than_max_length():
    rows = rows_of([(10, 4), (12, 4), (13, 12), (8, 8)])
    kept, truncation = fit_to_max_length(rows, 11)
    # 12 and 13 tokens are longer than 11; the 13-token one has no answer token within 11.
    assert truncation.as_dict() == {
        "max_length": 11,
        "examples": 4,
        "truncated_examples": 2,
        "dropped_examples": 1,
        "longest_example_tokens": 13,
    }
    assert kept == [rows[0], rows[1], rows[3]]
    kept, unlimited = fit_to_max_length(rows, None)
    assert kept == rows and unlimited.truncated == unlimited.dropped == 0


def test_truncation_counts_the_prompt_format_tokens(llama_tokenizer):
    conversations = read_conversations(CHAT)
    rows = sft_rows(conversations, llama_tokenizer, PromptFormat())
    # Independently of our encoding: the chat template's whole rendering, in tokens.
    lengths = [
        len(llama_tokenizer.apply_chat_template(c.messages, return_dict=True)["input_ids"])
        for c in conversations
    ]
    assert [len(row["input_ids"]) for row in rows] == lengths
    limit = sorted(lengths)[len(lengths) // 2]
    _, truncation = fit_to_max_length(rows, limit)
    assert truncation.truncated == sum(length > limit for length in lengths) > 0


def test_chat_data_refuses_dpo_naming_the_params():
    check_method("chat", "qlora")
    check_method("mtpref", "dpo")
    with pytest.raises(ParamError, match=r"`train_data.kind` is chat.*`grid.methods` holds dpo"):
        check_method("chat", "dpo")
