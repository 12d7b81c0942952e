"""The `paper` preset's fidelity to the authors' scripts (issue 21): their MT-Pref filter and split
row for row, their prompt string with one BOS, the end-of-turn mask, dated templates pinned, and
the deviations a report lists."""

import json
import random
import re
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import FIXTURES, SHARED_DATA, load_stage
from transformers import AutoTokenizer

from safetydrift.data.mtpref import TranslationPair, split_authors
from safetydrift.data.sources import DataError
from safetydrift.generation.checkpoints import Checkpoint, quantized_base
from safetydrift.generation.prompts import PromptSettings, encode_conversations
from safetydrift.generation.settings import GenerationSettings
from safetydrift.models import ModelError, PromptFormat
from safetydrift.paper import deviations, published_figures
from safetydrift.params import ParamError, load_params
from safetydrift.training.examples import dpo_rows, sft_rows
from safetydrift.training.settings import train_settings

ROOT = Path(__file__).resolve().parents[1]
STANDIN = SHARED_DATA / "mtpref-standin.jsonl"

# The authors' data-preparation script, as issue 21 quotes it.
THEIR_PATTERN = (
    r"Translate the following (\w+) source text to English:\s*\1:\s*(.*?)\s*English:\s*<\|im_end\|>"
)
THEIR_LANGUAGES = {
    "german", "spanish", "french", "portuguese", "italian", "dutch", "english", "catalan",
    "galician", "romanian", "polish", "czech", "slovak", "slovenian", "croatian", "bosnian",
    "serbian", "albanian", "latvian", "lithuanian", "estonian", "finnish", "hungarian", "danish",
    "swedish", "norwegian", "icelandic",
}  # fmt: skip


def their_split(examples, test_ratio=0.167, seed=42):
    random.seed(seed)
    by_language = defaultdict(list)
    for example in examples:
        by_language[example["source_language"]].append(example)
    train, test = [], []
    for rows in by_language.values():
        random.shuffle(rows)
        n_test = max(1, int(len(rows) * test_ratio))
        test.extend(rows[:n_test])
        train.extend(rows[n_test:])
    random.shuffle(train)
    random.shuffle(test)
    return train, test


def their_preparation(rows):
    kept = []
    for row in rows:
        match = re.search(THEIR_PATTERN, row["prompt"], re.DOTALL | re.IGNORECASE)
        if match and match.group(1).lower() in THEIR_LANGUAGES:
            kept.append(
                {
                    "source_language": match.group(1).lower(),
                    "source_text": match.group(2).strip(),
                    "chosen": row["chosen"],
                    "rejected": row["rejected"],
                }
            )
    return their_split(kept)


def tower(language: str, text: str, target: str = "English") -> str:
    return (
        f"<|im_start|>user\nTranslate the following {language} source text to {target}:\n"
        f"{language}: {text}\n{target}:<|im_end|>\n<|im_start|>assistant\n"
    )


def test_split_authors_replays_their_procedure_in_order():
    languages = ["german", "dutch", "french", "german", "dutch", "italian", "german"] * 7
    pairs = [
        TranslationPair(lang, f"text {i}", f"c{i}", f"r{i}") for i, lang in enumerate(languages)
    ]
    train, test = split_authors(pairs, 0.167, 42)
    their_train, their_test = their_split([p.as_row() for p in pairs])
    assert [p.as_row() for p in train] == their_train
    assert [p.as_row() for p in test] == their_test
    assert {p.source_language for p in test} == {"german", "dutch", "french", "italian"}


def mtpref_params(source: Path, **mtpref) -> dict:
    params = load_params(ROOT / "presets" / "smoke.yaml")
    params["data"]["mtpref"].update(
        {"source": str(source), "languages": "latin-script", "split": "authors", **mtpref}
    )
    return params


def test_prepare_mtpref_keeps_what_their_script_keeps(tmp_path):
    rows = [
        {"prompt": tower(lang, f"{lang} sentence {i}"), "chosen": f"c{i}", "rejected": f"r{i}"}
        for i, lang in enumerate(["Dutch", "German", "Russian", "Catalan", "Dutch", "German"] * 4)
    ]
    rows.append({"prompt": tower("English", "Hallo", "German"), "chosen": "x", "rejected": "y"})
    source = tmp_path / "mtpref.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    stats = load_stage("prepare_mtpref").main(mtpref_params(source), tmp_path / "out")
    their_train, their_test = their_preparation(rows)
    assert read_rows(tmp_path / "out" / "train.jsonl") == their_train
    assert read_rows(tmp_path / "out" / "test.jsonl") == their_test
    assert set(stats["kept_by_language"]) == {"dutch", "german", "catalan"}
    assert stats["dropped_by_reason"] == {
        "prompt_not_matched_into_english": 1,
        "source_language_not_latin_script": 4,
    }


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.skipif(not STANDIN.exists(), reason="the stand-in MT-Pref file is not here")
def test_prepare_mtpref_on_the_standin_is_their_split_row_for_row(tmp_path):
    stats = load_stage("prepare_mtpref").main(mtpref_params(STANDIN), tmp_path)
    their_train, their_test = their_preparation(read_rows(STANDIN))
    assert read_rows(tmp_path / "train.jsonl") == their_train
    assert read_rows(tmp_path / "test.jsonl") == their_test
    assert "dutch" in stats["train_by_language"] and "dutch" in stats["test_by_language"]


def test_the_hub_split_moved_out_of_split(tmp_path):
    params = mtpref_params(FIXTURES / "mtpref-tiny.jsonl", split="train")
    with pytest.raises(DataError, match="hub_split"):
        load_stage("prepare_mtpref").main(params, tmp_path)


@pytest.fixture
def bos_tokenizer(base_model_dir):
    """The tiny model's tokenizer with Llama-3's special tokens and a BOS it adds by itself."""
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
    tokenizer.add_special_tokens(
        {
            "bos_token": "<|begin_of_text|>",
            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        }
    )
    tokenizer.add_bos_token = True
    tokenizer.eos_token = "<|eot_id|>"
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id  # it adds its own BOS
    return tokenizer


def test_the_authors_string_is_encoded_with_one_bos(bos_tokenizer):
    authors = PromptFormat.from_params({"format": "authors-llama3"})
    conversation = [{"role": "user", "content": "Guten Morgen."}]
    [prompt_ids] = encode_conversations(bos_tokenizer, [conversation], authors)
    bos = bos_tokenizer.bos_token_id
    assert prompt_ids[0] == bos and prompt_ids.count(bos) == 1
    assert bos_tokenizer.decode(prompt_ids) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nGuten Morgen.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    pair = TranslationPair("german", "Guten Morgen.", "Good morning.", "Good tomorrow.")
    [row] = sft_rows([pair], bos_tokenizer, authors, train_on_eos=True)
    assert row["input_ids"][: len(prompt_ids)] == prompt_ids  # training sees what generation does
    assert row["input_ids"].count(bos) == 1
    [dpo] = dpo_rows([pair], bos_tokenizer, authors)
    assert dpo["prompt_ids"] == prompt_ids
    assert dpo["chosen_ids"][-1] == dpo["rejected_ids"][-1] == bos_tokenizer.eos_token_id


def test_the_final_end_of_turn_is_a_target_only_with_train_on_eos(bos_tokenizer):
    authors = PromptFormat.from_params({"format": "authors-llama3"})
    pair = TranslationPair("german", "Danke.", "Thank you.", "Thanks you.")
    [trained] = sft_rows([pair], bos_tokenizer, authors, train_on_eos=True)
    [masked] = sft_rows([pair], bos_tokenizer, authors, train_on_eos=False)
    eos = bos_tokenizer.eos_token_id
    assert trained["input_ids"] == masked["input_ids"] and trained["input_ids"][-1] == eos
    assert trained["completion_mask"][-1] == 1 and masked["completion_mask"][-1] == 0
    assert trained["completion_mask"][:-1] == masked["completion_mask"][:-1]
    answer = [
        t for t, bit in zip(masked["input_ids"], masked["completion_mask"], strict=True) if bit
    ]
    assert bos_tokenizer.decode(answer) == "Thank you."


def test_chatml_is_the_template_of_a_user_turn_without_a_system_block(base_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
    conversation = [{"role": "user", "content": "Bom dia."}]
    chatml = PromptFormat.from_params({"format": "chatml"})
    assert (
        chatml.render_prompt(tokenizer, conversation)
        == "<|im_start|>user\nBom dia.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert encode_conversations(tokenizer, [conversation], chatml) == encode_conversations(
        tokenizer, [conversation]
    )  # the tiny model's template has no default system prompt: the same ids
    with pytest.raises(ModelError, match="system_prompt"):
        chatml.render_prompt(tokenizer, [{"role": "system", "content": "s"}, *conversation])


DATED_TEMPLATE = (
    "{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}"
    "{%- endif %}<|im_start|>system\nToday Date: {{ date_string }}<|im_end|>\n"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def test_a_template_that_writes_the_date_must_be_pinned(base_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
    tokenizer.chat_template = DATED_TEMPLATE
    conversation = [{"role": "user", "content": "Hola."}]
    with pytest.raises(ModelError, match="date_string"):
        encode_conversations(tokenizer, [conversation], PromptFormat())
    pinned = PromptFormat.from_params({"format": "chat-template", "date_string": "26 Jul 2024"})
    [ids] = encode_conversations(tokenizer, [conversation], pinned)
    assert "Today Date: 26 Jul 2024" in tokenizer.decode(ids)


def test_a_format_string_needs_user_and_assistant():
    with pytest.raises(ModelError, match="prompt.format"):
        PromptFormat.from_params({"format": "<|user|>{user}"})
    own = PromptFormat.from_params({"format": "U: {user}\nA: {assistant}\n"})
    assert own.render_prompt(None, [{"role": "user", "content": "x"}]) == "U: x\nA: "


def test_the_base_suffix_goes_on_the_base_model_prompts_only():
    prompts = PromptSettings.from_params(
        load_params(ROOT / "presets" / "paper.yaml")["chrf"]["prompts"]
    )
    assert prompts.conversation("Hallo.", base=True)[-1]["content"] == "Hallo.!"
    assert prompts.conversation("Hallo.")[-1]["content"] == "Hallo."


def test_master_dtype_and_qlora_settings_come_from_params():
    params = load_params(ROOT / "presets" / "paper.yaml")
    assert train_settings(params, "full", 1e-4).master_dtype == "bfloat16"
    qlora = train_settings(params, "qlora", 1e-4)
    assert qlora.prepare_kbit and "gate_proj" in qlora.lora.target_modules
    assert qlora.train_on_eos is False and qlora.prompt_format.format == "authors-llama3"
    params["train"]["master_dtype"] = "float16"
    with pytest.raises(ParamError, match="master_dtype"):
        train_settings(params, "full", 1e-4)


def test_quantized_evaluation_of_qlora_adapters_needs_a_bitsandbytes_backend(tmp_path, monkeypatch):
    import bitsandbytes
    import torch

    settings = GenerationSettings.from_params({"backend": "hf", "qlora_base": "quantized"})
    adapter = Checkpoint("ckpt-025", 0.25, 1, tmp_path, "adapter", {"quant_type": "nf4"})
    # bitsandbytes 0.49+ runs 4-bit layers on the CPU too (tests/test_qlora_evaluation.py).
    assert quantized_base([adapter], settings) == {"quant_type": "nf4"}
    if not torch.cuda.is_available():
        monkeypatch.setattr(bitsandbytes, "supported_torch_devices", {"cuda"})
        with pytest.raises(ParamError, match="a CUDA GPU or with its CPU backend"):
            quantized_base([adapter], settings)
    merged = GenerationSettings.from_params({"qlora_base": "merged"})
    assert quantized_base([adapter], merged) is None
    with pytest.raises(ParamError, match="qlora_base"):
        GenerationSettings.from_params({"qlora_base": "4bit"})


def test_deviations_list_only_what_differs():
    assert deviations(load_params(ROOT / "presets" / "paper.yaml")) == []
    standin = deviations(load_params(ROOT / "presets" / "standin.yaml"))
    assert [d["key"] for d in standin] == ["model.source", "data.mtpref.source"]
    assert all(d["source"] for d in standin)
    smoke = {d["key"]: d for d in deviations(load_params(ROOT / "presets" / "smoke.yaml"))}
    assert smoke["data.mtpref.split"]["ours"] == "datasets"
    assert smoke["train.master_dtype"] == {
        "key": "train.master_dtype",
        "authors": "bfloat16",
        "ours": "float32",
        "source": smoke["train.master_dtype"]["source"],
    }


def test_published_figures_are_package_data():
    figures = published_figures()
    assert {f["metric"] for f in figures} == {"refusal", "chrf"}
    assert {
        "cell": "base",
        "checkpoint": "ckpt-000",
        "metric": "refusal",
        "value": 0.979,
    } in figures
