"""The workspace of each cell run side by side, and getting its results back.

DVC takes a lock per workspace, so each cell runs in a copy of the main workspace's pipeline files
(`.dvc/tmp/grid/CELL`, which neither DVC nor git looks into), configured to share the main
workspace's DVC cache (on another machine of a cluster, one cache per machine). What a cell ran
is restored into the main workspace from DVC's run-cache.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from safetydrift.cells import BASE_CELL
from safetydrift.grid.jobs import Job, Output, repro_here
from safetydrift.params import get, load_params
from safetydrift.stage import INTERMEDIATE_DIR

WORKERS_DIR = Path(".dvc/tmp/grid")
# On another machine of a cluster: the DVC cache its cells share (the main one is not there).
NODE_CACHE = "node-cache"
# Copied into each worker besides the files git lists: DVC's own configuration and its record.
DVC_FILES = (".dvc/config", ".dvc/config.local", "dvc.yaml", "dvc.lock", "params.yaml")


def run_dvc(workspace: Path, *args: str) -> str:
    """`dvc ARGS` in `workspace`, its output; a failure is an error naming both, with DVC's."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"`dvc {' '.join(args)}` failed in {workspace}:\n{done.stdout}{done.stderr}"
        )
    return done.stdout.strip()


def workspace_files(workspace: Path) -> list[Path]:
    """The pipeline's own files (sources, params, dvc.yaml): what git tracks or would track.

    DVC lists its outputs in .gitignore files, so git's view leaves out models, generations and
    the cache. Without git, the files under the directories the pipeline's stages depend on.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=workspace,
        capture_output=True,
        check=False,
    )
    if listed.returncode == 0:
        names = [name for name in listed.stdout.decode().split("\0") if name]
        return [Path(name) for name in names if (workspace / name).is_file()]
    files = []
    for top in ("stages", "src", "presets", "scripts"):
        for path in sorted((workspace / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                files.append(path.relative_to(workspace))
    return files


def parent_paths(params: Any) -> set[str]:
    """First components of the params' paths that leave the project (`../shared/data/x.csv`
    gives `shared`)."""
    if isinstance(params, dict):
        return {name for value in params.values() for name in parent_paths(value)}
    if isinstance(params, list):
        return {name for value in params for name in parent_paths(value)}
    if isinstance(params, str) and params.startswith("../") and len(params.split("/")) > 1:
        return {params.split("/")[1]}
    return set()


def pipeline_files(workspace: Path) -> dict[str, bytes]:
    """The files a cell's workspace is made of, read once here and sent to every cell through
    Ray (a cell may run on a machine that has no copy of this workspace)."""
    names = {*workspace_files(workspace), *(Path(name) for name in DVC_FILES)}
    return {
        str(name): (workspace / name).read_bytes()
        for name in sorted(names)
        if (workspace / name).is_file()
    }


def link_parent_paths(workspace: Path, worker: Path) -> None:
    """Make `../NAME` in params mean in a worker what it means in the workspace: the worker lives
    deeper (`.dvc/tmp/grid/CELL`), so each such NAME beside it links to the workspace's."""
    for name in parent_paths(load_params(worker / "params.yaml")):
        target = workspace.parent / name
        link = worker.parent / name
        if target.exists() and not link.exists():
            # Cells starting together may race to make the same link.
            with contextlib.suppress(FileExistsError):
                link.symlink_to(target)


def make_worker(worker: Path, files: dict[str, bytes], workspace: Path, cache_dir: str) -> None:
    """A fresh workspace of the pipeline's files at `worker` whose DVC cache is `cache_dir`."""
    if worker.exists():
        shutil.rmtree(worker)
    for name, content in files.items():
        (worker / name).parent.mkdir(parents=True, exist_ok=True)
        (worker / name).write_bytes(content)
    link_parent_paths(workspace, worker)
    if get(load_params(worker / "params.yaml"), "train.keep_checkpoints", "all") == "final":
        # Checkpoints set aside for a cell's generations stay in the main workspace: a cell
        # retried in another worker restores its training from DVC's run-cache, which holds the
        # final checkpoint only, and finds the others there.
        shared = workspace / INTERMEDIATE_DIR
        shared.mkdir(parents=True, exist_ok=True)
        (worker / INTERMEDIATE_DIR).parent.mkdir(parents=True, exist_ok=True)
        (worker / INTERMEDIATE_DIR).symlink_to(shared, target_is_directory=True)
    # Git would see the worker as part of the main repository: DVC must not look for it.
    run_dvc(worker, "config", "--local", "core.no_scm", "true")
    run_dvc(worker, "config", "--local", "cache.dir", cache_dir)


def delete_intermediate_checkpoints(workspace: Path, cell: str) -> None:
    """Once a cell's job has succeeded, its generations are in DVC's cache and run-cache: the
    checkpoints `train.keep_checkpoints: final` set aside for them have served
    (docs/running.md, Disk)."""
    if cell != BASE_CELL:
        shutil.rmtree(workspace / INTERMEDIATE_DIR / cell, ignore_errors=True)


def restore_cell(
    workspace: Path,
    job: Job,
    from_main_node: bool,
    timings_dir: Path,
    env: dict[str, str],
    out: Output,
) -> Job:
    """Bring a cell a Ray task ran into the main workspace, as the job `restore-CELL`.

    Every stage the cell ran is in the run-cache: `dvc repro` checks its outputs out here and
    records them in dvc.lock, without running anything again, writing dvc.lock once for the cell
    (safetydrift.grid.lock_once). One at a time (DVC locks the workspace), while the other cells
    go on. What a cell ran on another node comes from the DVC remote, run-cache and outputs
    (`--pull`).
    """
    targets = job.targets if from_main_node else ["--pull", *job.targets]
    name = f"restore-{job.name}"
    return repro_here(name, targets, workspace, timings_dir, env, out, write_lock_once=True)
