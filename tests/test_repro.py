"""`safetydrift repro`'s per-stage wall times, from DVC's own output."""

import json
import shutil
import subprocess
import sys

from conftest import copy_project, stage_env

from safetydrift.repro import markdown_table, stage_durations, summarize

DVC_OUTPUT = [
    (0.0, "Stage 'prepare_mtpref' didn't change, skipping\n"),
    (0.5, "Running stage 'train@lora-5e-05':\n"),
    (1.0, "> python stages/train.py --method lora --lr 5e-05\n"),
    (40.5, "Updating lock file 'dvc.lock'\n"),
    (41.0, "Running stage 'generate_refusal@lora-5e-05':\n"),
    (55.0, "Stage 'eval_refusal_base' didn't change, skipping\n"),
    (55.2, "Running stage 'eval_refusal@lora-5e-05':\n"),
    (58.2, "Stage 'eval_chrf@lora-5e-05' is cached - skipping run, checking out outputs\n"),
]


def test_each_stage_lasts_until_the_next_stage_line_or_the_end():
    # A stage restored from DVC's run-cache ran nowhere here: it only ends the stage before it.
    durations = stage_durations(DVC_OUTPUT, end=58.9)
    assert durations == [
        {"stage": "train@lora-5e-05", "seconds": 40.5},
        {"stage": "generate_refusal@lora-5e-05", "seconds": 14.0},
        {"stage": "eval_refusal@lora-5e-05", "seconds": 3.0},
    ]
    by_kind = summarize(durations)
    assert [row["kind"] for row in by_kind] == ["train", "generate_refusal", "eval_refusal"]
    table = markdown_table({"by_kind": by_kind, "stages": durations, "wall_seconds": 58.2})
    assert "| `train` | 1 | 40.5 | 40.5 |" in table and "| **all** | 3 | 58.2 | |" in table


def test_repro_command_times_a_real_dvc_pipeline(tmp_path):
    project = copy_project(tmp_path)
    shutil.copy(project / "presets" / "smoke.yaml", project / "params.yaml")
    timings = project / "timings.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "safetydrift.cli",
            "repro",
            "--timings",
            str(timings),
            "--",
            "prepare_advbench",
        ],
        cwd=project,
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    recorded = json.loads(timings.read_text())
    assert recorded["returncode"] == 0
    assert [s["stage"] for s in recorded["stages"]] == ["prepare_advbench"]
    assert recorded["stages"][0]["seconds"] > 0
    assert "| `prepare_advbench` | 1 |" in result.stdout
