"""Cells as Ray tasks: each runs `safetydrift repro` in a workspace of its own with the GPUs Ray
gave it, and is restored into the main workspace as soon as it succeeds; one that fails runs
again after the others.

ray is imported inside these functions, not at the top: see safetydrift.grid.placement.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from safetydrift.files import write_json
from safetydrift.grid.jobs import (
    Job,
    Output,
    keep_attempt,
    ran_out_of_gpu_memory,
    repro_command,
    stream_lines,
)
from safetydrift.grid.workspaces import (
    NODE_CACHE,
    WORKERS_DIR,
    delete_intermediate_checkpoints,
    make_worker,
    pipeline_files,
    run_dvc,
)
from safetydrift.stage import TIMINGS_DIR


def run_cell(
    files: dict[str, bytes],
    name: str,
    targets: list[str],
    workspace: str,
    main_node: str,
    cache_dir: str,
    env: dict[str, str],
) -> dict[str, Any]:
    """One cell as a Ray task: `safetydrift repro TARGETS` in a workspace of its own, with the
    GPUs Ray gave the task (CUDA_VISIBLE_DEVICES, which DVC and every stage inherit).

    On the main workspace's machine (`main_node`) the cell shares its DVC cache; on another it
    pulls the shared inputs from the DVC remote and pushes what it ran back, run-cache included.
    Returns the exit status, the timings, the log, and where the cell ran.
    """
    import ray

    root = Path(workspace)
    here = ray.get_runtime_context().get_node_id() == main_node
    node = ray.util.get_node_ip_address()
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    lines: list[str] = []

    def line(text: str) -> None:
        lines.append(text)
        print(text.rstrip(), flush=True)  # Ray shows it prefixed with the task's name

    line(f"on {node}{'' if here else ' (not the main workspace)'}, CUDA_VISIBLE_DEVICES={gpus}\n")
    worker = root / WORKERS_DIR / name
    make_worker(worker, files, root, cache_dir if here else str(root / WORKERS_DIR / NODE_CACHE))
    timings = worker.parent / f"{name}.json"
    cell_env = {**os.environ, **env}
    pull = [] if here else ["--pull"]
    returncode = stream_lines(repro_command(timings, [*pull, *targets]), worker, cell_env, line)
    if returncode == 0 and not here:
        push = [sys.executable, "-m", "dvc", "push", "--run-cache"]
        returncode = stream_lines(push, worker, cell_env, line)
    if returncode == 0:
        delete_intermediate_checkpoints(worker, name)
    recorded = json.loads(timings.read_text(encoding="utf-8")) if timings.exists() else None
    timings.unlink(missing_ok=True)
    stage_timings = worker_stage_timings(worker)
    shutil.rmtree(worker, ignore_errors=True)
    return {
        "returncode": returncode,
        "timings": recorded,
        "stage_timings": stage_timings,
        "log": "".join(lines),
        "node": node,
        "gpus": gpus,
        "main_node": here,
    }


def worker_stage_timings(worker: Path) -> dict[str, Any]:
    """What the cell's stages wrote under the worker's timings/ (a judge's loading and judging
    seconds, say), by path under it: not DVC outputs, so no restore brings them back."""
    directory = worker / TIMINGS_DIR
    return {
        path.relative_to(directory).as_posix(): json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(directory.rglob("*.json"))
    }


def keep_stage_timings(workspace: Path, result: dict[str, Any]) -> None:
    """The cell's stage timings in the main workspace's timings/, where the stages write them
    when the cell runs there."""
    for name, timing in (result.get("stage_timings") or {}).items():
        write_json(workspace / TIMINGS_DIR / name, timing)


def _record(job: Job, result: dict[str, Any], timings_dir: Path) -> None:
    """A finished task's log and timings into `timings_dir`, as a job run here writes them."""
    job.returncode = result["returncode"]
    job.node, job.gpus = result["node"], result["gpus"]
    job.timings = timings_dir / f"{job.name}.json"
    job.timings.with_suffix(".log").write_text(result["log"], encoding="utf-8")
    if result["timings"] is not None:
        write_json(job.timings, result["timings"])


def run_cells(
    workspace: Path,
    jobs: Sequence[Job],
    share: float,
    retries: int,
    timings_dir: Path,
    env: dict[str, str],
    out: Output,
    restore: Callable[[Job, bool], None],
) -> None:
    """Run each job as a Ray task holding `share` of a GPU, in the order given; `restore(job,
    from_main_node)` each one that succeeds as soon as it does. A job that fails runs again,
    after the others, up to `retries` times; Ray also reruns a task whose process or machine
    died, as often."""
    import ray

    files = ray.put(pipeline_files(workspace))
    main_node = ray.get_runtime_context().get_node_id()
    cache_dir = run_dvc(workspace, "cache", "dir")
    task = ray.remote(run_cell)
    running: dict[Any, Job] = {}

    def submit(job: Job) -> None:
        options = {"num_cpus": 1, "num_gpus": share, "max_retries": retries, "name": job.name}
        ref = task.options(**options).remote(
            files, job.name, job.targets, str(workspace), main_node, cache_dir, env
        )
        running[ref] = job

    for job in jobs:
        submit(job)
    while running:
        [ref], _ = ray.wait(list(running), num_returns=1)
        job = running.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as error:
            # The task raised (its workspace could not be made) or Ray lost it for good.
            result = {"returncode": None, "timings": None, "log": f"{error}\n", "node": None,
                      "gpus": None, "main_node": True}  # fmt: skip
            out.line(job.name, str(error).splitlines()[0])
        _record(job, result, timings_dir)
        keep_stage_timings(workspace, result)
        if job.returncode == 0:
            restore(job, result["main_node"])
        elif job.attempts < retries:
            why = (
                "out of GPU memory beside other cells"
                if ran_out_of_gpu_memory(job)
                else f"failed (exit status {job.returncode})"
            )
            job.attempts += 1
            keep_attempt(job, job.attempts)
            out.line(job.name, f"{why}: runs again after the others ({job.attempts}/{retries})")
            submit(job)
