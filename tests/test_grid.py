"""`safetydrift grid`: the order of its jobs, the workspace of each cell, and Ray placing cells
on GPUs and on the nodes of a cluster (real Ray, real DVC, on the CPU).

The grid itself (two cells side by side, restored from DVC's run-cache) runs in
test_pipeline_dvc.py.
"""

import io
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import copy_project, dvc, run_cli, smoke_copy, stage_env

from safetydrift.grid.jobs import Job, Output, keep_attempt, ran_out_of_gpu_memory
from safetydrift.grid.placement import (
    cells_at_once,
    check_cluster,
    gpus_per_cell,
    start_ray,
    visible_gpus,
)
from safetydrift.grid.plan import (
    default_cells,
    grid_jobs,
    makespan,
    measured_seconds,
    planned_order,
    prepare_stages,
    slowest_first,
)
from safetydrift.grid.ray_tasks import run_cells
from safetydrift.grid.workspaces import (
    NODE_CACHE,
    WORKERS_DIR,
    make_worker,
    pipeline_files,
    restore_cell,
    workspace_files,
)
from safetydrift.params import ParamError


def test_grid_order_puts_figure_1_first_then_larger_rates():
    params = {
        "grid": {"methods": ["full", "lora"], "learning_rates": [1e-4, 5e-5, 1e-5], "seeds": [42]},
        "report": {"fixed_lr": 5e-5},
    }
    cells = default_cells(params)
    assert cells == [
        "full-5e-05-42",
        "lora-5e-05-42",
        "full-0.0001-42",
        "lora-0.0001-42",
        "full-1e-05-42",
        "lora-1e-05-42",
    ]
    jobs = grid_jobs(cells[:1], cells)
    assert [job.targets for job in jobs] == [
        ["judge_harm_base", "eval_chrf_base", "validate_judges"],
        ["judge_harm@full-5e-05-42", "eval_chrf@full-5e-05-42"],
    ]
    with pytest.raises(ValueError, match="unknown grid cell.*lora-0.5.*params.yaml's grid has"):
        grid_jobs(["lora-0.5"], cells)


def test_the_grid_runs_seed_by_seed_each_seed_a_whole_grid():
    params = {
        "grid": {"methods": ["full", "lora"], "learning_rates": [1e-4, 5e-5], "seeds": [7, 3]},
        "report": {"fixed_lr": 5e-5},
    }
    # In `grid.seeds` order, not sorted: the seed listed first is the replicate a run cut
    # short has whole.
    assert default_cells(params) == [
        "full-5e-05-7", "lora-5e-05-7", "full-0.0001-7", "lora-0.0001-7",
        "full-5e-05-3", "lora-5e-05-3", "full-0.0001-3", "lora-0.0001-3",
    ]  # fmt: skip
    # Every cell of every seed is a job of its own, judged on every evaluation set.
    jobs = grid_jobs(["lora-5e-05-3"], default_cells(params), ["harmbench"])
    assert jobs[1].targets == [
        "judge_harm@lora-5e-05-3",
        "eval_chrf@lora-5e-05-3",
        "judge_evaluation@harmbench-lora-5e-05-3",
    ]
    with pytest.raises(ValueError, match="unknown grid cell.*lora-5e-05-42"):
        grid_jobs(["lora-5e-05-42"], default_cells(params))


@pytest.mark.parametrize(
    ("grid", "train", "message"),
    [
        ({}, {}, "missing key `grid.seeds`"),
        ({"seeds": []}, {}, "`grid.seeds` must be a non-empty list"),
        ({"seeds": 42}, {}, "`grid.seeds` must be a non-empty list"),
        ({"seeds": [42, "x"]}, {}, "`grid.seeds` holds 'x'; a seed is a whole number"),
        ({"seeds": [-1]}, {}, "`grid.seeds` holds -1"),
        ({"seeds": [True]}, {}, "`grid.seeds` holds True"),
        ({"seeds": [1, 2, 1]}, {}, "`grid.seeds` lists 1 more than once"),
        # One source of truth: the key `grid.seeds` replaced is an error, not an alias.
        ({"seeds": [42]}, {"seed": 42}, r"`train.seed` is no longer read.*grid.seeds"),
    ],
)
def test_bad_seeds_are_named_errors(grid, train, message):
    params = {
        "grid": {"methods": ["full"], "learning_rates": [1e-4], **grid},
        "train": train,
        "report": {"fixed_lr": 1e-4},
    }
    with pytest.raises(ParamError, match=message):
        default_cells(params)


def test_every_job_judges_its_cell_on_every_evaluation_set():
    cells = ["full-5e-05", "lora-5e-05"]
    jobs = grid_jobs(cells[1:], cells, ["harmbench", "benign-edgy"])
    assert [job.targets for job in jobs] == [
        [
            "judge_harm_base",
            "eval_chrf_base",
            "validate_judges",
            "judge_evaluation_base@harmbench",
            "judge_evaluation_base@benign-edgy",
        ],
        [
            "judge_harm@lora-5e-05",
            "eval_chrf@lora-5e-05",
            "judge_evaluation@harmbench-lora-5e-05",
            "judge_evaluation@benign-edgy-lora-5e-05",
        ],
    ]
    assert prepare_stages(["harmbench"])[-1] == "prepare_evaluation@harmbench"


def test_side_by_side_the_slowest_methods_start_first_in_turns_and_the_base_model_last():
    names = ["full-5e-05", "dpo-5e-05", "sft2-5e-05", "qlora-5e-05", "lora-5e-05", "qlora-1e-05"]
    jobs = slowest_first(grid_jobs(names, names))
    assert [job.name for job in jobs] == [
        "sft2-5e-05",  # a method without a measured rank: early rather than a straggler
        "qlora-5e-05",
        "lora-5e-05",
        "dpo-5e-05",
        "full-5e-05",
        "qlora-1e-05",  # the second turn: one method's cells do not all run at once
        "base",
    ]


def test_with_a_previous_grids_times_the_cells_start_in_the_order_of_the_shortest_schedule(
    tmp_path,
):
    names = ["qlora-1e-05", "lora-1e-05", "dpo-1e-05", "full-1e-05"]
    jobs = grid_jobs(names, names)
    seconds = {"qlora-1e-05": 50, "lora-1e-05": 40, "dpo-1e-05": 30, "full-1e-05": 20, "base": 20}
    for name, wall in seconds.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"returncode": 0, "wall_seconds": wall}))
    # What the previous grid restored, prepared or failed to run is not a cell's time.
    (tmp_path / "restore-qlora-1e-05.json").write_text('{"returncode": 0, "wall_seconds": 9}')
    (tmp_path / "dpo-1e-05.attempt1.json").write_text('{"returncode": 1, "wall_seconds": 3}')
    assert measured_seconds(tmp_path, jobs) == seconds

    # Slowest methods first, the base model last: 90 s on two slots, where 80 s is possible
    # ({qlora, dpo} beside {lora, full, base}).
    assert makespan(slowest_first(jobs), seconds, 2) == 90
    ordered = planned_order(jobs, seconds, 2)
    assert makespan(ordered, seconds, 2) == 80
    assert sorted(job.name for job in ordered) == sorted(seconds)
    # Without measured times, the order is slowest_first's.
    assert planned_order(jobs, {}, 2) == slowest_first(jobs)


def test_a_job_the_previous_grid_did_not_time_counts_as_its_longest_and_bad_times_are_named(
    tmp_path,
):
    names = ["qlora-1e-05", "lora-1e-05", "dpo-1e-05", "full-1e-05"]
    jobs = grid_jobs(names, names)
    # A failed job's time is not its time: it is unknown, and counts as the longest (50 s).
    (tmp_path / "qlora-1e-05.json").write_text('{"returncode": 1, "wall_seconds": 5}')
    for name, wall in {"lora-1e-05": 50, "dpo-1e-05": 10, "full-1e-05": 10, "base": 30}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"returncode": 0, "wall_seconds": wall}))
    seconds = measured_seconds(tmp_path, jobs)
    assert "qlora-1e-05" not in seconds
    ordered = planned_order(jobs, seconds, 2)
    assert makespan(ordered, {**seconds, "qlora-1e-05": 50}, 2) == 80

    (tmp_path / "base.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"base\.json: expected a grid job's timings"):
        measured_seconds(tmp_path, jobs)
    with pytest.raises(ValueError, match="--durations .*missing: not a directory"):
        measured_seconds(tmp_path / "missing", jobs)


def test_grid_durations_that_are_not_a_timings_directory_stop_it_before_any_work(tmp_path):
    project = smoke_copy(tmp_path / "project")
    done = run_cli(project, "grid", "--jobs", "2", "--durations", "no-such-dir")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --durations no-such-dir: not a directory of a grid's timings"
    )
    assert not (project / "reports" / "timings").exists()  # no job was started


def test_a_cell_out_of_gpu_memory_is_recognised_and_its_first_attempt_kept(tmp_path):
    job = Job("dpo-5e-05", [], returncode=1, timings=tmp_path / "dpo-5e-05.json")
    job.timings.write_text("{}")
    log = tmp_path / "dpo-5e-05.log"
    log.write_text("error: CUDA out of memory. Tried to allocate 20.00 MiB.\n")
    assert ran_out_of_gpu_memory(job)
    keep_attempt(job, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dpo-5e-05.attempt1.json",
        "dpo-5e-05.attempt1.log",
    ]
    log.write_text("ValueError: unknown method\n")
    assert not ran_out_of_gpu_memory(job)


def test_a_worker_without_git_gets_the_pipeline_files_and_the_shared_cache(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    project = copy_project(tmp_path / "project")
    shutil.rmtree(project / ".git")  # e.g. a tarball of the repository on a GPU machine
    files = {str(path) for path in workspace_files(project)}
    assert {"stages/train.py", "src/safetydrift/grid/workspaces.py", "presets/smoke.yaml"} <= files
    assert not any(name.startswith(("models/", "data/", ".dvc/cache")) for name in files)

    monkeypatch.setenv("PATH", stage_env()["PATH"])
    # The paper preset reads `../shared/data/judge-validation/...`: beside the project here.
    (tmp_path / "shared" / "data").mkdir(parents=True)
    cache = project / ".dvc" / "cache"
    worker = project / ".dvc" / "tmp" / "grid" / "full-0.001"
    make_worker(worker, pipeline_files(project), project, str(cache))
    assert (worker / ".." / "shared").resolve() == (project / ".." / "shared").resolve()
    assert (worker / "dvc.yaml").read_text() == (project / "dvc.yaml").read_text()
    assert (worker / "src/safetydrift/training/run.py").exists()
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "config", "--local", "--list"],
        cwd=worker,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "core.no_scm=true" in shown and f"cache.dir={cache}" in shown


def test_cells_share_the_gpus_as_asked(monkeypatch):
    # Five cells on one GPU, or the GPUs shared among --jobs cells, at most one GPU each.
    assert gpus_per_cell(1, jobs=1, requested=0.2) == 0.2 and cells_at_once(1, 0.2, 1) == 5
    assert gpus_per_cell(4, jobs=6) == 0.6666 and cells_at_once(4, 0.6666, 6) == 6
    assert gpus_per_cell(8, jobs=1) == 1.0 and cells_at_once(8, 1.0, 1) == 8
    assert gpus_per_cell(1, jobs=1, requested=0.29) == 0.29  # Ray counts in steps of 1e-4
    # A cell trained on two GPUs (`train.num_processes: 2`) holds two whole ones.
    assert gpus_per_cell(5, jobs=3, num_processes=2) == 2.0 and cells_at_once(5, 2.0, 3) == 2
    assert gpus_per_cell(0, jobs=3) == 0.0 and cells_at_once(0, 0.0, 3) == 3  # CPU: --jobs
    with pytest.raises(ValueError, match="`train.num_processes` is 4 but only 2 GPU"):
        gpus_per_cell(2, jobs=1, num_processes=4)
    with pytest.raises(ValueError, match="--gpus-per-cell is 0.5 but `train.num_processes` is 2"):
        gpus_per_cell(2, jobs=1, num_processes=2, requested=0.5)
    with pytest.raises(ValueError, match="--gpus-per-cell must be a share of one GPU"):
        gpus_per_cell(4, jobs=1, requested=1.5)
    with pytest.raises(ValueError, match="--gpus-per-cell is 0.5 but the grid has no GPU"):
        gpus_per_cell(0, jobs=1, requested=0.5)
    # The GPUs the user left visible are the ones the grid shares out, by their ids.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"] and visible_gpus("5, 7") == ["5", "7"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    import torch

    assert visible_gpus() == [str(index) for index in range(torch.cuda.device_count())]


RECORD_GPU = """import os, pathlib, sys, time

# Wait for the other cells: side by side, Ray must give them different GPUs.
started = pathlib.Path({barrier!r})
(started / sys.argv[1]).touch()
deadline = time.time() + 60
while len(list(started.iterdir())) < {cells} and time.time() < deadline:
    time.sleep(0.1)
base = pathlib.Path("base.txt").read_text() if pathlib.Path("base.txt").exists() else ""
pathlib.Path("out").mkdir(exist_ok=True)
seen = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
pathlib.Path("out", sys.argv[1] + ".txt").write_text(base + seen)
# As the judge stages write their seconds: beside DVC's outputs, not among them.
pathlib.Path("timings", "cell").mkdir(parents=True, exist_ok=True)
pathlib.Path("timings", "cell", sys.argv[1] + ".json").write_text('{{"seen": "' + seen + '"}}')
"""


def tiny_project(path: Path, cells: list[str], barrier: Path) -> Path:
    """A git + DVC project whose stage `cell@NAME` writes the GPUs it saw to out/NAME.txt, after
    `base` (a shared input, as the grid's prepare stages are)."""
    path.mkdir()
    barrier.mkdir()
    (path / "record.py").write_text(RECORD_GPU.format(barrier=str(barrier), cells=len(cells)))
    pipeline = {
        "stages": {
            "base": {"cmd": "python -c \"open('base.txt', 'w').write(open('seed').read())\"",
                     "deps": ["seed"], "outs": ["base.txt"]},
            "cell": {
                "foreach": cells,
                "do": {"cmd": "python record.py ${item}", "deps": ["record.py", "base.txt"],
                       "outs": ["out/${item}.txt"]},
            },
        }
    }  # fmt: skip
    (path / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    (path / "params.yaml").write_text("{}\n")
    (path / "seed").write_text("base ")
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=path, check=True)
    dvc(path, "repro", "base")
    return path


@pytest.fixture
def local_ray(monkeypatch):
    """Ray on this machine as the grid starts it, with two GPUs it believes in (none are there:
    Ray only counts them and sets each task's CUDA_VISIBLE_DEVICES)."""
    for name in (
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
        "RAY_USAGE_STATS_ENABLED",
        "RAY_DEDUP_LOGS",
        "RAY_COLOR_PREFIX",
        "CUDA_VISIBLE_DEVICES",
    ):
        monkeypatch.delenv(name, raising=False)  # fmt: skip
    monkeypatch.setenv("PATH", stage_env()["PATH"])  # the stages' python, for Ray's workers
    yield start_ray(None, cpus=4, gpus=2)
    import ray  # after start_ray, which binds Ray to 127.0.0.1 before the import

    ray.shutdown()


def test_ray_gives_each_cell_its_share_of_a_gpu_and_dvc_runs_with_it(tmp_path, local_ray):
    import ray

    assert local_ray == {"CPU": 4.0, "GPU": 2.0}
    # Everything Ray started listens on this machine only.
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    cells = ["a", "b", "c", "d"]
    project = tiny_project(tmp_path / "project", cells, tmp_path / "started")
    timings = tmp_path / "timings"
    timings.mkdir()
    jobs = [Job(cell, [f"cell@{cell}"]) for cell in cells]
    out, restored = Output(io.StringIO()), []

    def restore(job, from_main_node):
        assert from_main_node
        restored.append(restore_cell(project, job, from_main_node, timings, {**stage_env()}, out))

    run_cells(project, jobs, 0.5, 0, timings, {}, out, restore)
    # Four half-GPU cells side by side: two on each GPU, as CUDA_VISIBLE_DEVICES told the task.
    assert [job.returncode for job in jobs] == [0, 0, 0, 0]
    assert Counter(job.gpus for job in jobs) == {"0": 2, "1": 2}
    for job in jobs:
        # The stage under the task's `dvc repro` saw the same GPU, and the main workspace has
        # its output, checked out from DVC's run-cache rather than run again.
        assert (project / "out" / f"{job.name}.txt").read_text() == f"base {job.gpus}"
        assert "CUDA_VISIBLE_DEVICES=" + job.gpus in (timings / f"{job.name}.log").read_text()
        log = (timings / f"restore-{job.name}.log").read_text()
        assert f"Stage 'cell@{job.name}' is cached - skipping run" in log
        # What the stage wrote under its worker's timings/ outlives the worker.
        stage_timing = json.loads((project / "timings" / "cell" / f"{job.name}.json").read_text())
        assert stage_timing == {"seen": job.gpus}
    assert [job.returncode for job in restored] == [0, 0, 0, 0]
    assert "Data and pipelines are up to date" in dvc(project, "status").stdout
    assert not list((project / WORKERS_DIR).iterdir())  # each cell's workspace is gone


def test_a_failed_cell_runs_again_after_the_others_and_keeps_its_first_log(tmp_path, local_ray):
    project = tiny_project(tmp_path / "project", ["a"], tmp_path / "started")
    record = project / "record.py"
    # The first attempt fails (no `flag` yet) and leaves the flag for the second.
    record.write_text(
        "import pathlib, sys\nflag = pathlib.Path(" + repr(str(tmp_path / "flag")) + ")\n"
        "if not flag.exists():\n    flag.touch()\n    sys.exit('first attempt fails')\n"
        + record.read_text()
    )
    timings = tmp_path / "timings"
    timings.mkdir()
    job, stream = Job("a", ["cell@a"]), io.StringIO()
    run_cells(project, [job], 0.5, 1, timings, {}, Output(stream), lambda job, here: None)
    assert job.returncode == 0 and job.attempts == 1
    assert "first attempt fails" in (timings / "a.attempt1.log").read_text()
    assert "[a] failed (exit status 255): runs again after the others (1/1)" in stream.getvalue()
    assert (timings / "a.json").exists() and (timings / "a.attempt1.json").exists()


def test_cells_on_another_node_go_through_the_dvc_remote(tmp_path, monkeypatch):
    """Two Ray nodes on this machine: the main one has no CPU for cells, so they run on the other
    with a DVC cache of their own, pull the shared input from the DVC remote and push what they
    ran; the main workspace restores them from there."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # 127.0.0.1, as start_ray
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("PATH", stage_env()["PATH"])
    cells = ["a", "b"]
    project = tiny_project(tmp_path / "project", cells, tmp_path / "started")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        cluster.add_node(num_cpus=2)
        start_ray(cluster.address)
        uri = f"sqlite:///{project / 'mlruns.db'}"
        with pytest.raises(ValueError, match="has 2 nodes but .* has no default DVC remote"):
            check_cluster(project, uri)
        dvc(project, "remote", "add", "-d", "store", str(tmp_path / "remote"))
        assert check_cluster(project, uri) == 2
        dvc(project, "push", "base")  # as the grid pushes its prepared inputs
        timings = tmp_path / "timings"
        timings.mkdir()
        jobs = [Job(cell, [f"cell@{cell}"]) for cell in cells]
        out, restored = Output(io.StringIO()), []

        def restore(job, from_main_node):
            assert not from_main_node
            restored.append(restore_cell(project, job, from_main_node, timings, stage_env(), out))

        run_cells(project, jobs, 0, 0, timings, {}, out, restore)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert [job.returncode for job in jobs + restored] == [0, 0, 0, 0]
    for cell in cells:
        assert (project / "out" / f"{cell}.txt").read_text() == "base unset"
        log = (timings / f"{cell}.log").read_text()
        assert log.startswith("on 127.0.0.1 (not the main workspace)")
        assert "Pulling data for stage: 'base'" in log and "files pushed" in log
        log = (timings / f"restore-{cell}.log").read_text()
        assert f"Stage 'cell@{cell}' is cached - skipping run" in log
    # The other node's cache got the shared input from the remote, the main one the cells'.
    assert (project / WORKERS_DIR / NODE_CACHE / "files").is_dir()
    assert "Data and pipelines are up to date" in dvc(project, "status").stdout


def test_workers_share_the_checkpoints_set_aside_for_generations(tmp_path):
    (tmp_path / "project").mkdir()
    project = copy_project(tmp_path / "project")
    params = yaml.safe_load((project / "presets" / "smoke.yaml").read_text())
    params["train"]["keep_checkpoints"] = "final"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    worker = project / ".dvc" / "tmp" / "grid" / "lora-0.001"
    make_worker(worker, pipeline_files(project), project, str(project / ".dvc" / "cache"))
    set_aside = worker / "models" / ".intermediate"
    assert set_aside.is_symlink() and set_aside.resolve() == project / "models" / ".intermediate"
