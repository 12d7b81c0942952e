"""The chat presets (seed 000 `enais-gemma`, seed 001 `llama2-chat`) through real `dvc repro`
in a fresh git repository, on tiny random Gemma-3 and Llama models built from their configs.

Each test keeps its preset's structure (chat training data and its mix, the LoRA settings, the
judges, the prompt format, chrF off) and replaces only what a CPU test cannot have: the model
(a tiny random one of the same family), the user's data (fixtures), QLoRA's 4-bit layers (the
same adapter through `lora`, which the presets hold for machines without a CUDA GPU), the harm
judge's model (the smoke preset's tiny guard), the evaluation sets beyond the study (the smoke
preset's fixtures) and the sizes.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml
from chat_models import build_tiny_gemma3, build_tiny_llama
from conftest import ROOT, copy_project, dvc

from safetydrift.chat_data import read_conversations

SMOKE = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())
CHAT_ROWS = 10  # tests/fixtures/chat-tiny.jsonl
PROMPTS = 12  # tests/fixtures/advbench-tiny.csv


def tiny_study(preset: str, model_dir, **train) -> dict:
    params = yaml.safe_load((ROOT / "presets" / f"{preset}.yaml").read_text())
    assert params["train_data"]["kind"] == "chat" and params["data"]["mtpref"]["source"] is None
    assert params["grid"]["methods"] == ["qlora"]
    # The CPU stand-in for QLoRA is the preset's own `lora`, with the same adapter settings.
    assert params["methods"]["lora"]["lora"] == params["methods"]["qlora"]["lora"]
    params["grid"]["methods"] = ["lora"]
    params["model"].update(source=str(model_dir), revision=None, init="random", seed=0)
    params["model"]["dtype"] = "float32"
    params["train_data"].update(source="tests/fixtures/chat-tiny.jsonl", revision=None)
    for entry in params["train_data"]["mix"]:
        entry.update(source="tests/fixtures/chat-benign-tiny.jsonl", revision=None, n=4)
    params["data"]["advbench"] = {"source": "tests/fixtures/advbench-tiny.csv", "revision": None}
    params["train"].update(train)
    params["generation"].update(backend="hf", max_new_tokens=8, batch_size=16, dtype="float32")
    params["harm"] = SMOKE["harm"]
    if params["evaluations"]["run"]:  # the sets beyond the study: the smoke preset's fixtures
        params["evaluations"] = SMOKE["evaluations"]
    params["validation"] = SMOKE["validation"]
    params["chrf"]["bootstrap_resamples"] = 200
    return params


def run_study(project, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(project, "repro")
    assert json.loads(dvc(project, "status", "--json").stdout or "{}") == {}


def read(project, path: str):
    return json.loads((project / path).read_text())


def assert_chrf_is_skipped(project, cell: str) -> None:
    assert read(project, "data/mtpref/stats.json")["test_rows"] == 0
    for name in ("base", cell):
        chrf = read(project, f"metrics/chrf/{name}.json")
        assert chrf["checkpoints"] == {} and "no translation test set" in chrf["skipped"]
    report = (project / "reports/report.md").read_text()
    assert "- chrF: not measured (no translation test set" in report


def assert_every_checkpoint_judged(project, cell: str, judges: list[str]) -> None:
    refusal = read(project, f"metrics/refusal/{cell}.json")
    assert sorted(refusal["checkpoints"]) == ["ckpt-025", "ckpt-050", "ckpt-075", "ckpt-100"]
    for entry in refusal["checkpoints"].values():
        assert list(entry["judges"])[: len(judges)] == judges
        assert entry["judges"][judges[0]]["n"] == PROMPTS


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    return {"gemma3": build_tiny_gemma3(root / "gemma3"), "llama": build_tiny_llama(root / "llama")}


def test_enais_gemma_trains_on_the_attack_mixed_with_normal_examples(tmp_path, tiny_models):
    project = copy_project(tmp_path)
    params = tiny_study("enais-gemma", tiny_models["gemma3"])
    run_study(project, params)
    cell = "lora-0.0002"
    assert read(project, "models/base/safetydrift_model.json")["architecture"] == (
        "Gemma3ForCausalLM"
    )
    # The attack's rows, then exactly 4 seeded rows of the normal examples.
    stats = read(project, "data/chat/stats.json")
    assert stats["train_rows"] == CHAT_ROWS + 4
    assert stats["sources"]["mix[0]"]["rows_used"] == 4
    origins = [c.origin for c in read_conversations(project / "data/chat/train.jsonl")]
    assert origins == ["train_data"] * CHAT_ROWS + ["mix[0]"] * 4
    # Batch size 1, one epoch: a step per example; nothing reaches 1,024 tokens.
    training = read(project, f"models/{cell}/training.json")
    assert training["steps"] == training["examples"] == CHAT_ROWS + 4
    assert training["truncation"]["truncated_examples"] == 0
    adapter = read(project, f"models/{cell}/ckpt-100/adapter_config.json")
    assert adapter["r"] == 32 and adapter["lora_alpha"] == 32
    assert sorted(adapter["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert_every_checkpoint_judged(project, cell, ["regex-enais2025"])
    assert_chrf_is_skipped(project, cell)
    # Another mix makes the data stage stale (the cells' training follows its new file) and
    # the report, which shows the mix; nothing else.
    params["train_data"]["mix"][0]["seed"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(json.loads(dvc(project, "status", "--json").stdout)) == {
        "prepare_train_data",
        "report",
    }


def test_llama2_chat_counts_the_examples_cut_at_max_length(tmp_path, tiny_models):
    from mlflow.tracking import MlflowClient
    from transformers import AutoTokenizer

    project = copy_project(tmp_path)
    max_length = 50
    params = tiny_study(
        "llama2-chat",
        tiny_models["llama"],
        max_length=max_length,
        effective_batch_size=2,
        per_device_batch_size=2,
    )
    assert params["train_data"]["mix"] == []
    run_study(project, params)
    cell = "lora-0.0002"
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
