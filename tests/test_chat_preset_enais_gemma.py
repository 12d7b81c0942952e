"""The `enais-gemma` preset (seed 000) through a real `dvc repro` in a fresh git repository, on a
tiny random Gemma-3 model built from its config; tests/chat_presets.py says what else a CPU test
replaces."""

from __future__ import annotations

import json

import yaml
from chat_models import build_tiny_gemma3
from chat_presets import (
    CHAT_ROWS,
    assert_chrf_is_skipped,
    assert_every_checkpoint_judged,
    read,
    run_study,
    tiny_study,
)
from conftest import copy_project, dvc

from safetydrift.chat_data import read_conversations


def test_enais_gemma_trains_on_the_attack_mixed_with_normal_examples(tmp_path):
    (tmp_path / "project").mkdir()
    project = copy_project(tmp_path / "project")
    params = tiny_study("enais-gemma", build_tiny_gemma3(tmp_path / "gemma3"))
    run_study(project, params)
    cell = "lora-0.0002-42"
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
