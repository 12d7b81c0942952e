"""safetydrift.grid.lock_once: `dvc repro` that writes dvc.lock once, on real DVC projects."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import dvc, stage_env

from safetydrift.grid import lock_once

STAGES = ("first", "second", "third")


def chained_project(path: Path, failing: str | None = None) -> Path:
    """Three stages, each reading the previous one's output, each with a cached output and an
    uncached metric (as the study's stages have); `failing` exits 1 instead."""
    path.mkdir()
    stages, previous = {}, "seed"
    for name in STAGES:
        code = (
            "import sys; sys.exit(1)"
            if name == failing
            else "import json; "
            f"open('{name}.txt', 'w').write(open('{previous}').read() + '{name} '); "
            f"json.dump(dict({name}=1), open('{name}.json', 'w'))"
        )
        stages[name] = {
            "cmd": f'python -c "{code}"',
            "deps": [previous],
            "outs": [f"{name}.txt"],
            "metrics": [{f"{name}.json": {"cache": False}}],
        }
        previous = f"{name}.txt"
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (path / "seed").write_text("seed ")
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=path, check=True)
    return path


def lock_once_repro(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "safetydrift.grid.lock_once", "repro"],
        cwd=project,
        env=stage_env(),
        capture_output=True,
        text=True,
    )


def forget_outputs(project: Path) -> None:
    """What a restore finds: the run-cache holds every stage, the workspace none of them."""
    (project / "dvc.lock").unlink()
    for name in STAGES:
        (project / f"{name}.txt").unlink()
        (project / f"{name}.json").unlink()


def test_a_restore_from_the_run_cache_records_what_dvc_repro_records(tmp_path):
    project = chained_project(tmp_path / "project")
    dvc(project, "repro")
    recorded = (project / "dvc.lock").read_text()
    forget_outputs(project)

    done = lock_once_repro(project)

    assert done.returncode == 0, done.stdout + done.stderr
    for name in STAGES:
        assert f"Stage '{name}' is cached - skipping run" in done.stdout + done.stderr
        assert json.loads((project / f"{name}.json").read_text()) == {name: 1}
    assert (project / "third.txt").read_text() == "seed first second third "
    assert (project / "dvc.lock").read_text() == recorded
    assert "Data and pipelines are up to date" in dvc(project, "status").stdout


def test_the_lock_file_is_written_once(tmp_path, monkeypatch):
    project = chained_project(tmp_path / "project")
    dvc(project, "repro")
    forget_outputs(project)
    import dvc.dvcfile as dvcfile

    writes = []
    modify_yaml = dvcfile.modify_yaml

    def counted(path, *args, **kwargs):
        writes.append(Path(path).name)
        return modify_yaml(path, *args, **kwargs)

    monkeypatch.setattr(dvcfile, "modify_yaml", counted)
    monkeypatch.chdir(project)
    monkeypatch.setenv("PATH", stage_env()["PATH"])

    assert lock_once.main(["repro"]) == 0
    assert writes == ["dvc.lock"]
    # Afterwards, DVC writes per stage again.
    writes.clear()
    (project / "seed").write_text("changed ")
    from dvc.cli import main as dvc_main

    assert dvc_main(["repro"]) == 0
    assert writes == ["dvc.lock"] * len(STAGES)


def test_the_stages_done_before_a_failure_are_recorded(tmp_path):
    project = chained_project(tmp_path / "project", failing="third")

    done = lock_once_repro(project)

    assert done.returncode != 0
    assert "failed to reproduce 'third'" in done.stdout + done.stderr
    locked = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert sorted(locked) == ["first", "second"]
    status = dvc(project, "status").stdout
    assert "third:" in status and "first:" not in status and "second:" not in status


def test_other_commands_are_refused():
    with pytest.raises(SystemExit, match="usage"):
        lock_once.main(["push"])


def test_a_dvc_without_the_replaced_names_is_refused_by_name(monkeypatch):
    import dvc.repo.reproduce as dvc_reproduce

    monkeypatch.delattr(dvc_reproduce, "_reproduce")
    refused = pytest.raises(RuntimeError, match=r"no dvc\.repo\.reproduce\._reproduce: .*updating")
    with refused, lock_once.lock_written_once():
        pass
