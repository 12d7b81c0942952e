"""Tiny random Gemma-3 and Llama chat models for the chat presets' tests, built (no download)
from transformers' config classes: the fixture tokenizer given each family's special tokens, and
each family's chat template as its hub tokenizer carries it (Gemma 3's turns, Llama 2's [INST]).
Like tests/fixtures/tiny-chat-model, a directory holds the config and tokenizer only: stages
build the weights from the config (`model.init: random`)."""

from __future__ import annotations

from pathlib import Path

from conftest import TINY_MODEL

# google/gemma-3-1b-it's template (tokenizer_config.json), text turns only.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    '{%- set first_user_prefix = "" -%}'
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

# meta-llama/Llama-2-7b-chat-hf's template (tokenizer_config.json).
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

SIZES = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def _tokenizer(special_tokens: dict, chat_template: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TINY_MODEL))
    tokenizer.add_special_tokens(special_tokens)
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_gemma3(out: Path) -> Path:
    """Gemma 3's text model (Gemma3ForCausalLM): a sliding-window layer and a global one, and
    generation stopping at `<eos>` or `<end_of_turn>`, as gemma-3-1b-it's config has it."""
    from transformers import Gemma3TextConfig

    tokenizer = _tokenizer(
        {
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "pad_token": "<pad>",
            "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
        },
        GEMMA3_CHAT_TEMPLATE,
    )
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    Gemma3TextConfig(
        vocab_size=len(tokenizer),
        head_dim=16,
        sliding_window=32,
        layer_types=["sliding_attention", "full_attention"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")],
        pad_token_id=tokenizer.pad_token_id,
        **SIZES,
    ).save_pretrained(out)
    return out


def build_tiny_llama(out: Path) -> Path:
    """Llama's architecture (LlamaForCausalLM) with Llama 2's `<s>`/`</s>` tokens and template."""
    from transformers import LlamaConfig

    tokenizer = _tokenizer(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, LLAMA2_CHAT_TEMPLATE
    )
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **SIZES,
    ).save_pretrained(out)
    return out
