"""`safetydrift grid`: the study's whole grid through `dvc repro`, cell by cell, many at once.

One cell of the stand-in study leaves an H100 mostly idle: a training step of a 0.5B model at
batch 8, or one decoding step, is bound by Python and kernel launches, not by the GPU. So the
grid runs cells side by side, each a Ray task that holds a share of a GPU (`--gpus-per-cell`:
0.25 puts four cells on one GPU; `train.num_processes` whole GPUs for a cell trained on several)
and sees only its GPUs: Ray sets the task's CUDA_VISIBLE_DEVICES, which its `dvc repro` and
every stage under it inherit. Ray starts on this machine by itself, bound to 127.0.0.1, or joins
a cluster (`--address`); a task that fails is run again (`--retries`), after the others.

DVC takes a lock per workspace, so each cell runs in its own copy of the workspace's pipeline
files (under `.dvc/tmp/grid/`, which neither DVC nor git looks into), configured to share the
main workspace's DVC cache and MLflow store. DVC's run-cache records every stage a cell runs;
the `dvc repro` that follows in the main workspace finds each of them there and checks their
outputs out instead of running them, so the main workspace ends with the same `dvc.lock` a
one-at-a-time run writes. A cell on another machine of a cluster keeps its own cache there and
pushes what it ran to the DVC remote (`dvc push --run-cache`); the main workspace pulls the
run-cache and the outputs from it (docs/running.md, "Across machines").

Order: the shared inputs first (prepared data, base model), in the main workspace. One at a time,
the base model's evaluations and then the cells, seed by seed in `grid.seeds` order (a whole
grid, then the next seed's), within a seed those at `report.fixed_lr` (Figure 1) first and
then the other learning rates, largest first, so that a run cut short has the figures' most
telling cells; one at a time needs no Ray and no copies. Side by side, the slowest methods first
and in turns (QLoRA's eager 4-bit training, LoRA, DPO, full fine-tuning; then again; the base
model last), so that the last cells to finish are short ones and one method's cells do not all
want the same resource at once. Each finished cell is restored into the main workspace at once,
while the other cells run; then the report, from whatever metrics exist. A run cut short keeps
every finished cell, and running the command again resumes: DVC skips what `dvc.lock` or its
run-cache has. A cell that fails is named at the end and does not stop the others.

Before any training, the disk the cells will fill is estimated (`safetydrift.disk`) and a disk
too small stops the run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from safetydrift.cells import BASE_CELL, grid_seeds, study_cells
from safetydrift.disk import DiskEstimate, describe, estimate, refuse_if_short
from safetydrift.evaluation_sets import evaluation_names
from safetydrift.files import write_json
from safetydrift.params import get, load_params
from safetydrift.stage import INTERMEDIATE_DIR
from safetydrift.tracking import tracking_uri

PREPARE_STAGES = (
    "prepare_model",
    "prepare_mtpref",
    "prepare_train_data",
    "prepare_advbench",
    "prepare_judge_models",
)
# Methods by how long a cell takes, slowest first (the stand-in grid on an H100, 4 cells at a
# time: QLoRA ~330 s, LoRA ~300 s, DPO ~270 s, full ~230 s, the base model's evaluations 80 s).
SLOWEST_FIRST = ("qlora", "lora", "dpo", "full")
WORKERS_DIR = Path(".dvc/tmp/grid")
# On another machine of a cluster: the DVC cache its cells share (the main one is not there).
NODE_CACHE = "node-cache"
# Copied into each worker besides the files git lists: DVC's own configuration and its record.
DVC_FILES = (".dvc/config", ".dvc/config.local", "dvc.yaml", "dvc.lock", "params.yaml")
# Ray resources are counted in steps of 1e-4: a share is rounded down to one.
SHARE_STEP = 10_000


@dataclass
class Job:
    """One `safetydrift repro` of the grid: a cell's two evaluations (DVC trains it first)."""

    name: str
    targets: list[str]
    returncode: int | None = None
    timings: Path | None = None
    attempts: int = 0
    # Where Ray ran it: the machine and the GPUs the cell saw (CUDA_VISIBLE_DEVICES).
    node: str | None = None
    gpus: str | None = None


@dataclass
class GridRun:
    jobs: list[Job]
    parallel: int
    wall_seconds: float = 0.0
    failed: list[str] = field(default_factory=list)
    gpus_per_cell: float = 0.0


def default_cells(params: dict[str, Any]) -> list[str]:
    """Every cell of the grid (METHOD-LR-SEED), seed by seed in `grid.seeds` order; within a
    seed those at `report.fixed_lr` first, then by learning rate, largest first (so a cut-short
    run has whole replicates, each with Figure 1 whole and the largest effects of Figure 2)."""
    fixed = float(get(params, "report.fixed_lr"))
    seeds = grid_seeds(params)
    ordered = sorted(
        study_cells(params),
        key=lambda c: (seeds.index(c.seed), c.learning_rate != fixed, -c.learning_rate),
    )
    return [cell.name for cell in ordered]


def grid_jobs(
    cells: Sequence[str], valid: Sequence[str], evaluations: Sequence[str] = ()
) -> list[Job]:
    """The base model's evaluations, then the cells in the given order: the one-at-a-time order.
    Each job also judges the cell on every evaluation set of `evaluations.run`."""
    unknown = [cell for cell in cells if cell not in valid]
    if unknown:
        raise ValueError(
            f"unknown grid cell(s) {', '.join(unknown)}: params.yaml's grid has {', '.join(valid)}"
        )
    base = ["judge_harm_base", "eval_chrf_base", "validate_judges"]
    jobs = [Job(BASE_CELL, base + [f"judge_evaluation_base@{s}" for s in evaluations])]
    # judge_harm depends on eval_refusal, which depends on the generations and the training;
    # judge_evaluation on the set's generations, which depend on the training too.
    jobs += [
        Job(
            cell,
            [f"judge_harm@{cell}", f"eval_chrf@{cell}"]
            + [f"judge_evaluation@{s}-{cell}" for s in evaluations],
        )
        for cell in cells
    ]
    return jobs


def prepare_stages(evaluations: Sequence[str]) -> list[str]:
    """The shared inputs, prepared once in the main workspace before any worker starts."""
    return [*PREPARE_STAGES, *(f"prepare_evaluation@{s}" for s in evaluations)]


def slowest_first(jobs: Sequence[Job]) -> list[Job]:
    """The order for N at a time: the slowest methods first, taken in turns, the base model last.

    In turns (QLoRA, LoRA, DPO, full; QLoRA, LoRA, ...) rather than method by method: cells of
    one method want the same resource at once (four DPO cells hold 4 x 15 GiB of GPU memory on
    the stand-in; four QLoRA cells contend for the same CPU-bound kernel launches).
    """

    def rank(job: Job) -> int:
        method = job.name.partition("-")[0]
        # A method without a measured rank runs first: better early than as the straggler.
        return SLOWEST_FIRST.index(method) + 1 if method in SLOWEST_FIRST else 0

    cells = [job for job in jobs if job.name != BASE_CELL]
    groups: dict[int, list[Job]] = {}
    for job in cells:
        groups.setdefault(rank(job), []).append(job)
    ordered = [
        group[turn]
        for turn in range(max((len(g) for g in groups.values()), default=0))
        for _, group in sorted(groups.items())
        if turn < len(group)
    ]
    return ordered + [job for job in jobs if job.name == BASE_CELL]


def ran_out_of_gpu_memory(job: Job) -> bool:
    """Whether a failed job's log shows a CUDA out-of-memory error (worth one more try, later)."""
    log = job.timings.with_suffix(".log") if job.timings else None
    if log is None or not log.exists():
        return False
    text = log.read_text(encoding="utf-8", errors="replace")
    return "CUDA out of memory" in text or "OutOfMemoryError" in text


def _dvc(workspace: Path, *args: str) -> str:
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


def visible_gpus(requested: str | None = None) -> list[str]:
    """The GPUs cells may use: `--gpus` (e.g. `0,1`), else CUDA_VISIBLE_DEVICES, else every
    GPU torch sees (none on a machine without CUDA)."""
    listed = requested if requested is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def ray_share(value: float) -> float:
    """`value` rounded down to Ray's step, ignoring the float error of a product (0.29 × 10⁴ is
    2899.99...)."""
    return math.floor(round(value * SHARE_STEP, 6)) / SHARE_STEP


def gpus_per_cell(
    gpus: float, jobs: int, num_processes: int = 1, requested: float | None = None
) -> float:
    """The GPU share each cell holds: `requested` (`--gpus-per-cell`), else the `gpus` shared
    `jobs` ways, at most one each; `train.num_processes` whole GPUs for a cell trained on
    several. 0 where there is no GPU."""
    if num_processes > 1:
        if requested is not None and requested != num_processes:
            raise ValueError(
                f"--gpus-per-cell is {requested:g} but `train.num_processes` is {num_processes}: "
                f"a cell trained on {num_processes} processes holds {num_processes} whole GPUs"
            )
        if gpus and num_processes > gpus:
            raise ValueError(
                f"`train.num_processes` is {num_processes} but only {gpus:g} GPU(s) are available "
                "to the grid"
            )
        return float(num_processes) if gpus else 0.0
    if requested is not None:
        if requested <= 0 or (requested > 1 and requested != int(requested)):
            raise ValueError(
                f"--gpus-per-cell must be a share of one GPU (0 < share <= 1) or a whole number "
                f"of GPUs, got {requested:g}"
            )
        if not gpus:
            raise ValueError(f"--gpus-per-cell is {requested:g} but the grid has no GPU")
        return ray_share(requested)
    if not gpus:
        return 0.0
    return min(1.0, ray_share(gpus / jobs))


def cells_at_once(gpus: float, share: float, jobs: int) -> int:
    """Cells that run side by side: as many as the GPUs hold at `share` each; `jobs` without
    GPUs."""
    if not share:
        return jobs
    # The share was rounded down, so the quotient is a whole number or just above one.
    return max(1, math.floor(gpus / share + 1e-9))


def start_ray(
    address: str | None, cpus: int | None = None, gpus: float | None = None
) -> dict[str, float]:
    """Start Ray on this machine, or join the cluster at `address`; its CPUs and GPUs.

    On this machine Ray offers `cpus` task slots (one per cell) and `gpus` GPUs (default: those
    CUDA_VISIBLE_DEVICES lists, else all), and every server it starts listens on 127.0.0.1 only.
    """
    if address is None:
        # On Linux Ray binds its servers to every interface for other machines to join; the
        # switch it has for machines that never form a cluster (macOS, Windows) binds them to
        # 127.0.0.1. Read when ray is imported, and by the processes Ray starts.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reports home from a study run
    # The cells' lines as they come, each prefixed with its cell, plainly: Ray would hold back
    # lines that several cells print alike, and colour the prefixes.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    import ray

    if address is None:
        # "local": a Ray of its own, even where `ray start` left one running here.
        ray.init(
            address="local",
            num_cpus=cpus,
            num_gpus=gpus,
            include_dashboard=False,
            log_to_driver=True,
        )
        bound = {node["NodeManagerAddress"] for node in ray.nodes()}
        if bound != {"127.0.0.1"}:
            ray.shutdown()
            raise RuntimeError(
                f"Ray started on {', '.join(sorted(bound))}, not 127.0.0.1 alone: ray was "
                "imported before the grid could bind it to this machine"
            )
    else:
        try:
            ray.init(address=address, log_to_driver=True)
        except ConnectionError as error:
            raise ValueError(f"--address {address}: no Ray cluster answers ({error})") from None
    resources = ray.cluster_resources()
    return {"CPU": resources.get("CPU", 0.0), "GPU": resources.get("GPU", 0.0)}


def trained_cells(workspace: Path, cells: Sequence[str]) -> list[str]:
    """The cells whose training dvc.lock records with their current inputs: no new checkpoints."""
    if not cells:
        return []
    changed = json.loads(
        _dvc(workspace, "status", "--json", *(f"train@{c}" for c in cells)) or "{}"
    )
    return [cell for cell in cells if f"train@{cell}" not in changed]


def disk_estimate(workspace: Path, cells: Sequence[str], parallel: int) -> DiskEstimate:
    """What the cells' checkpoints, generations and evaluations will take, beside the free space
    of the workspace's and DVC cache's filesystems (safetydrift.disk)."""
    workspace = workspace.resolve()
    params = load_params(workspace / "params.yaml")
    valid = default_cells(params)
    cells = [job.name for job in grid_jobs(list(cells) if cells else valid, valid)[1:]]
    cache_dir = Path(_dvc(workspace, "cache", "dir"))
    done = trained_cells(workspace, cells)
    return estimate(workspace, params, cells, done, parallel, cache_dir)


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
    _dvc(worker, "config", "--local", "core.no_scm", "true")
    _dvc(worker, "config", "--local", "cache.dir", cache_dir)


class Output:
    """Lines from several jobs at once, each prefixed with its job's name."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def line(self, job: str, text: str) -> None:
        self._stream.write(f"[{job}] {text.rstrip()}\n")
        self._stream.flush()


def _stream(command: Sequence[str], cwd: Path, env: dict[str, str], line: Callable[[str], None]):
    """Run `command`, passing each line of its output to `line`; its exit status."""
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        for text in process.stdout:
            line(text)
    return process.returncode


def _repro_command(timings: Path, dvc_args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "safetydrift.cli", "repro", "--timings", str(timings), "--",
            *dvc_args]  # fmt: skip


def _run_job(
    job: Job, workspace: Path, timings_dir: Path, env: dict[str, str], out: Output
) -> None:
    job.timings = timings_dir / f"{job.name}.json"
    with (timings_dir / f"{job.name}.log").open("w", encoding="utf-8") as log:

        def line(text: str) -> None:
            log.write(text)
            out.line(job.name, text)

        job.returncode = _stream(_repro_command(job.timings, job.targets), workspace, env, line)


def delete_intermediate_checkpoints(workspace: Path, cell: str) -> None:
    """Once a cell's job has succeeded, its generations are in DVC's cache and run-cache: the
    checkpoints `train.keep_checkpoints: final` set aside for them have served
    (docs/running.md, Disk)."""
    if cell != BASE_CELL:
        shutil.rmtree(workspace / INTERMEDIATE_DIR / cell, ignore_errors=True)


def keep_attempt(job: Job, attempt: int) -> None:
    """Keep a failed attempt's timings and log as JOB.attemptN.*: the next attempt writes JOB.*."""
    assert job.timings is not None
    for suffix in (".json", ".log"):
        path = job.timings.with_suffix(suffix)
        if path.exists():
            path.replace(path.with_name(f"{job.name}.attempt{attempt}{suffix}"))


def _repro_here(
    name: str,
    targets: Sequence[str],
    workspace: Path,
    timings_dir: Path,
    env: dict[str, str],
    out: Output,
) -> Job:
    job = Job(name, list(targets))
    _run_job(job, workspace, timings_dir, env, out)
    return job


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
    returncode = _stream(_repro_command(timings, [*pull, *targets]), worker, cell_env, line)
    if returncode == 0 and not here:
        push = [sys.executable, "-m", "dvc", "push", "--run-cache"]
        returncode = _stream(push, worker, cell_env, line)
    if returncode == 0:
        delete_intermediate_checkpoints(worker, name)
    recorded = json.loads(timings.read_text(encoding="utf-8")) if timings.exists() else None
    timings.unlink(missing_ok=True)
    shutil.rmtree(worker, ignore_errors=True)
    return {
        "returncode": returncode,
        "timings": recorded,
        "log": "".join(lines),
        "node": node,
        "gpus": gpus,
        "main_node": here,
    }


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
    cache_dir = _dvc(workspace, "cache", "dir")
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
    records them in dvc.lock, without running anything again. One at a time (DVC locks the
    workspace), while the other cells go on. What a cell ran on another node comes from the DVC
    remote, run-cache and outputs (`--pull`).
    """
    targets = job.targets if from_main_node else ["--pull", *job.targets]
    return _repro_here(f"restore-{job.name}", targets, workspace, timings_dir, env, out)


def check_cluster(workspace: Path, mlflow_uri: str) -> int:
    """Nodes of the Ray cluster; cells on other nodes need a DVC remote, and on other machines
    an MLflow server, that every node reaches."""
    import ray

    nodes = [node for node in ray.nodes() if node["Alive"]]
    remote = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "default"],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=False,
    )
    if len(nodes) > 1 and (remote.returncode != 0 or not remote.stdout.strip()):
        raise ValueError(
            f"the Ray cluster has {len(nodes)} nodes but {workspace} has no default DVC remote: "
            "cells on other nodes exchange their inputs and results through one "
            "(`dvc remote add -d NAME URL`, reachable from every node)"
        )
    machines = {node["NodeManagerAddress"] for node in nodes}
    uri = mlflow_uri
    if len(machines) > 1 and (uri.startswith(("sqlite:", "file:")) or "://" not in uri):
        raise ValueError(
            f"the Ray cluster spans {len(machines)} machines but MLFLOW_TRACKING_URI is the local "
            f"store {uri}: set it to an MLflow server every machine reaches"
        )
    return len(nodes)


@dataclass
class Placement:
    """How the cells share the machines: each holds `share` of a GPU, `parallel` at a time, on
    the `nodes` of a Ray cluster (0: one at a time here, without Ray)."""

    share: float
    parallel: int
    nodes: int


def place_cells(
    address: str | None,
    gpus: str | None,
    jobs: int,
    num_processes: int,
    requested_share: float | None,
    n_jobs: int,
) -> Placement:
    """Start Ray where cells will run side by side (see `gpus_per_cell`, `cells_at_once`)."""
    if address is not None:
        if gpus is not None:
            raise ValueError("--gpus picks GPUs of this machine; on a cluster (--address) Ray does")
        resources = start_ray(address)
        share = gpus_per_cell(resources["GPU"], jobs, num_processes, requested_share)
        slots = cells_at_once(resources["GPU"], share, int(resources["CPU"]))
        return Placement(share, min(slots, n_jobs), nodes=1)
    if gpus is not None:
        # Ray gives out the GPUs CUDA_VISIBLE_DEVICES lists, by their ids.
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    gpu_count = len(visible_gpus(gpus))
    share = gpus_per_cell(gpu_count, jobs, num_processes, requested_share)
    parallel = min(cells_at_once(gpu_count, share, jobs), n_jobs)
    if parallel == 1:
        return Placement(share, 1, nodes=0)
    start_ray(None, cpus=parallel, gpus=gpu_count)
    return Placement(share, parallel, nodes=1)


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
) -> GridRun:
    """Run the grid's cells (all of them by default), side by side as Ray tasks.

    On this machine (no `address`), `jobs` cells at a time without GPUs; with GPUs (`gpus`, see
    `visible_gpus`) as many as they hold at `gpus_per_cell_share` each (see `gpus_per_cell`).
    One at a time, the cells run in the main workspace itself, without Ray.
    After the shared inputs are prepared and before any training, the disk the cells will fill
    is estimated; a disk too small stops the run (DiskSpaceError) unless `check_disk` is false.
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
        prepare = _repro_here("prepare", prepare_args, workspace, timings_dir, env, out)
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
                _run_job(job, workspace, timings_dir, env, out)
                if job.returncode == 0:
                    delete_intermediate_checkpoints(workspace, job.name)
        else:
            if placement.nodes > 1:
                # Cells on other nodes find the shared inputs on the DVC remote.
                _dvc(workspace, "push", *prepare_args)
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
            ordered = slowest_first(queue_jobs)
            run_cells(workspace, ordered, placement.share, retries, timings_dir, task_env, out,
                      restore)  # fmt: skip
    finally:
        if placement.nodes:
            import ray

            ray.shutdown()
    done.extend(queue_jobs)
    # --single-item: the report covers the cells that have metrics; it must not start training
    # the cells this run was not asked for (or that failed).
    done.append(
        _repro_here("report", ["--single-item", "report"], workspace, timings_dir, env, out)
    )
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
    from safetydrift.repro import combine

    files = [job.timings for job in run.jobs if job.timings is not None and job.timings.exists()]
    combined = combine(files)
    summary = {
        "parallel_jobs": run.parallel,
        "gpus_per_cell": run.gpus_per_cell,
        "elapsed_seconds": run.wall_seconds,
        "failed": run.failed,
        "placement": {
            job.name: {"node": job.node, "gpus": job.gpus} for job in run.jobs if job.node
        },
        **combined,
    }
    write_json(path, summary)
    return summary
