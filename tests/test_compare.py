"""`safetydrift compare`: paired tests between results folders written by the pipeline's stages."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, load_stage, stage_env

from safetydrift.cli import main
from safetydrift.compare.pairing import Settings, compare_metrics, compare_to_base
from safetydrift.compare.results import read_results
from safetydrift.compare.revisions import compare_paths
from safetydrift.files import read_json, read_jsonl, write_json, write_jsonl
from safetydrift.stats.comparison import describe_difference, holm
from safetydrift.stats.rates import mcnemar_exact

ADVBENCH = SHARED_DATA / "advbench_harmful_behaviors.csv"
MTPREF_TINY = Path(__file__).parent / "fixtures" / "mtpref-tiny.jsonl"
JUDGES = ["keywords-kempermann2025", "prefixes-zou2023"]
PARAMS = {
    "study": {"name": "compare-test"},
    "refusal": {"judges": JUDGES, "confidence": 0.95},
    "chrf": {"bootstrap_resamples": 100, "confidence": 0.95, "seed": 0},
}
SETTINGS = Settings(n_resamples=200)
REFUSAL = "I'm sorry, but I cannot help with that."

# (refusal rate, share of sentences translated well) of each cell's checkpoints.
BEFORE = {
    "base": {"ckpt-000": (0.98, 0.1)},
    "lora-5e-05": {"ckpt-050": (0.97, 0.7), "ckpt-100": (0.96, 0.8)},
    "full-5e-05": {"ckpt-100": (0.70, 0.9)},
}
AFTER = {
    "base": {"ckpt-000": (0.98, 0.1)},
    "lora-5e-05": {"ckpt-050": (0.97, 0.7), "ckpt-100": (0.86, 0.8)},
    "dpo-5e-05": {"ckpt-100": (0.40, 0.3)},
}


def _latent(kind: str, item: int) -> float:
    # The same per-prompt draw on every side: a prompt refused at a low rate is refused at a
    # higher one too, so the sides are paired as a model and its fine-tuned checkpoints are.
    return random.Random(f"{kind}-{item}").random()


def _write_generations(root: Path, cell: str, checkpoints: dict, skip_ids: tuple = ()) -> None:
    with ADVBENCH.open(encoding="utf-8") as handle:
        goals = [row["goal"] for row in csv.DictReader(handle)]
    pairs = [json.loads(line) for line in MTPREF_TINY.read_text(encoding="utf-8").splitlines()]
    for measurement in ("refusal", "chrf"):
        directory = root / "generations" / measurement / cell
        labels = []
        for label, (refusal_rate, quality) in checkpoints.items():
            if measurement == "refusal":
                rows = [
                    {
                        "id": i,
                        "prompt": goal + "!",
                        "response": REFUSAL
                        if _latent("refusal", i) < refusal_rate
                        else f"Sure, here is how to {goal.lower()}: first, gather",
                    }
                    for i, goal in enumerate(goals)
                    if i not in skip_ids
                ]
            else:
                rows = [
                    {
                        "id": i,
                        "prompt": pair["prompt"],
                        "response": pair["chosen"]
                        if _latent("chrf", i) < quality
                        else pair["rejected"],
                        "reference": pair["chosen"],
                    }
                    for i, pair in enumerate(pairs)
                ]
            for row in rows:
                row.update(new_tokens=len(row["response"].split()), finish_reason="stop")
            write_jsonl(directory / f"{label}.jsonl", rows)
            labels.append({"label": label, "fraction": int(label[-3:]) / 100, "step": 10})
        write_json(
            directory / "generation.json",
            {"cell": cell, "measurement": measurement, "checkpoints": labels},
        )


def _evaluate(root: Path, cells: dict, skip_ids: tuple = ()) -> Path:
    """Per-prompt files and metrics as the pipeline's eval stages write them, under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns.db'}")
        for cell, checkpoints in cells.items():
            _write_generations(Path("."), cell, checkpoints, skip_ids)
            load_stage("eval_refusal").main(PARAMS, cell)
            load_stage("eval_chrf").main(PARAMS, cell)
    (root / "mlruns.db").unlink()
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("results")
    return _evaluate(base / "before", BEFORE), _evaluate(base / "after", AFTER)


def _verdicts(root: Path, cell: str, checkpoint: str, judge: str) -> dict:
    rows = read_jsonl(root / "evals" / "refusal" / f"{cell}.jsonl")
    return {r["id"]: r[judge]["refusal"] for r in rows if r["checkpoint"] == checkpoint}


def _find(report, measurement, cell, checkpoint, judge=None):
    matches = [
        c
        for c in report.comparisons
        if (c.measurement, c.cell, c.checkpoint, c.judge) == (measurement, cell, checkpoint, judge)
    ]
    assert len(matches) == 1, f"{measurement} {cell} {checkpoint} {judge}: {len(matches)} rows"
    return matches[0]


# --------------------------------------------------------------------------------------------
# Folders


def test_compare_two_folders(folders):
    before, after = folders
    report = compare_metrics(before, after, SETTINGS)

    for judge in JUDGES:
        unchanged = _find(report, "refusal", "base", "ckpt-000", judge)
        assert (unchanged.difference, unchanged.p_value) == (0.0, 1.0)
        assert unchanged.verdict == "equivalent within ±5 points"

    dropped = _find(report, "refusal", "lora-5e-05", "ckpt-100", "keywords-kempermann2025")
    a = _verdicts(before, "lora-5e-05", "ckpt-100", "keywords-kempermann2025")
    b = _verdicts(after, "lora-5e-05", "ckpt-100", "keywords-kempermann2025")
    expected = mcnemar_exact([a[i] for i in sorted(a)], [b[i] for i in sorted(a)])
    assert dropped.p_value == pytest.approx(expected.p_value)
    assert (dropped.ci_low, dropped.ci_high) == pytest.approx((expected.ci_low, expected.ci_high))
    metrics_b = read_json(after / "metrics" / "refusal" / "lora-5e-05.json")
    rate_b = metrics_b["checkpoints"]["ckpt-100"]["judges"]["keywords-kempermann2025"][
        "refusal_rate"
    ]
    assert dropped.value_b == pytest.approx(rate_b)
    assert dropped.verdict == "lower"

    refusal = [c for c in report.comparisons if c.measurement == "refusal"]
    # base, lora at 50% and at 100%; each judge, and response-class beside them
    assert len(refusal) == 3 * (len(JUDGES) + 1)
    adjusted = holm({f"{c.cell} {c.checkpoint} {c.judge}": c.p_value for c in refusal})
    assert [c.p_holm for c in refusal] == [
        adjusted[f"{c.cell} {c.checkpoint} {c.judge}"] for c in refusal
    ]

    chrf = _find(report, "chrf", "lora-5e-05", "ckpt-100")
    assert chrf.test == "paired bootstrap"
    assert chrf.difference == 0.0  # the same translations on both sides
    metrics_a = read_json(before / "metrics" / "chrf" / "lora-5e-05.json")
    assert chrf.value_a == pytest.approx(metrics_a["checkpoints"]["ckpt-100"]["chrf"])

    missing = {(m.measurement, m.cell, m.judge, m.reason) for m in report.missing}
    for judge in JUDGES:
        assert ("refusal", "full-5e-05", judge, "only in A") in missing
        assert ("refusal", "dpo-5e-05", judge, "only in B") in missing
    assert ("chrf", "full-5e-05", None, "only in A") in missing
    assert not any(c.cell in ("full-5e-05", "dpo-5e-05") for c in report.comparisons)


def _with_seed(results: Path, destination: Path, seed: int) -> Path:
    """A copy of a results folder whose cells are named as today's pipeline names them."""
    for path in sorted(results.rglob("*")):
        if path.is_file():
            parts = [
                part
                if part.split(".")[0] == "base" or not part.startswith(("lora-", "full-", "dpo-"))
                else part.replace("5e-05", f"5e-05-{seed}")
                for part in path.relative_to(results).parts
            ]
            (destination / Path(*parts)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, destination / Path(*parts))
    return destination


def test_results_from_before_the_seed_axis_pair_with_the_same_seeds_cells(folders, tmp_path):
    before, after = folders
    seeded = _with_seed(after, tmp_path / "after-seed-42", 42)
    assert (seeded / "metrics" / "refusal" / "lora-5e-05-42.json").exists()
    legacy = tmp_path / "before"
    shutil.copytree(before, legacy)
    (legacy / "params.yaml").write_text("train:\n  seed: 42\n", encoding="utf-8")

    report = compare_paths(str(legacy), str(seeded), SETTINGS)
    unseeded = compare_paths(str(before), str(after), SETTINGS)
    assert [
        (c.measurement, c.cell, c.checkpoint, c.judge, c.p_value) for c in report.comparisons
    ] == [
        (c.measurement, c.cell.replace("5e-05", "5e-05-42"), c.checkpoint, c.judge, c.p_value)
        for c in unseeded.comparisons
    ]
    assert f"{legacy}: cells from before `grid.seeds` read as seed 42" in " ".join(report.notes)

    # Without the seed they were trained with, they pair with no seeded cell, and say so.
    (legacy / "params.yaml").unlink()
    report = compare_paths(str(legacy), str(seeded), SETTINGS)
    assert {c.cell for c in report.comparisons} == {"base"}
    assert any("no `train.seed` in params.yaml" in note for note in report.notes)


def test_only_metrics_on_one_side_are_reported_untested(folders, tmp_path):
    before, after = folders
    metrics_only = tmp_path / "metrics-only"
    shutil.copytree(before / "metrics", metrics_only / "metrics")
    report = compare_metrics(metrics_only, after, SETTINGS)
    dropped = _find(report, "refusal", "lora-5e-05", "ckpt-100", "keywords-kempermann2025")
    assert dropped.p_value is None
    assert dropped.verdict == "untested"
    assert dropped.difference < 0
    assert "not tested against" in describe_difference(dropped)
    assert any("untested" in note for note in report.notes)


def test_different_prompts_are_an_error_naming_the_checkpoint(folders, tmp_path):
    before, _ = folders
    subset = _evaluate(tmp_path / "subset", {"lora-5e-05": BEFORE["lora-5e-05"]}, (3, 7, 11))
    with pytest.raises(
        ValueError,
        match=r"refusal lora-5e-05 ckpt-050 keywords-kempermann2025: .*"
        r"\(3 only in A, 0 only in B, e\.g\. 3, 7, 11\)",
    ):
        compare_metrics(before, subset, SETTINGS)


def test_metrics_and_verdicts_of_different_runs_are_an_error(folders, tmp_path):
    before, _ = folders
    mixed = tmp_path / "mixed"
    shutil.copytree(before, mixed)
    path = mixed / "metrics" / "refusal" / "lora-5e-05.json"
    data = read_json(path)
    data["checkpoints"]["ckpt-100"]["judges"]["keywords-kempermann2025"]["refusals"] -= 2
    write_json(path, data)
    with pytest.raises(ValueError, match=r"lora-5e-05.json says \d+/520 refusals for ckpt-100 "):
        read_results(mixed)


def test_every_cell_against_the_base_model(folders):
    before, _ = folders
    report = compare_to_base(before, SETTINGS, judges=["keywords-kempermann2025"])
    full = _find(report, "refusal", "full-5e-05", "ckpt-100", "keywords-kempermann2025")
    assert full.verdict == "lower"
    assert full.value_a == pytest.approx(
        _find(report, "refusal", "lora-5e-05", "ckpt-050", "keywords-kempermann2025").value_a
    )
    # Figure 1's drop with the base model's uncertainty: minus the paired interval of b - a.
    drop, drop_low, drop_high = -full.difference, -full.ci_high, -full.ci_low
    assert 0 < drop_low < drop < drop_high
    assert describe_difference(full).startswith(f"lower than the base model by {100 * drop:.1f}")
    assert {c.cell for c in report.comparisons} == {"lora-5e-05", "full-5e-05"}
    chrf = _find(report, "chrf", "full-5e-05", "ckpt-100")
    assert chrf.verdict == "higher"


# --------------------------------------------------------------------------------------------
# The command


def test_cli_prints_the_table_and_writes_json(folders, tmp_path, capsys):
    before, after = folders
    out = tmp_path / "comparison.json"
    main(["compare", str(before), str(after), "--json", str(out), "--bootstrap-resamples", "200"])
    printed = capsys.readouterr().out
    assert "lower" in printed and "equivalent within ±5 points" in printed
    assert "refusal full-5e-05 ckpt-100 keywords-kempermann2025: only in A" in printed
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["settings"]["margin"] == 0.05
    assert len(saved["comparisons"]) == len(compare_metrics(before, after, SETTINGS).comparisons)


def test_cli_one_judge_and_an_unknown_one(folders, capsys):
    before, after = folders
    main(["compare", str(before), str(after), "--judge", "prefixes-zou2023"])
    printed = capsys.readouterr().out
    assert "prefixes-zou2023" in printed and "keywords-kempermann2025" not in printed
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(before), str(after), "--judge", "llm-judge"])
    assert exit_info.value.code == 1
    assert "judge(s) llm-judge not in these results" in capsys.readouterr().err


def test_cli_as_a_module_exits_zero(folders):
    before, after = folders
    done = subprocess.run(
        [sys.executable, "-m", "safetydrift.cli", "compare", str(before), str(after)],
        capture_output=True,
        text=True,
        env=stage_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "B = " + str(after) in done.stdout


# --------------------------------------------------------------------------------------------
# Git revisions


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def _commit_results(repo: Path, source: Path, message: str) -> None:
    for name in ("metrics", "evals", "generations"):
        shutil.rmtree(repo / name, ignore_errors=True)
        shutil.copytree(source / name, repo / name)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)


def test_git_revisions_compare_as_their_folders(folders, tmp_path):
    before, after = folders
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "test@example.com")
    _git(repo, "config", "user.name", "test")
    _commit_results(repo, before, "before")
    _commit_results(repo, after, "after")
    from_git = compare_paths("HEAD~1", "HEAD", SETTINGS, repo=repo)
    from_folders = compare_metrics(before, after, SETTINGS)
    assert [c.to_dict() | {"sentence": None} for c in from_git.comparisons] == [
        c.to_dict() | {"sentence": None} for c in from_folders.comparisons
    ]
    assert (from_git.label_a, from_git.label_b) == ("HEAD~1", "HEAD")
    with pytest.raises(FileNotFoundError, match="no-such-rev: neither a folder nor a git revision"):
        compare_paths("no-such-rev", "HEAD", SETTINGS, repo=repo)


@pytest.mark.slow
def test_dvc_outputs_of_a_revision_come_from_the_dvc_cache(folders, tmp_path):
    before, after = folders
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (
        ("init", "-q"),
        ("config", "user.email", "t@example.com"),
        ("config", "user.name", "t"),
    ):
        _git(repo, *args)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q"], cwd=repo, check=True, capture_output=True)
    for source, message in ((before, "before"), (after, "after")):
        for name in ("metrics", "evals", "generations"):
            shutil.rmtree(repo / name, ignore_errors=True)
            shutil.copytree(source / name, repo / name)
        # evals/ and generations/ are DVC outputs, metrics/ is in git, as in the pipeline.
        subprocess.run(
            [*dvc, "add", "-q", "evals", "generations"], cwd=repo, check=True, capture_output=True
        )
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", message)
    report = compare_paths("HEAD~1", "HEAD", SETTINGS, repo=repo)
    dropped = _find(report, "refusal", "lora-5e-05", "ckpt-100", "keywords-kempermann2025")
    assert dropped.verdict == "lower" and not report.notes

    shutil.rmtree(repo / ".dvc" / "cache")
    report = compare_paths("HEAD~1", "HEAD", SETTINGS, repo=repo)
    assert (
        _find(report, "refusal", "lora-5e-05", "ckpt-100", "keywords-kempermann2025").p_value
        is None
    )
    assert any("not in the DVC cache or remote" in note for note in report.notes)
    assert os.listdir(repo)  # the working tree is left as it was
