"""What the chat presets' tests share (tests/test_chat_preset_*.py): a preset made runnable on
the CPU, a `dvc repro` of it, and the checks both presets' runs must pass.

Each test keeps its preset's structure (chat training data and its mix, the LoRA settings, the
judges, the prompt format, chrF off) and replaces only what a CPU test cannot have: the model
(a tiny random one of the same family), the user's data (fixtures), QLoRA's 4-bit layers (the
same adapter through `lora`, which the presets hold for machines without a CUDA GPU), the harm
judge's model (the smoke preset's tiny guard), the evaluation sets beyond the study (the smoke
preset's fixtures) and the sizes. One preset per test file: each is a whole `dvc repro`, and
pytest-xdist hands out whole files, so the two run side by side.
"""

from __future__ import annotations

import json

import yaml
from conftest import ROOT, dvc

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
