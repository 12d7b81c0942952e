"""`train.deterministic` and `generation.deterministic` on the tiny model, on the CPU: two runs
of one cell give the same bits, and the switches are put back afterwards."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from conftest import ROOT
from safetensors.torch import load_file

from safetydrift.data.mtpref import read_pairs
from safetydrift.generation.checkpoints import base_checkpoint, list_checkpoints
from safetydrift.generation.run import generate_for_checkpoints
from safetydrift.generation.settings import GenerationSettings
from safetydrift.params import ParamError
from safetydrift.training.model import use_compile, use_cuda_graphs
from safetydrift.training.run import train_cell
from safetydrift.training.settings import train_settings

PARAMS = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())


def deterministic_params(**train_overrides) -> dict:
    params = copy.deepcopy(PARAMS)
    params["train"].update({"deterministic": True, **train_overrides})
    return params


def test_two_deterministic_runs_are_identical(base_model_dir, prepared_mtpref, tmp_path):
    pairs = read_pairs(prepared_mtpref / "train.jsonl")
    # LoRA draws dropout masks every step: the seeds must be the same in both runs.
    settings = train_settings(deterministic_params(), "lora", 1e-3)
    runs = [
        train_cell(settings, base_model_dir, pairs, tmp_path / f"run{i}", tmp_path / f"work{i}")
        for i in range(2)
    ]
    assert runs[0].losses == runs[1].losses
    assert len(runs[0].losses) == runs[0].steps == 10
    assert runs[0].determinism["deterministic"] is True
    assert runs[0].determinism["deterministic_algorithms"] is True
    assert runs[0].determinism["cublas_workspace_config"] == ":4096:8"
    # The process-wide switches are back as they were, for whatever runs next.
    assert not torch.are_deterministic_algorithms_enabled()

    checkpoints = [list_checkpoints(tmp_path / f"run{i}") for i in range(2)]
    assert [c.label for c in checkpoints[0]] == ["ckpt-025", "ckpt-050", "ckpt-075", "ckpt-100"]
    for first, second in zip(*checkpoints, strict=True):
        weights = [load_file(next(c.path.glob("*.safetensors"))) for c in (first, second)]
        assert weights[0].keys() == weights[1].keys() and weights[0]
        for name, tensor in weights[0].items():
            assert torch.equal(tensor, weights[1][name]), name

    generation = GenerationSettings(
        backend="static", max_new_tokens=8, batch_size=4, dtype="float32", deterministic=True
    )
    conversations = [[{"role": "user", "content": p.source_text}] for p in pairs[:6]]
    responses = []
    for run_checkpoints in checkpoints:
        rows = [
            result.rows
            for result in generate_for_checkpoints(
                base_model_dir,
                [base_checkpoint(base_model_dir), *run_checkpoints],
                conversations,
                list(range(len(conversations))),
                generation,
                "cpu",
            )
        ]
        responses.append(rows)
    assert responses[0] == responses[1]
    assert any(row["new_tokens"] for rows in responses[0] for row in rows)


def test_deterministic_training_is_eager(base_model_dir):
    settings = train_settings(deterministic_params(compile="auto", cuda_graphs="auto"), "full", 1)
    assert settings.deterministic
    assert not use_compile(settings) and not use_cuda_graphs(settings)
    explicit = deterministic_params(cuda_graphs=True)
    explicit["methods"]["full"]["compile"] = True  # the smoke preset sets it per method
    with pytest.raises(ParamError, match="deterministic.*compile and cuda_graphs are true"):
        train_settings(explicit, "full", 1e-3)
    with pytest.raises(ParamError, match="train.deterministic"):
        train_settings(deterministic_params(deterministic="yes"), "full", 1e-3)


def test_deterministic_generation_settings():
    assert GenerationSettings.from_params({"deterministic": True}).deterministic
    assert not GenerationSettings.from_params({}).deterministic
    with pytest.raises(ParamError, match="vLLM"):
        GenerationSettings.from_params({"backend": "vllm", "deterministic": True})
    with pytest.raises(ParamError, match="generation.deterministic"):
        GenerationSettings.from_params({"deterministic": 1})
