"""A full disk: the grid refuses to start on a disk too small, and a stage that fills its disk
leaves DVC and MLflow consistent. The filesystem tests mount a small tmpfs (root only; elsewhere
they skip, saying why)."""

import errno
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import dvc, run_cli, small_filesystem, smoke_copy, stage_env, tree_bytes

from safetydrift.files import DiskFullError, atomic_dir, is_disk_full

FULL_CELL, LORA_CELL = "full-0.001-42", "lora-0.001-42"


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
        smoke_copy(project)
        subprocess.run(
            [sys.executable, "-m", "dvc", "repro", "prepare_model", "prepare_mtpref"],
            cwd=project,
            env=tracked_env(project),
            check=True,
            capture_output=True,
        )
        yield project
    finally:
        # Lazy: a process still inside (a stage's helper) must not leave the mount behind.
        subprocess.run(["umount", "--lazy", str(project)], check=False)


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
