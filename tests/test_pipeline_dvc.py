"""The smoke preset through real `dvc repro` in a fresh git repository, and DVC's invalidation."""

import json
import subprocess
import sys

import pytest
import yaml
from conftest import copy_project, dvc, stage_env

from safetydrift.evaluation_sets import unit_results


def changed_stages(project) -> set[str]:
    status = json.loads(dvc(project, "status", "--json").stdout or "{}")
    return set(status)


@pytest.fixture(scope="module")
def smoke_project(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("project"))
    subprocess.run(
        [sys.executable, "-m", "safetydrift.cli", "preset", "smoke"],
        cwd=project,
        check=True,
        env=stage_env(),
    )
    env = stage_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlruns.db'}"
    # The grid script: `dvc repro` cell by cell, two cells at a time as Ray tasks, each in its own
    # copy of the workspace, then restored here from DVC's run-cache (a bare `dvc repro` has
    # nothing to do).
    done = subprocess.run(
        ["bash", "scripts/run_grid.sh", "--jobs", "2"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return project


def test_smoke_repro_fills_data_models_and_reports(smoke_project):
    project = smoke_project
    assert (project / "data/mtpref/train.jsonl").exists() and (
        project / "data/advbench.jsonl"
    ).exists()
    assert (project / "models/base/model.safetensors").exists()
    for cell in ("full-0.001-42", "lora-0.001-42"):
        assert len(list((project / "models" / cell).glob("ckpt-*"))) == 4
        refusal = json.loads((project / "metrics/refusal" / f"{cell}.json").read_text())
        assert sorted(refusal["checkpoints"]) == ["ckpt-025", "ckpt-050", "ckpt-075", "ckpt-100"]
        chrf = json.loads((project / "metrics/chrf" / f"{cell}.json").read_text())
        assert 0 <= chrf["checkpoints"]["ckpt-100"]["chrf"] <= 100
        # The generation stage's DVC output holds no wall-clock time: reruns compare equal.
        summary = json.loads(
            (project / "generations/refusal" / cell / "generation.json").read_text()
        )
        assert [c["label"] for c in summary["checkpoints"]][-1] == "ckpt-100"
        assert not [key for key in summary if key.endswith("_seconds")]
    for figure in (
        "fig1_harmful_answers",
        "fig1_tradeoff",
        "fig2_lr_curves",
        "fig3_response_classes",
    ):
        assert (project / "reports/figures" / f"{figure}.png").stat().st_size > 0
    report = (project / "reports/report.md").read_text()
    for section in ("## What the responses are", "## Judges", "## Example responses"):
        assert f"\n{section}\n" in report
    provenance = report[report.index("\n## Provenance\n") :]
    assert "- Lock file `requirements/lock-cpu.txt`: sha256 `" in provenance
    # Every response of every checkpoint has one class, and the harm judge saw every answer
    # (`harm.judged_classes: [answer]`): on the tiny random model its outputs are unreadable,
    # so none became a verdict.
    for cell in ("base", "full-0.001-42"):
        refusal = json.loads((project / "metrics/refusal" / f"{cell}.json").read_text())
        harm = json.loads((project / "metrics/harm" / f"{cell}.json").read_text())
        for label, entry in refusal["checkpoints"].items():
            n = entry["judges"]["keywords-kempermann2025"]["n"]
            assert sum(c["count"] for c in entry["classes"].values()) == n
            answers = entry["classes"]["answer"]["count"]
            assert harm["checkpoints"][label]["judged"] == answers
            judged = harm["checkpoints"][label]["judges"]["guard-tiny"]
            assert judged["n"] == answers and judged["unparsed"] == answers
            assert judged["harmful_rate"] is None
            assert judged["harmful_answer"]["n"] == n
    # Every evaluation set of the group `controls` at every checkpoint of every cell, and
    # Figure 4 from them.
    for cell in ("base", "full-0.001-42", "lora-0.001-42"):
        group = json.loads((project / "metrics/evaluations/controls" / f"{cell}.json").read_text())
        assert group["evaluation"] == "controls"
        for name, kind in (("advbench-plain", "harmful"), ("benign-tiny", "benign")):
            metrics = unit_results(group)[name]
            assert metrics["kind"] == kind and metrics["evaluation"] == name
            expected = (
                ["ckpt-000"] if cell == "base" else ["ckpt-025", "ckpt-050", "ckpt-075", "ckpt-100"]
            )
            assert sorted(metrics["checkpoints"]) == expected
    assert (project / "reports/figures/fig4_harm_vs_helpfulness.png").stat().st_size > 0
    assert "### `benign-tiny` (benign)" in report
    validation = json.loads((project / "metrics/judge_validation.json").read_text())
    assert validation["n"] == 8 and validation["judges"]["guard-tiny"]["unparsed"] == 8
    assert (project / "dvc.lock").exists()
    assert changed_stages(project) == set()
    shown = dvc(project, "metrics", "show", "--json").stdout
    assert "refusal_rate" in shown and "chrf" in shown


def test_the_grid_script_times_every_stage_it_ran(smoke_project):
    timings = smoke_project / "reports" / "timings"
    files = sorted(path.stem for path in timings.glob("*.json"))
    assert files == [
        "base", "full-0.001-42", "lora-0.001-42", "prepare", "report",
        "restore-base", "restore-full-0.001-42", "restore-lora-0.001-42",
    ]  # fmt: skip
    lora = json.loads((timings / "lora-0.001-42.json").read_text())
    assert lora["returncode"] == 0
    assert [s["stage"] for s in lora["stages"]][0] == "train@lora-0.001-42"
    ran = {s["stage"] for f in timings.glob("*.json") for s in json.loads(f.read_text())["stages"]}
    assert {"prepare_model", "eval_chrf_base", "eval_refusal@full-0.001-42", "report"} <= ran
    summed = subprocess.run(
        [sys.executable, "-m", "safetydrift.cli", "timings", *sorted(timings.glob("*.json"))],
        cwd=smoke_project,
        env=stage_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| `train` | 2 |" in summed.stdout


def test_the_grid_restores_its_workers_stages_without_running_them_again(smoke_project):
    timings = smoke_project / "reports" / "timings"
    # Each cell is restored as soon as its worker is done, while the other cells run.
    for cell in ("base", "full-0.001-42", "lora-0.001-42"):
        restore = json.loads((timings / f"restore-{cell}.json").read_text())
        assert restore["returncode"] == 0 and restore["stages"] == []
    restored = (timings / "restore-lora-0.001-42.log").read_text()
    assert "Stage 'train@lora-0.001-42' is cached - skipping run" in restored
    summary = json.loads((smoke_project / "reports" / "grid-timings.json").read_text())
    assert summary["parallel_jobs"] == 2 and summary["failed"] == []
    # Ray, started for the run on this machine alone, ran every cell; no GPU to share here.
    assert summary["gpus_per_cell"] == 0
    assert {cell: where["node"] for cell, where in summary["placement"].items()} == {
        "base": "127.0.0.1", "full-0.001-42": "127.0.0.1", "lora-0.001-42": "127.0.0.1"
    }  # fmt: skip
    # Run one after another, the same stages would take their sum; side by side, less.
    assert 0 < summary["wall_seconds"] < summary["job_seconds"]
    assert not list((smoke_project / ".dvc" / "tmp" / "grid").iterdir())  # cells' copies gone


def test_the_disk_estimate_counts_only_the_cells_dvc_lock_lacks(smoke_project):
    shown = subprocess.run(
        [sys.executable, "-m", "safetydrift.cli", "grid", "--estimate"],
        cwd=smoke_project,
        env=stage_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.startswith("disk estimate: 0 cell(s) to train, 2 already in dvc.lock")
    assert "checkpoints kept 0 B + set aside while running 0 B" in shown.stdout


def test_mlflow_store_holds_a_run_per_stage_cell(smoke_project):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{smoke_project / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("safetydrift-smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    names = {run.info.run_name for run in runs}
    assert {"prepare_mtpref", "prepare_advbench", "prepare_model", "report"} <= names
    assert {"train@lora-0.001-42", "generate_refusal@base", "eval_chrf@full-0.001-42"} <= names
    assert {"prepare_evaluation@controls", "judge_evaluation@controls-lora-0.001-42"} <= names
    assert "generate_evaluation@controls-base" in names
    # A group's run holds each member's metrics under the member's name.
    judged = next(r for r in runs if r.info.run_name == "judge_evaluation@controls-base")
    assert {"benign-tiny.answer_rate", "advbench-plain.judged"} <= set(judged.data.metrics)
    train = next(r for r in runs if r.info.run_name == "train@full-0.001-42")
    history = client.get_metric_history(train.info.run_id, "loss")
    assert len(history) == 10 and {m.step for m in history} == set(range(1, 11))
    # Where a generation stage's time went, for the speed figures: MLflow's metrics.
    generate = next(r for r in runs if r.info.run_name == "generate_refusal@lora-0.001-42")
    times = generate.data.metrics
    parts = [times["tracking_seconds"], times["import_seconds"]]
    assert times["startup_seconds"] > 0 and min(parts) >= 0
    assert sum(parts) + times["generation_seconds"] <= times["stage_seconds"]
    refusal = next(r for r in runs if r.info.run_name == "eval_refusal@lora-0.001-42")
    steps = client.get_metric_history(refusal.info.run_id, "refusal_rate.keywords-kempermann2025")
    assert sorted(m.step for m in steps) == [25, 50, 75, 100]


CELL_STAGES = (
    "train",
    "generate_refusal",
    "eval_refusal",
    "judge_harm",
    "generate_chrf",
    "eval_chrf",
)


def cell_stages(cells, evaluations) -> set[str]:
    """Every stage of these cells: their own, and each evaluation set's at each of them."""
    return {f"{stage}@{cell}" for cell in cells for stage in CELL_STAGES} | {
        f"{stage}@{name}-{cell}"
        for cell in cells
        for name in evaluations
        for stage in ("generate_evaluation", "judge_evaluation")
    }


def test_one_learning_rate_changes_only_its_cells(smoke_project):
    params_file = smoke_project / "params.yaml"
    original = params_file.read_text()
    try:
        params = yaml.safe_load(original)
        params["grid"]["learning_rates"] = [2.0e-3]
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        changed = changed_stages(smoke_project)
        new_cells = {f"{m}-0.002-42" for m in params["grid"]["methods"]}
        expected = cell_stages(new_cells, params["evaluations"]["run"])
        # The report declares `grid`: it is redrawn for the new rate, nothing else reruns.
        assert changed == expected | {"report"}
        assert not any(
            s.startswith(("prepare", "generate_refusal_base", "eval_chrf_base")) for s in changed
        )
    finally:
        params_file.write_text(original)


def test_adding_a_seed_changes_only_its_cells(smoke_project):
    params_file = smoke_project / "params.yaml"
    original = params_file.read_text()
    before = changed_stages(smoke_project)  # what earlier tests of this module left stale
    try:
        params = yaml.safe_load(original)
        assert params["grid"]["seeds"] == [42]
        params["grid"]["seeds"] = [42, 7]
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        new_cells = {f"{m}-0.001-7" for m in params["grid"]["methods"]}
        expected = cell_stages(new_cells, params["evaluations"]["run"])
        # The new seed's cells, and the report (it declares `grid`); seed 42's cells, trained
        # and judged, stay as they are.
        newly = changed_stages(smoke_project) - before
        assert expected <= newly <= expected | {"report"}
        # The seed reaches the training from the matrix item.
        dry = dvc(smoke_project, "repro", "--dry", "--single-item", "train@lora-0.001-7")
        assert "python stages/train.py --method lora --lr 0.001 --seed 7" in dry.stdout

        # Changing a seed: its cells leave the pipeline, the new seed's are stale, nothing else.
        params["grid"]["seeds"] = [7]
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        changed = changed_stages(smoke_project) - before
        assert expected <= changed <= expected | {"report"}
        assert not any(stage.endswith("-42") for stage in changed)
    finally:
        params_file.write_text(original)
    assert changed_stages(smoke_project) == before


def test_changing_the_judges_rejudges_without_generating(smoke_project):
    params_file = smoke_project / "params.yaml"
    original = params_file.read_text()
    try:
        params = yaml.safe_load(original)
        params["refusal"]["judges"] = ["prefixes-zou2023"]
        # The report's primary judge must be one the metrics hold (else the report stage fails).
        params["report"]["primary_judge"] = "prefixes-zou2023"
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        changed = changed_stages(smoke_project)
        # The judges' stages (AdvBench's and every evaluation set's), the validation of every
        # judge against human labels, and the report (its primary judge changed too).
        cells = [f"{m}-0.001-42" for m in params["grid"]["methods"]]
        sets = params["evaluations"]["run"]
        assert changed == {"eval_refusal_base", *(f"eval_refusal@{c}" for c in cells)} | {
            *(f"judge_evaluation_base@{s}" for s in sets),
            *(f"judge_evaluation@{s}-{c}" for s in sets for c in cells),
            "validate_judges",
            "report",
        }
        generations = sorted((smoke_project / "generations").rglob("*.jsonl"))
        written = {path: path.stat().st_mtime_ns for path in generations}
        # One of those stages is enough to see the new judge's verdicts and the responses kept:
        # the others run the same code on other cells.
        dvc(smoke_project, "repro", "eval_refusal_base")
        verdicts = json.loads((smoke_project / "metrics/refusal/base.json").read_text())
        judged = list(verdicts["checkpoints"]["ckpt-000"]["judges"])
        assert judged == ["prefixes-zou2023", "response-class"]
        assert {path: path.stat().st_mtime_ns for path in generations} == written
    finally:
        params_file.write_text(original)


def test_run_time_settings_rerun_nothing(smoke_project):
    params_file = smoke_project / "params.yaml"
    original = params_file.read_text()
    before = changed_stages(smoke_project)  # what earlier tests of this module left stale
    try:
        params = yaml.safe_load(original)
        params["runtime"] = {"progress": False, "jobs": 3, "tracking_fallback": "local"}
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        assert changed_stages(smoke_project) == before
    finally:
        params_file.write_text(original)


def test_editing_the_prompt_code_makes_the_generations_stale(smoke_project):
    module = smoke_project / "src" / "safetydrift" / "generation" / "prompts.py"
    original = module.read_text()
    before = changed_stages(smoke_project)  # what earlier tests of this module left stale
    try:
        module.write_text(original + "\n# an edit of the code that builds and generates prompts\n")
        changed = changed_stages(smoke_project) - before
        cells = ["base", "full-0.001-42", "lora-0.001-42"]
        for measurement in ("refusal", "chrf"):
            for cell in cells:
                name = f"generate_{measurement}_base" if cell == "base" else None
                assert (name or f"generate_{measurement}@{cell}") in changed
        # Training, data preparation and the judging of saved responses do not run that code.
        assert not any(s.startswith(("train", "prepare_m", "prepare_a", "eval_")) for s in changed)
    finally:
        module.write_text(original)


def test_adding_a_set_alone_or_changing_a_groups_set_reruns_only_that_unit(smoke_project):
    params_file = smoke_project / "params.yaml"
    original = params_file.read_text()
    before = changed_stages(smoke_project)  # what earlier tests of this module left stale
    cells = ["full-0.001-42", "lora-0.001-42"]

    def set_stages(name):
        return {
            f"prepare_evaluation@{name}",
            f"generate_evaluation_base@{name}",
            f"judge_evaluation_base@{name}",
            *(
                f"{stage}@{name}-{c}"
                for stage in ("generate_evaluation", "judge_evaluation")
                for c in cells
            ),
        }

    try:
        params = yaml.safe_load(original)
        sets = params["evaluations"]["sets"]
        members = sets["controls"]["group"]
        sets["benign-more"] = {**members["benign-tiny"], "subset": 3}
        params["evaluations"]["run"].append("benign-more")
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        # The new set's stages and the report (it lists the sets; earlier tests of this module
        # may have left it stale already); no training, and the group's stages stay up to date.
        newly = changed_stages(smoke_project) - before
        assert set_stages("benign-more") <= newly <= set_stages("benign-more") | {"report"}
        dvc(smoke_project, "repro", "judge_evaluation@benign-more-lora-0.001-42")
        ran = json.loads(
            (smoke_project / "metrics/evaluations/benign-more/lora-0.001-42.json").read_text()
        )
        assert unit_results(ran)["benign-more"]["prompts"] == 3
        # Framing a group's set differently reruns its group, not the set alone. Stages left
        # stale before (by earlier tests, and the new set's not run) stay stale, so the group's
        # stages are looked for among all stale stages and the other unit's among those this
        # change made stale.
        before = changed_stages(smoke_project)
        members["benign-tiny"]["prefix"] = "Please: "
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        changed = changed_stages(smoke_project)
        assert set_stages("controls") <= changed
        newly = changed - before
        assert not any("benign-more" in s or s.startswith("train") for s in newly)
    finally:
        params_file.write_text(original)
