"""Disk: the grid's estimate before training, and one copy of every artifact (DVC's cache linked
into grid workers and the main workspace). `keep_checkpoints`: test_keep_checkpoints.py; a full
disk: test_disk_full.py."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_MODEL, dvc, files_under, smoke_copy, tree_bytes

from safetydrift.disk import (
    DiskEstimate,
    DiskSpaceError,
    FreeSpace,
    adapter_bytes,
    estimate,
    parameter_count,
    refuse_if_short,
)
from safetydrift.grid.plan import default_cells
from safetydrift.grid.workspaces import make_worker, pipeline_files

SMOKE = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())
FULL_CELL, LORA_CELL = "full-0.001-42", "lora-0.001-42"


def test_the_estimate_sizes_full_checkpoints_and_adapters_of_the_tiny_model(
    base_model_dir, tmp_path
):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = json.loads((TINY_MODEL / "config.json").read_text())
    weights = sum(p.stat().st_size for p in base_model_dir.glob("*.safetensors"))
    # From the config alone (before the model is prepared): float32 weights, header aside.
    assert abs(parameter_count(config) * 4 - weights) / weights < 0.02

    lora = SMOKE["methods"]["lora"]["lora"]
    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    adapter = get_peft_model(
        model,
        LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], target_modules=lora["target_modules"]),
    )
    adapter.save_pretrained(tmp_path / "adapter")
    saved = tree_bytes(tmp_path / "adapter")
    assert abs(adapter_bytes(config, lora, "methods.lora.lora") - saved) / saved < 0.15

    workspace = tmp_path / "workspace"
    shutil.copytree(base_model_dir, workspace / "models" / "base")
    cells = [FULL_CELL, LORA_CELL]
    kept_all = estimate(workspace, SMOKE, cells, [], 2, workspace / ".dvc" / "cache")
    full = tree_bytes(workspace / "models" / "base")
    assert kept_all.checkpoint_bytes["full"] == full
    sizes = kept_all.checkpoint_bytes
    assert kept_all.kept_bytes == 4 * (sizes["full"] + sizes["lora"])
    assert kept_all.set_aside_bytes == 0 and kept_all.generation_bytes > 0
    # One filesystem: the workspace and its cache share it, so each artifact counts once.
    assert [space.holds for space in kept_all.free] == ["the workspace and the DVC cache"]

    final = {**SMOKE, "train": {**SMOKE["train"], "keep_checkpoints": "final"}}
    one_at_a_time = estimate(workspace, final, cells, [LORA_CELL], 1, workspace / ".dvc" / "cache")
    assert one_at_a_time.cells == [FULL_CELL] and one_at_a_time.done == [LORA_CELL]
    assert one_at_a_time.kept_bytes == full and one_at_a_time.set_aside_bytes == 3 * full

    # Three seeds: three cells of each method and rate (`safetydrift grid --estimate`'s cells).
    seeds = {**SMOKE, "grid": {**SMOKE["grid"], "seeds": [42, 43, 44]}}
    three = estimate(workspace, seeds, default_cells(seeds), [], 2, workspace / ".dvc" / "cache")
    assert sorted(three.cells) == sorted(
        f"{m}-0.001-{s}" for m in ("full", "lora") for s in (42, 43, 44)
    )
    assert three.kept_bytes == 3 * kept_all.kept_bytes
    assert three.generation_bytes == 3 * kept_all.generation_bytes


def test_a_grid_that_will_not_fit_is_refused_in_one_line_naming_need_and_free_space(tmp_path):
    found = DiskEstimate(
        cells=[FULL_CELL],
        done=[],
        keep_checkpoints="all",
        checkpoints_per_cell=4,
        checkpoint_bytes={"full": 1_260_000_000},
        kept_bytes=5_040_000_000,
        set_aside_bytes=0,
        generation_bytes=0,
        free=[FreeSpace(tmp_path, 3_000_000_000, "the workspace and the DVC cache")],
    )
    with pytest.raises(DiskSpaceError) as refused:
        refuse_if_short(found)
    message = str(refused.value)
    assert "\n" not in message
    assert f"needs about 5.11 GB on {tmp_path}" in message and "only 3.00 GB is free" in message
    assert "`train.keep_checkpoints: final`" in message and "--skip-disk-check" in message
    found.free[0].free_bytes = 6_000_000_000
    refuse_if_short(found)


def inode(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def test_a_cell_trained_in_a_grid_worker_exists_once_linked_from_the_cache(tmp_path):
    """The worker's output, the DVC cache and the main workspace's restore: one inode each file."""
    project = smoke_copy(tmp_path / "project")
    dvc(project, "repro", "prepare_model", "prepare_mtpref")
    cache = project / ".dvc" / "cache"
    worker = project / ".dvc" / "tmp" / "grid" / FULL_CELL
    make_worker(worker, pipeline_files(project), project, str(cache))
    dvc(worker, "repro", f"train@{FULL_CELL}")
    # The main workspace restores the worker's stage from DVC's run-cache, running nothing.
    restored = dvc(project, "repro", f"train@{FULL_CELL}")
    assert f"Stage 'train@{FULL_CELL}' is cached - skipping run" in restored.stdout

    cached = {inode(path) for path in files_under(cache / "files")}
    checkpoints = files_under(project / "models" / FULL_CELL)
    assert len(checkpoints) > 4
    for path in [*checkpoints, *files_under(project / "models" / "base")]:
        twin = worker / path.relative_to(project)
        assert inode(path) == inode(twin) and inode(path) in cached, path
    weights = list((project / "models" / FULL_CELL).glob("ckpt-*/model.safetensors"))
    assert len(weights) == 4
    assert all(path.stat().st_nlink == 3 for path in weights)  # cache, worker, main workspace
    # On disk, the workspaces' models take nothing beside the cache.
    models = [
        path
        for workspace in (project, worker)
        for path in files_under(workspace / "models")
        if path.name != ".gitignore"  # DVC's list of outputs for git
    ]
    assert tree_bytes(project / "models") > tree_bytes(cache / "files") / 2
    assert not [path for path in models if inode(path) not in cached]
    shutil.rmtree(worker)
    assert all(path.stat().st_nlink == 2 for path in weights)
