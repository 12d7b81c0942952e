"""Which jobs the grid runs, and in what order: the cells of params.yaml's grid (one at a time,
Figure 1's first), the shared inputs prepared before them, and the order of cells run side by
side (slowest methods first, or the shortest schedule of a previous grid's measured times).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from safetydrift.cells import BASE_CELL, grid_seeds, study_cells
from safetydrift.grid.jobs import Job
from safetydrift.params import get

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
    Each job also judges the cell on every unit (a set or a group of sets) of `evaluations.run`."""
    unknown = [cell for cell in cells if cell not in valid]
    if unknown:
        raise ValueError(
            f"unknown grid cell(s) {', '.join(unknown)}: params.yaml's grid has {', '.join(valid)}"
        )
    base = ["judge_harm_base", "eval_chrf_base", "validate_judges"]
    jobs = [Job(BASE_CELL, base + [f"judge_evaluation_base@{s}" for s in evaluations])]
    # judge_harm depends on eval_refusal, which depends on the generations and the training;
    # judge_evaluation on the unit's generations, which depend on the training too.
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


def measured_seconds(directory: Path, jobs: Sequence[Job]) -> dict[str, float]:
    """Each job's wall seconds where a previous grid recorded them (`DIR/JOB.json`, as `--timings`
    writes them), for the jobs that succeeded there."""
    if not directory.is_dir():
        raise ValueError(f"--durations {directory}: not a directory of a grid's timings")
    seconds = {}
    for job in jobs:
        path = directory / f"{job.name}.json"
        if not path.is_file():
            continue
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
            if recorded.get("returncode") == 0:
                seconds[job.name] = float(recorded["wall_seconds"])
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(
                f"{path}: expected a grid job's timings (JSON with `returncode` and "
                f"`wall_seconds`): {error}"
            ) from None
    return seconds


def makespan(order: Sequence[Job], seconds: Mapping[str, float], parallel: int) -> float:
    """When the last job ends if each starts, in `order`, as soon as one of `parallel` slots is
    free (as Ray starts the tasks it was given) and takes `seconds[job]`."""
    free_at = [0.0] * max(1, parallel)
    for job in order:
        heapq.heappush(free_at, heapq.heappop(free_at) + seconds[job.name])
    return max(free_at)


def planned_order(jobs: Sequence[Job], seconds: Mapping[str, float], parallel: int) -> list[Job]:
    """The order for `parallel` at a time: `slowest_first`, improved with the jobs' measured
    `seconds` (a previous grid's) by moving one job at a time while that shortens the simulated
    schedule (`makespan`).

    Neither longest-first nor the methods' ranks alone fit the grid: a cell's time depends on its
    learning rate too (cells that still answer take longest to judge), and with twice as many
    jobs as slots plus one, longest-first leaves the shortest job, the base model, as the
    straggler. A job without a measured time counts as long as the longest, so that the schedule
    leaves room for it.
    """
    order = slowest_first(jobs)
    if not seconds:
        return order
    longest = max(seconds.values())
    cost = {job.name: seconds.get(job.name, longest) for job in order}
    while True:
        best = makespan(order, cost, parallel)
        shorter = (c for c in _one_job_moved(order) if makespan(c, cost, parallel) < best - 1e-6)
        moved = next(shorter, None)
        if moved is None:
            return order
        order = moved


def _one_job_moved(order: list[Job]) -> Iterator[list[Job]]:
    """Every order made by taking one job out of `order` and putting it back elsewhere."""
    for i, job in enumerate(order):
        rest = order[:i] + order[i + 1 :]
        for k in range(len(order)):
            yield [*rest[:k], job, *rest[k:]]
