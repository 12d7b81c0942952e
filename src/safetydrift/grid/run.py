"""`safetydrift grid` end to end: prepare the shared inputs, estimate the disk, run the cells
(one at a time here, or side by side as Ray tasks), the report, and the summary of times.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from safetydrift.disk import DiskEstimate, describe, estimate, refuse_if_short
from safetydrift.evaluation_sets import evaluation_names
from safetydrift.files import write_json
from safetydrift.grid.jobs import Job, Output, repro_here, run_job
from safetydrift.grid.placement import Placement, check_cluster, place_cells, stop_ray
from safetydrift.grid.plan import (
    default_cells,
    grid_jobs,
    measured_seconds,
    planned_order,
    prepare_stages,
)
from safetydrift.grid.ray_tasks import run_cells
from safetydrift.grid.workspaces import delete_intermediate_checkpoints, restore_cell, run_dvc
from safetydrift.params import get, load_params
from safetydrift.repro import combine
from safetydrift.tracking import tracking_uri


@dataclass
class GridRun:
    """What `run_grid` did: every job it ran (the prepare stages, the cells, their restores, the
    report), cells at once, each cell's GPU share, the wall time, and the jobs that failed."""

    jobs: list[Job]
    parallel: int
    wall_seconds: float = 0.0
    failed: list[str] = field(default_factory=list)
    gpus_per_cell: float = 0.0


def trained_cells(workspace: Path, cells: Sequence[str]) -> list[str]:
    """The cells whose training dvc.lock records with their current inputs: no new checkpoints."""
    if not cells:
        return []
    changed = json.loads(
        run_dvc(workspace, "status", "--json", *(f"train@{c}" for c in cells)) or "{}"
    )
    return [cell for cell in cells if f"train@{cell}" not in changed]


def disk_estimate(workspace: Path, cells: Sequence[str], parallel: int) -> DiskEstimate:
    """What the cells' checkpoints, generations and evaluations will take, beside the free space
    of the workspace's and DVC cache's filesystems (safetydrift.disk)."""
    workspace = workspace.resolve()
    params = load_params(workspace / "params.yaml")
    valid = default_cells(params)
    cells = [job.name for job in grid_jobs(list(cells) if cells else valid, valid)[1:]]
    cache_dir = Path(run_dvc(workspace, "cache", "dir"))
    done = trained_cells(workspace, cells)
    return estimate(workspace, params, cells, done, parallel, cache_dir)


def run_grid(
    workspace: Path,
    cells: Sequence[str] | None = None,
    jobs: int = 1,
    timings_dir: Path = Path("reports/timings"),
    stream: TextIO = sys.stdout,
    check_disk: bool = True,
    gpus: str | None = None,
    gpus_per_cell_share: float | None = None,
    retries: int = 1,
    address: str | None = None,
    durations: Path | None = None,
) -> GridRun:
    """Run the grid's cells (all of them by default), side by side as Ray tasks.

    On this machine (no `address`), `jobs` cells at a time without GPUs; with GPUs (`gpus`, see
    `placement.visible_gpus`) as many as they hold at `gpus_per_cell_share` each (see
    `placement.gpus_per_cell`).
    One at a time, the cells run in the main workspace itself, without Ray.
    After the shared inputs are prepared and before any training, the disk the cells will fill
    is estimated; a disk too small stops the run (DiskSpaceError) unless `check_disk` is false.
    Side by side, the cells start slowest methods first, or, given `durations` (a previous grid's
    `--timings` directory), in the order whose schedule of those times is shortest
    (`plan.planned_order`).
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if retries < 0:
        raise ValueError(f"--retries must be at least 0, got {retries}")
    workspace = workspace.resolve()
    params = load_params(workspace / "params.yaml")
    valid = default_cells(params)
    evaluations = evaluation_names(params)
    queue_jobs = grid_jobs(list(cells) if cells else valid, valid, evaluations)
    seconds = measured_seconds(durations, queue_jobs) if durations is not None else {}
    timings_dir = (workspace / timings_dir).resolve()
    timings_dir.mkdir(parents=True, exist_ok=True)
    out = Output(stream)
    started = time.perf_counter()
    num_processes = int(get(params, "train.num_processes", 1))
    placement = place_cells(
        address, gpus, jobs, num_processes, gpus_per_cell_share, len(queue_jobs)
    )
    env = dict(os.environ)
    # Cells log to the main workspace's MLflow store (a SQLite file by default; MLflow waits
    # on its lock), so a stage restored from DVC's run-cache still has its MLflow run.
    env["MLFLOW_TRACKING_URI"] = tracking_uri(workspace)
    done: list[Job] = []
    try:
        if placement.nodes:
            placement.nodes = check_cluster(workspace, env["MLFLOW_TRACKING_URI"])
        prepare_args = prepare_stages(evaluations)
        prepare = repro_here("prepare", prepare_args, workspace, timings_dir, env, out)
        done.append(prepare)
        if prepare.returncode != 0:
            return _finish(done, placement, started)
        found = disk_estimate(workspace, [job.name for job in queue_jobs[1:]], placement.parallel)
        for text in describe(found).splitlines():
            out.line("disk", text)
        if check_disk:
            refuse_if_short(found)
        if not placement.nodes:
            for job in queue_jobs:
                run_job(job, workspace, timings_dir, env, out)
                if job.returncode == 0:
                    delete_intermediate_checkpoints(workspace, job.name)
        else:
            if placement.nodes > 1:
                # Cells on other nodes find the shared inputs on the DVC remote.
                run_dvc(workspace, "push", *prepare_args)
            out.line(
                "grid",
                f"{placement.parallel} cell(s) at a time, {placement.share:g} GPU each, "
                f"on {placement.nodes} node(s)",
            )

            def restore(job: Job, from_main_node: bool) -> None:
                done.append(restore_cell(workspace, job, from_main_node, timings_dir, env, out))

            # Ray's workers have this environment already (on other machines, their own): the
            # driver's CUDA_VISIBLE_DEVICES must not override the GPUs Ray gives each task.
            task_env = {"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"]}
            ordered = planned_order(queue_jobs, seconds, placement.parallel)
            out.line("grid", "order: " + " ".join(job.name for job in ordered))
            run_cells(workspace, ordered, placement.share, retries, timings_dir, task_env, out,
                      restore)  # fmt: skip
    finally:
        if placement.nodes:
            stop_ray()
    done.extend(queue_jobs)
    # --single-item: the report covers the cells that have metrics; it must not start training
    # the cells this run was not asked for (or that failed).
    done.append(repro_here("report", ["--single-item", "report"], workspace, timings_dir, env, out))
    return _finish(done, placement, started)


def _finish(done: list[Job], placement: Placement, started: float) -> GridRun:
    run = GridRun(jobs=done, parallel=placement.parallel, gpus_per_cell=placement.share)
    run.wall_seconds = round(time.perf_counter() - started, 1)
    # A job Ray could not run has no exit status: it failed too.
    run.failed = [job.name for job in done if job.returncode != 0]
    return run


def write_summary(run: GridRun, path: Path) -> dict[str, Any]:
    """The grid's end-to-end wall time beside every stage's, as `safetydrift timings` sums them,
    and where each cell ran."""
    files = [job.timings for job in run.jobs if job.timings is not None and job.timings.exists()]
    combined = combine(files)
    summary = {
        "parallel_jobs": run.parallel,
        "gpus_per_cell": run.gpus_per_cell,
        "failed": run.failed,
        "placement": {
            job.name: {"node": job.node, "gpus": job.gpus} for job in run.jobs if job.node
        },
        **combined,
        # The grid's own start to end; the jobs' times side by side add up to more (`job_seconds`).
        "wall_seconds": run.wall_seconds,
        "job_seconds": combined["wall_seconds"],
    }
    write_json(path, summary)
    return summary
