"""benchmarks/bench_determinism.py on the tiny model, on the CPU: one method, two steps."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import yaml
from conftest import FIXTURES, ROOT

from safetydrift.data.advbench import prepare_advbench
from safetydrift.data.sources import Source


def load_benchmark():
    path = ROOT / "benchmarks" / "bench_determinism.py"
    spec = importlib.util.spec_from_file_location("bench_determinism", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_compares_two_runs_of_each_mode(
    base_model_dir, prepared_mtpref, tmp_path: Path, capsys
):
    workspace = tmp_path / "workspace"
    shutil.copytree(base_model_dir, workspace / "models" / "base")
    shutil.copytree(prepared_mtpref, workspace / "data" / "mtpref")
    prepare_advbench(Source(str(FIXTURES / "advbench-tiny.csv")), workspace / "data/advbench.jsonl")
    params = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())
    (workspace / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    out = tmp_path / "bench" / "determinism.json"
    out.parent.mkdir()

    report = load_benchmark().main(
        [
            "--workspace", str(workspace), "--methods", "lora", "--lr", "1e-3", "--steps", "2",
            "--prompts", "4", "--chrf-sentences", "3", "--max-new-tokens", "6",
            "--deterministic", "--out", str(out),
        ]
    )  # fmt: skip

    assert json.loads(out.read_text()) == report
    assert report["train_rows"] == 2 * params["train"]["effective_batch_size"]
    deterministic = report["methods"]["lora"]["deterministic"]
    assert deterministic["steps"] == [2, 2]
    assert deterministic["determinism"]["deterministic"] is True
    assert deterministic["losses_identical"] and deterministic["loss_max_abs_difference"] == 0.0
    assert deterministic["response_disagreements"] == deterministic["refusal_disagreements"] == 0
    assert deterministic["prompts"] == 4 and deterministic["sentences"] == 3
    assert deterministic["chrf_difference"] == 0.0
    fast = report["methods"]["lora"]["fast"]
    assert fast["determinism"]["deterministic"] is False
    assert len(fast["final_loss"]) == 2 and fast["final_loss"][0] > 0
    runs = sorted(p.name for p in (out.parent / "determinism-runs").iterdir())
    assert runs == [f"lora-{m}-{i}.json" for m in ("deterministic", "fast") for i in (1, 2)]
    printed = capsys.readouterr().out
    assert "lora" in printed and "deterministic" in printed and "loss max |Δ|" in printed
