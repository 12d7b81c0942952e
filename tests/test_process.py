"""A stage process's start and end (`safetydrift.process`, `stage.run_stage`), in real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest


def run_python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    environment["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "modules"), *sys.path])
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=120,
    )


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "probe_parent.py").write_text("VALUE = 1\n")
    (folder / "probe_child.py").write_text("VALUE = 2\n")
    return folder


CACHE_THEN_IMPORT = """
    import os, subprocess, sys
    from safetydrift.process import enable_bytecode_cache
    print(enable_bytecode_cache())
    import probe_parent
    subprocess.run([sys.executable, "-c", "import probe_child"], check=True)
    print("PYTHONDONTWRITEBYTECODE" in os.environ, os.environ.get("PYTHONPYCACHEPREFIX"))
"""


def test_bytecode_goes_to_our_cache_where_the_environment_forbids_writing_it(
    tmp_path: Path, modules: Path
) -> None:
    cache = tmp_path / "pycache"
    done = run_python(
        CACHE_THEN_IMPORT, tmp_path, PYTHONDONTWRITEBYTECODE="1", SAFETYDRIFT_PYCACHE=str(cache)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(cache), f"False {cache}"]
    cached = sorted(p.name.split(".")[0] for p in cache.rglob("*.pyc") if "probe" in p.name)
    assert cached == ["probe_child", "probe_parent"]  # this process's imports and its child's
    assert not (modules / "__pycache__").exists()  # never beside the sources


def test_bytecode_settings_are_left_alone_when_python_writes_it_or_when_turned_off(
    tmp_path: Path, modules: Path
) -> None:
    cache = tmp_path / "pycache"
    writing = run_python(CACHE_THEN_IMPORT, tmp_path, SAFETYDRIFT_PYCACHE=str(cache))
    assert writing.returncode == 0, writing.stderr
    assert writing.stdout.splitlines()[0] == "None"
    assert (modules / "__pycache__").is_dir() and not cache.exists()

    (modules / "probe_parent.py").touch()
    for stale in (modules / "__pycache__").iterdir():
        stale.unlink()
    off = run_python(
        CACHE_THEN_IMPORT, tmp_path, PYTHONDONTWRITEBYTECODE="1", SAFETYDRIFT_PYCACHE="off"
    )
    assert off.returncode == 0, off.stderr
    assert off.stdout.splitlines() == ["None", "True None"]
    assert not list((modules / "__pycache__").iterdir()) and not cache.exists()


def test_process_age_counts_from_the_process_start(tmp_path: Path) -> None:
    started = time.perf_counter()
    done = run_python(
        """
        import time
        time.sleep(0.3)
        from safetydrift.process import process_age_seconds
        print(process_age_seconds())
        """,
        tmp_path,
    )
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    age = float(done.stdout)
    # Clock ticks are 10 ms: the age can neither be below the sleep nor above the parent's view.
    assert 0.3 <= age <= wall + 0.02


def test_a_finished_stage_exits_0_with_its_output_flushed_and_exit_handlers_run(
    tmp_path: Path,
) -> None:
    done = run_python(
        """
        import atexit, logging
        from pathlib import Path
        from safetydrift.stage import run_stage

        def stage():
            atexit.register(lambda: Path("exit-handler-ran").touch())
            print("stage output")
            logging.getLogger("stage").info("stage log line")

        run_stage(stage)
        print("never printed: the stage's process ends with it")
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "stage output\n"
    assert "stage log line" in done.stderr
    assert (tmp_path / "exit-handler-ran").exists()


def test_a_stage_with_bad_input_exits_1_with_one_line(tmp_path: Path) -> None:
    done = run_python(
        """
        from safetydrift.stage import run_stage

        def stage():
            raise ValueError("params.yaml: `train.learning_rate` must be > 0, got -1")

        run_stage(stage)
        """,
        tmp_path,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: params.yaml: `train.learning_rate` must be > 0, got -1"
