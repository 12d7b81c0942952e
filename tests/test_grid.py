"""`safetydrift grid`: the order of its jobs and the worker copies of a workspace.

The grid itself (two workers, restored from DVC's run-cache) runs in test_pipeline_dvc.py.
"""

import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import copy_project, stage_env

from safetydrift.grid import (
    Job,
    default_cells,
    gpu_assignment,
    grid_jobs,
    keep_first_attempt,
    make_worker,
    prepare_stages,
    ran_out_of_gpu_memory,
    slowest_first,
    visible_gpus,
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


def test_a_cell_out_of_gpu_memory_is_recognised_and_its_first_attempt_kept(tmp_path):
    job = Job("dpo-5e-05", [], returncode=1, timings=tmp_path / "dpo-5e-05.json")
    job.timings.write_text("{}")
    log = tmp_path / "dpo-5e-05.log"
    log.write_text("error: CUDA out of memory. Tried to allocate 20.00 MiB.\n")
    assert ran_out_of_gpu_memory(job)
    keep_first_attempt(job)
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
    assert {"stages/train.py", "src/safetydrift/grid.py", "presets/smoke.yaml"} <= files
    assert not any(name.startswith(("models/", "data/", ".dvc/cache")) for name in files)

    monkeypatch.setenv("PATH", stage_env()["PATH"])
    # The paper preset reads `../shared/data/judge-validation/...`: beside the project here.
    (tmp_path / "shared" / "data").mkdir(parents=True)
    cache = project / ".dvc" / "cache"
    worker = project / ".dvc" / "tmp" / "grid" / "worker-0"
    make_worker(project, worker, str(cache))
    assert (worker / ".." / "shared").resolve() == (project / ".." / "shared").resolve()
    assert (worker / "dvc.yaml").read_text() == (project / "dvc.yaml").read_text()
    assert (worker / "src/safetydrift/methods.py").exists()
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "config", "--local", "--list"],
        cwd=worker,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "core.no_scm=true" in shown and f"cache.dir={cache}" in shown


def test_workers_are_placed_on_the_gpus_round_robin(monkeypatch):
    # Six cells side by side on four GPUs: two GPUs hold two small cells each.
    assert gpu_assignment(6, ["0", "1", "2", "3"]) == ["0", "1", "2", "3", "0", "1"]
    # A cell trained on two GPUs (`train.num_processes: 2`) gets a pair of its own.
    assert gpu_assignment(3, ["0", "1", "2", "3", "4"], per_cell=2) == ["0,1", "2,3", "0,1"]
    assert gpu_assignment(2, []) == [None, None]  # no GPU: the environment as it is
    with pytest.raises(ValueError, match="`train.num_processes` is 4 but only 2 GPU"):
        gpu_assignment(1, ["0", "1"], per_cell=4)
    # The GPUs the user left visible are the ones the grid shares out, by their ids.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"] and visible_gpus("5, 7") == ["5", "7"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    import torch

    assert visible_gpus() == [str(index) for index in range(torch.cuda.device_count())]


def test_workers_share_the_checkpoints_set_aside_for_generations(tmp_path):
    (tmp_path / "project").mkdir()
    project = copy_project(tmp_path / "project")
    params = yaml.safe_load((project / "presets" / "smoke.yaml").read_text())
    params["train"]["keep_checkpoints"] = "final"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    worker = project / ".dvc" / "tmp" / "grid" / "worker-1"
    make_worker(project, worker, str(project / ".dvc" / "cache"))
    set_aside = worker / "models" / ".intermediate"
    assert set_aside.is_symlink() and set_aside.resolve() == project / "models" / ".intermediate"
