"""The `llama2-chat` preset (seed 001) through a real `dvc repro` in a fresh git repository, on a
tiny random Llama model built from its config; tests/chat_presets.py says what else a CPU test
replaces."""

from __future__ import annotations

import os

from chat_models import build_tiny_llama
from chat_presets import (
    assert_chrf_is_skipped,
    assert_every_checkpoint_judged,
    read,
    run_study,
    tiny_study,
)
from conftest import copy_project
from mlflow.tracking import MlflowClient
from transformers import AutoTokenizer

from safetydrift.chat_data import read_conversations


def test_llama2_chat_counts_the_examples_cut_at_max_length(tmp_path):
    (tmp_path / "project").mkdir()
    project = copy_project(tmp_path / "project")
    max_length = 50
    params = tiny_study(
        "llama2-chat",
        build_tiny_llama(tmp_path / "llama"),
        max_length=max_length,
        effective_batch_size=2,
        per_device_batch_size=2,
    )
    assert params["train_data"]["mix"] == []
    # This test is about the chat data and its truncation; the evaluation sets' stages (five more
    # processes here, asserted nowhere in this file) are tested on the smoke preset.
    params["evaluations"]["run"] = []
    run_study(project, params)
    cell = "lora-0.0002-42"
    assert read(project, "models/base/safetydrift_model.json")["architecture"] == (
        "LlamaForCausalLM"
    )
    # Counted independently: the chat template's whole rendering of each conversation.
    tokenizer = AutoTokenizer.from_pretrained(str(project / "models/base"))
    conversations = read_conversations(project / "data/chat/train.jsonl")
    tokens = lambda messages: len(  # noqa: E731
        tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"]
    )
    lengths = [tokens(c.messages) for c in conversations]
    expected = sum(length > max_length for length in lengths)
    # A prompt that fills max_length alone leaves no answer to train on: left out, and counted.
    dropped = sum(tokens(c.messages[:-1]) >= max_length for c in conversations)
    assert 0 < dropped < expected < len(lengths)
    training = read(project, f"models/{cell}/training.json")
    truncation = training["truncation"]
    assert truncation["truncated_examples"] == expected
    assert truncation["dropped_examples"] == dropped
    assert training["examples"] == len(lengths) - dropped
    assert training["steps"] == -(-(len(lengths) - dropped) // 2)
    assert truncation["max_length"] == max_length
    assert truncation["longest_example_tokens"] == max(lengths)
    adapter = read(project, f"models/{cell}/ckpt-100/adapter_config.json")
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (32, 32, 0.05)
    assert adapter["bias"] == "none"
    assert_every_checkpoint_judged(project, cell, ["keywords-kempermann2025", "prefixes-zou2023"])
    assert_chrf_is_skipped(project, cell)
    # The stages track into this test's own store (conftest's `_isolated_mlflow`).
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("safetydrift-llama2-chat")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    train = next(r for r in runs if r.info.run_name == f"train@{cell}")
    assert train.data.metrics["truncated_examples"] == expected
