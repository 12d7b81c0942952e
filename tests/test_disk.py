"""Disk: the grid's estimate before training, one copy of every artifact, `keep_checkpoints`,
and a full disk in the middle of a stage (tests on a small tmpfs skip where mounting is not
permitted)."""

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_MODEL, copy_project, dvc, small_filesystem, stage_env

from safetydrift.disk import (
    DiskEstimate,
    DiskSpaceError,
    FreeSpace,
    adapter_bytes,
    estimate,
    parameter_count,
    refuse_if_short,
)
from safetydrift.grid import Job, delete_intermediate_checkpoints, make_worker
from safetydrift.io import DiskFullError, atomic_dir, is_disk_full

SMOKE = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())
FULL_CELL, LORA_CELL = "full-0.001", "lora-0.001"


def smoke_project(path: Path, **train: object) -> Path:
    """A git + DVC project on the smoke preset, with `train` keys overridden."""
    path.mkdir(parents=True, exist_ok=True)
    project = copy_project(path)
    params = yaml.safe_load((project / "presets" / "smoke.yaml").read_text())
    params["train"].update(train)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def run_cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "safetydrift.cli", *args],
        cwd=project,
        env=stage_env(),
        capture_output=True,
        text=True,
    )


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in files_under(path))


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
    project = smoke_project(tmp_path / "project")
    dvc(project, "repro", "prepare_model", "prepare_mtpref")
    cache = project / ".dvc" / "cache"
    worker = project / ".dvc" / "tmp" / "grid" / "worker-0"
    make_worker(project, worker, str(cache))
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


def test_keeping_only_the_final_checkpoint_generates_from_all_then_asks_for_a_retraining(
    tmp_path,
):
    project = smoke_project(tmp_path / "project", keep_checkpoints="final")
    generations = [f"generate_refusal@{LORA_CELL}", f"generate_chrf@{LORA_CELL}"]
    dvc(project, "repro", *generations)
    output = project / "models" / LORA_CELL
    set_aside = project / "models" / ".intermediate" / LORA_CELL
    assert sorted(p.name for p in output.iterdir() if p.is_dir()) == ["ckpt-100"]
    assert sorted(p.name for p in set_aside.iterdir() if p.is_dir()) == [
        "ckpt-025",
        "ckpt-050",
        "ckpt-075",
    ]
    # What a reviewer keeps: every checkpoint's step and loss, and every checkpoint's responses.
    training = json.loads((output / "training.json").read_text())
    assert training["keep_checkpoints"] == "final" and len(training["checkpoints"]) == 4
    labels = ["ckpt-025", "ckpt-050", "ckpt-075", "ckpt-100"]
    for measurement in ("refusal", "chrf"):
        summary = project / "generations" / measurement / LORA_CELL / "generation.json"
        assert [c["label"] for c in json.loads(summary.read_text())["checkpoints"]] == labels
    ignored = subprocess.run(["git", "check-ignore", "-q", str(set_aside)], cwd=project)
    assert ignored.returncode == 0  # scratch: neither git's nor DVC's

    # The grid deletes them once the cell's job has succeeded; no stage becomes stale.
    delete_intermediate_checkpoints(project, Job(LORA_CELL, []))
    assert not set_aside.exists()
    assert json.loads(dvc(project, "status", "--json", *generations).stdout or "{}") == {}
    lock = (project / "dvc.lock").read_text()
    forced = dvc(project, "repro", "--force", "--single-item", generations[0], check=False)
    shown = forced.stdout + forced.stderr
    assert forced.returncode != 0 and "Traceback" not in shown, shown[-3000:]
    assert f"retrain the cell (`dvc repro --force train@{LORA_CELL}`)" in shown
    assert "ckpt-025, ckpt-050, ckpt-075" in shown
    assert (project / "dvc.lock").read_text() == lock


def test_a_full_disk_is_recognised_from_writers_that_raise_no_oserror(tmp_path):
    # safetensors' Rust serializer on a full tmpfs (see the test below, which needs root).
    rust = "Error while serializing: I/O error: No space left on device (os error 28)"
    assert is_disk_full(RuntimeError(rust))
    try:
        try:
            raise OSError(errno.EDQUOT, "quota")
        except OSError as quota:
            raise RuntimeError("the writer failed") from quota
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert not is_disk_full(RuntimeError("CUDA out of memory"))
    output = tmp_path / "models" / "x"
    with (
        pytest.raises(DiskFullError, match=f"^{output}: no space left on its filesystem"),
        atomic_dir(output),
    ):
        raise RuntimeError(rust)
    assert list((tmp_path / "models").iterdir()) == []  # no partial output


def tracked_env(project: Path) -> dict[str, str]:
    """Stages track into the project's own store, on the project's filesystem."""
    return {**stage_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlruns.db'}"}


@pytest.fixture(scope="module")
def project_on_small_disk(tmp_path_factory):
    """The smoke project on a 24 MB tmpfs, its data and base model prepared, MLflow beside."""
    project = tmp_path_factory.mktemp("small") / "project"
    small_filesystem(project, "24m")
    try:
        smoke_project(project)
        subprocess.run(
            [sys.executable, "-m", "dvc", "repro", "prepare_model", "prepare_mtpref"],
            cwd=project,
            env=tracked_env(project),
            check=True,
            capture_output=True,
        )
        yield project
    finally:
        subprocess.run(["umount", str(project)], check=False)


def test_the_grid_refuses_to_train_on_a_disk_too_small_in_one_line(project_on_small_disk):
    project = project_on_small_disk
    shown = run_cli(project, "grid", "--estimate")
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert shown.stdout.startswith("disk estimate: 2 cell(s) to train, 0 already in dvc.lock")
    assert f"on {project} (the workspace and the DVC cache)" in shown.stdout
    assert not (project / "models" / FULL_CELL).exists()  # the estimate runs nothing

    refused = subprocess.run(
        [sys.executable, "-m", "safetydrift.cli", "grid", "--jobs", "2"],
        cwd=project,
        env=tracked_env(project),
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, refused.stderr[-3000:]
    assert "error: the grid needs about " in errors[0]
    assert f"on {project} (the workspace and the DVC cache) for 2 cell(s) but only " in errors[0]
    assert not [cell for cell in (FULL_CELL, LORA_CELL) if (project / "models" / cell).exists()]


def fill_leaving(filesystem: Path, free_bytes: int) -> Path:
    """Fill `filesystem` up, then give back `free_bytes`."""
    filler = filesystem / "filler"
    handle = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(handle, b"\0" * 65536)
    except OSError:
        pass
    finally:
        os.close(handle)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - free_bytes))
    return filler


def test_a_disk_full_while_training_leaves_dvc_and_mlflow_consistent(project_on_small_disk):
    project = project_on_small_disk
    stage = f"train@{FULL_CELL}"
    lock = (project / "dvc.lock").read_text()
    # Room for about one of the cell's four checkpoints.
    filler = fill_leaving(project, tree_bytes(project / "models" / "base") * 3 // 2)
    try:
        failed = subprocess.run(
            [sys.executable, "-m", "dvc", "repro", "--single-item", stage],
            cwd=project,
            env=tracked_env(project),
            capture_output=True,
            text=True,
        )
    finally:
        filler.unlink()
    shown = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "Traceback" not in shown, shown[-4000:]
    errors = [line for line in shown.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: models/{FULL_CELL}: no space left on its filesystem; nothing was written"
    ], shown[-4000:]
    # DVC recorded nothing and still sees the stage to run; no partial output is left.
    assert (project / "dvc.lock").read_text() == lock
    assert stage in json.loads(dvc(project, "status", "--json", stage).stdout)
    assert not [p.name for p in (project / "models").iterdir() if FULL_CELL in p.name]
    # The MLflow store is whole, and the stage's run is marked failed.
    with sqlite3.connect(project / "mlruns.db") as store:
        assert store.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("safetydrift-smoke")
    runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{stage}'")
    assert [run.info.status for run in runs] in ([], ["FAILED"])
    # With room again, the same command completes.
    dvc(project, "repro", "--single-item", stage)
    assert len(list((project / "models" / FULL_CELL).glob("ckpt-*"))) == 4
