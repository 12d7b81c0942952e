"""`safetydrift grid`: the study's whole grid through `dvc repro`, cell by cell, N cells at once.

One cell of the stand-in study leaves an H100 mostly idle: a training step of a 0.5B model at
batch 8, or one decoding step, is bound by Python and kernel launches, not by the GPU. So the
grid runs N cells side by side. DVC takes a lock per workspace, so each of the N workers gets
its own copy of the workspace's pipeline files (under `.dvc/tmp/grid/`, which neither DVC nor
git looks into), configured to share the main workspace's DVC cache and MLflow store. DVC's
run-cache records every stage a worker runs; the `dvc repro` that follows in the main workspace
finds each of them there and checks their outputs out instead of running them, so the main
workspace ends with the same `dvc.lock` a one-at-a-time run writes.

Order: the shared inputs first (prepared data, base model), in the main workspace. One at a time,
the base model's evaluations and then the cells, seed by seed in `grid.seeds` order (a whole grid,
then the next seed's), within a seed those at `report.fixed_lr` (Figure 1) first and then the other
learning rates, largest first, so that a run cut short has the figures' most telling cells. N
at a time, the slowest methods first and in turns (QLoRA's eager 4-bit training, LoRA, DPO, full
fine-tuning; then again; the base model last), so that the last cells
to finish are short ones and one method's cells do not all want the same resource at once. A
cell that runs out of GPU memory beside the others goes to the back of the queue, once. Each
cell a worker finishes is restored into the main workspace at once, while the other cells run;
then the report, from whatever metrics exist. A run cut short keeps every finished cell, and
running the command again resumes: DVC skips what `dvc.lock` or its run-cache has. A cell that
fails is named at the end and does not stop the others.

Before any training, the disk the cells will fill is estimated (`safetydrift.disk`) and a disk
too small stops the run. Side by side, each worker's cells see one GPU (CUDA_VISIBLE_DEVICES),
the GPUs taken round-robin.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from safetydrift.cells import BASE_CELL, grid_seeds, study_cells
from safetydrift.disk import DiskEstimate, describe, estimate, refuse_if_short
from safetydrift.evaluation_sets import evaluation_names
from safetydrift.io import write_json
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
# Copied into each worker besides the files git lists: DVC's own configuration and its record.
DVC_FILES = (".dvc/config", ".dvc/config.local", "dvc.yaml", "dvc.lock", "params.yaml")


@dataclass
class Job:
    """One `safetydrift repro` of the grid: a cell's two evaluations (DVC trains it first)."""

    name: str
    targets: list[str]
    returncode: int | None = None
    timings: Path | None = None
    attempts: int = 0


@dataclass
class GridRun:
    jobs: list[Job]
    parallel: int
    wall_seconds: float = 0.0
    failed: list[str] = field(default_factory=list)


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


def gpu_assignment(workers: int, gpus: Sequence[str], per_cell: int = 1) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each worker: its cells' GPUs, round-robin, so that N workers
    share G GPUs (several small cells on one GPU when N > G). `per_cell` is
    `train.num_processes`: a cell trained on several GPUs gets its own group of them. None (the
    environment as it is) where there is no GPU to place cells on."""
    if not gpus:
        return [None] * workers
    if per_cell > len(gpus):
        raise ValueError(
            f"`train.num_processes` is {per_cell} but only {len(gpus)} GPU(s) are available "
            f"to the grid ({','.join(gpus)})"
        )
    groups = [
        gpus[start : start + per_cell] for start in range(0, len(gpus) - per_cell + 1, per_cell)
    ]
    return [",".join(groups[index % len(groups)]) for index in range(workers)]


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


def link_parent_paths(workspace: Path, worker: Path) -> None:
    """Make `../NAME` in params mean in a worker what it means in the workspace: the worker lives
    deeper (`.dvc/tmp/grid/worker-N`), so each such NAME beside it links to the workspace's."""
    for name in parent_paths(load_params(workspace / "params.yaml")):
        target = workspace.parent / name
        link = worker.parent / name
        if target.exists() and not link.exists():
            link.symlink_to(target)


def make_worker(workspace: Path, worker: Path, cache_dir: str) -> None:
    """A fresh copy of the workspace's pipeline files that shares its DVC cache."""
    if worker.exists():
        shutil.rmtree(worker)
    names = {*workspace_files(workspace), *(Path(name) for name in DVC_FILES)}
    for name in sorted(names):
        source = workspace / name
        if source.is_file():
            (worker / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, worker / name)
    link_parent_paths(workspace, worker)
    if get(load_params(workspace / "params.yaml"), "train.keep_checkpoints", "all") == "final":
        # Checkpoints set aside for a cell's generations stay in the main workspace: a cell
        # retried in another worker (out of GPU memory) restores its training from DVC's
        # run-cache, which holds the final checkpoint only, and finds the others there.
        shared = workspace / INTERMEDIATE_DIR
        shared.mkdir(parents=True, exist_ok=True)
        (worker / INTERMEDIATE_DIR).parent.mkdir(parents=True, exist_ok=True)
        (worker / INTERMEDIATE_DIR).symlink_to(shared, target_is_directory=True)
    # Git would see the worker as part of the main repository: DVC must not look for it.
    _dvc(worker, "config", "--local", "core.no_scm", "true")
    _dvc(worker, "config", "--local", "cache.dir", cache_dir)


class _Output:
    """Lines from several jobs at once, each prefixed with its job's name."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def line(self, job: str, text: str) -> None:
        with self._lock:
            self._stream.write(f"[{job}] {text.rstrip()}\n")
            self._stream.flush()


def _run_job(
    job: Job, workspace: Path, timings_dir: Path, env: dict[str, str], out: _Output
) -> None:
    job.timings = timings_dir / f"{job.name}.json"
    command = [
        sys.executable, "-m", "safetydrift.cli", "repro", "--timings", str(job.timings),
        "--", *job.targets,
    ]  # fmt: skip
    log_path = timings_dir / f"{job.name}.log"
    with (
        log_path.open("w", encoding="utf-8") as log,
        subprocess.Popen(
            command,
            cwd=workspace,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as process,
    ):
        assert process.stdout is not None
        for text in process.stdout:
            log.write(text)
            out.line(job.name, text)
    job.returncode = process.returncode


def delete_intermediate_checkpoints(workspace: Path, job: Job) -> None:
    """Once a cell's job has succeeded, its generations are in DVC's cache and run-cache: the
    checkpoints `train.keep_checkpoints: final` set aside for them have served
    (docs/running.md, Disk)."""
    if job.name != BASE_CELL:
        shutil.rmtree(workspace / INTERMEDIATE_DIR / job.name, ignore_errors=True)


def keep_first_attempt(job: Job) -> None:
    """Keep a failed attempt's timings and log as JOB.attempt1.*: the retry writes JOB.*."""
    assert job.timings is not None
    for suffix in (".json", ".log"):
        path = job.timings.with_suffix(suffix)
        if path.exists():
            path.replace(path.with_name(f"{job.name}.attempt1{suffix}"))


def _repro_here(
    name: str,
    targets: Sequence[str],
    workspace: Path,
    timings_dir: Path,
    env: dict[str, str],
    out: _Output,
) -> Job:
    job = Job(name, list(targets))
    _run_job(job, workspace, timings_dir, env, out)
    return job


def run_grid(
    workspace: Path,
    cells: Sequence[str] | None = None,
    jobs: int = 1,
    timings_dir: Path = Path("reports/timings"),
    stream: TextIO = sys.stdout,
    check_disk: bool = True,
    gpus: str | None = None,
) -> GridRun:
    """Run the grid's cells (all of them by default) with `jobs` cells at a time.

    After the shared inputs are prepared and before any training, the disk the cells will fill
    is estimated; a disk too small stops the run (DiskSpaceError) unless `check_disk` is false.
    Side by side, each worker's cells run on its own GPU (`gpus`, see `visible_gpus`).
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    workspace = workspace.resolve()
    params = load_params(workspace / "params.yaml")
    valid = default_cells(params)
    evaluations = evaluation_names(params)
    queue_jobs = grid_jobs(list(cells) if cells else valid, valid, evaluations)
    timings_dir = (workspace / timings_dir).resolve()
    timings_dir.mkdir(parents=True, exist_ok=True)
    out = _Output(stream)
    env = dict(os.environ)
    # Workers log to the main workspace's MLflow store (a SQLite file by default; MLflow waits
    # on its lock), so a stage restored from DVC's run-cache still has its MLflow run.
    env["MLFLOW_TRACKING_URI"] = tracking_uri(workspace)
    started = time.perf_counter()
    done: list[Job] = []

    prepare = _repro_here("prepare", prepare_stages(evaluations), workspace, timings_dir, env, out)
    done.append(prepare)
    if prepare.returncode != 0:
        return _finish(done, 1, started)

    parallel = min(jobs, len(queue_jobs))
    found = disk_estimate(workspace, [job.name for job in queue_jobs[1:]], parallel)
    for text in describe(found).splitlines():
        out.line("disk", text)
    if check_disk:
        refuse_if_short(found)
    if parallel == 1:
        for job in queue_jobs:
            _run_job(job, workspace, timings_dir, env, out)
            if job.returncode == 0:
                delete_intermediate_checkpoints(workspace, job)
    else:
        cache_dir = _dvc(workspace, "cache", "dir")
        pending: queue.Queue[Job] = queue.Queue()
        for job in slowest_first(queue_jobs):
            pending.put(job)
        finished: queue.Queue[Job | None] = queue.Queue()

        per_cell = int(get(params, "train.num_processes", 1))
        placement = gpu_assignment(parallel, visible_gpus(gpus), per_cell)

        def work(worker: Path, devices: str | None) -> None:
            try:
                make_worker(workspace, worker, cache_dir)
            except (OSError, RuntimeError) as error:
                out.line(worker.name, f"could not set up the worker: {error}")
                return
            worker_env = env if devices is None else {**env, "CUDA_VISIBLE_DEVICES": devices}
            if devices is not None:
                out.line(worker.name, f"cells on GPU {devices}")
            while True:
                try:
                    job = pending.get_nowait()
                except queue.Empty:
                    return
                _run_job(job, worker, timings_dir, worker_env, out)
                if job.returncode == 0:
                    delete_intermediate_checkpoints(worker, job)
                    finished.put(job)
                elif job.attempts == 0 and ran_out_of_gpu_memory(job):
                    # Side by side, cells may together need more GPU memory than there is. The
                    # failed stage left nothing DVC would keep; the cell goes to the back of the
                    # queue once, to run when fewer cells are left beside it.
                    job.attempts += 1
                    keep_first_attempt(job)
                    out.line(job.name, "out of GPU memory beside other cells: queued once more")
                    pending.put(job)

        def restore() -> None:
            # Every stage a worker ran is in the run-cache: this checks its outputs out here and
            # records them in dvc.lock, without running anything again. One `dvc repro` at a
            # time (DVC locks the workspace), while the workers go on with other cells.
            while (job := finished.get()) is not None:
                name = f"restore-{job.name}"
                restored.append(_repro_here(name, job.targets, workspace, timings_dir, env, out))

        restored: list[Job] = []
        restorer = threading.Thread(target=restore)
        restorer.start()
        workers = [workspace / WORKERS_DIR / f"worker-{index}" for index in range(parallel)]
        threads = [
            threading.Thread(target=work, args=(worker, devices))
            for worker, devices in zip(workers, placement, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        finished.put(None)
        restorer.join()
        done.extend(restored)
        for worker in workers:
            shutil.rmtree(worker, ignore_errors=True)
    done.extend(queue_jobs)
    # --single-item: the report covers the cells that have metrics; it must not start training
    # the cells this run was not asked for (or that failed).
    done.append(
        _repro_here("report", ["--single-item", "report"], workspace, timings_dir, env, out)
    )
    return _finish(done, parallel, started)


def _finish(done: list[Job], parallel: int, started: float) -> GridRun:
    run = GridRun(jobs=done, parallel=parallel)
    run.wall_seconds = round(time.perf_counter() - started, 1)
    # A job no worker reached (its worker could not be set up) failed too.
    run.failed = [job.name for job in done if job.returncode != 0]
    return run


def write_summary(run: GridRun, path: Path) -> dict[str, Any]:
    """The grid's end-to-end wall time beside every stage's, as `safetydrift timings` sums them."""
    from safetydrift.timing import combine

    files = [job.timings for job in run.jobs if job.timings is not None and job.timings.exists()]
    combined = combine(files)
    summary = {
        "parallel_jobs": run.parallel,
        "elapsed_seconds": run.wall_seconds,
        "failed": run.failed,
        **combined,
    }
    write_json(path, summary)
    return summary
