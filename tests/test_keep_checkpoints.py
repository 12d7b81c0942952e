"""`train.keep_checkpoints: final` through real `dvc repro`: the last checkpoint in DVC, the
others set aside until their generations exist, then deleted without making any stage stale."""

import json
import subprocess

from conftest import dvc, smoke_copy

from safetydrift.grid.workspaces import delete_intermediate_checkpoints

LORA_CELL = "lora-0.001-42"  # the smoke preset: one learning rate, `grid.seeds: [42]`


def test_keeping_only_the_final_checkpoint_generates_from_all_then_asks_for_a_retraining(
    tmp_path,
):
    project = smoke_copy(tmp_path / "project", keep_checkpoints="final")
    generations = [f"generate_refusal@{LORA_CELL}", f"generate_chrf@{LORA_CELL}"]
    dvc(project, "repro", *generations)
    output = project / "models" / LORA_CELL
    set_aside = project / "models" / ".intermediate" / LORA_CELL
    assert sorted(p.name for p in output.iterdir() if p.is_dir()) == ["ckpt-100"]
    assert sorted(p.name for p in set_aside.iterdir() if p.is_dir()) == [
        "ckpt-025",
        "ckpt-050",
        "ckpt-075",
    ]
    # What a reviewer keeps: every checkpoint's step and loss, and every checkpoint's responses.
    training = json.loads((output / "training.json").read_text())
    assert training["keep_checkpoints"] == "final" and len(training["checkpoints"]) == 4
    labels = ["ckpt-025", "ckpt-050", "ckpt-075", "ckpt-100"]
    for measurement in ("refusal", "chrf"):
        summary = project / "generations" / measurement / LORA_CELL / "generation.json"
        assert [c["label"] for c in json.loads(summary.read_text())["checkpoints"]] == labels
    ignored = subprocess.run(["git", "check-ignore", "-q", str(set_aside)], cwd=project)
    assert ignored.returncode == 0  # scratch: neither git's nor DVC's

    # The grid deletes them once the cell's job has succeeded; no stage becomes stale.
    delete_intermediate_checkpoints(project, LORA_CELL)
    assert not set_aside.exists()
    assert json.loads(dvc(project, "status", "--json", *generations).stdout or "{}") == {}
    lock = (project / "dvc.lock").read_text()
    forced = dvc(project, "repro", "--force", "--single-item", generations[0], check=False)
    shown = forced.stdout + forced.stderr
    assert forced.returncode != 0 and "Traceback" not in shown, shown[-3000:]
    assert f"retrain the cell (`dvc repro --force train@{LORA_CELL}`)" in shown
    assert "ckpt-025, ckpt-050, ckpt-075" in shown
    assert (project / "dvc.lock").read_text() == lock
