"""Shared fixtures: the repository's own fixture data and a tiny random chat model."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY_MODEL = FIXTURES / "tiny-chat-model"
LANGUAGES = ["german", "italian", "french", "portuguese", "spanish"]

# One CPU thread per process, for this process and every stage, DVC and Ray process the tests
# start (they inherit the environment). The models are tiny: torch's OpenMP threads bring
# nothing, and with three xdist workers on CI's two cores, each running stage processes of its
# own, threads that spin waiting for preempted peers burn the CPU the other workers need (the
# suite: 856 s against 712 s with one thread, on 2 cores, 2026-12-03). Set before any test module
# imports torch, which reads it once; `OMP_NUM_THREADS=2 pytest ...` still overrides it.
for _threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")


# The modules that run whole DVC pipelines, longest first (seconds on the 2-core CI machine).
# pytest-xdist (`--dist loadfile`, `--no-loadscope-reorder` in pyproject.toml) hands whole files
# to its workers in collection order; starting with the longest lets the short ones fill in
# behind them, so both workers finish together instead of one starting a 5-minute file last.
LONGEST_FIRST = (
    "test_pipeline_dvc.py",
    "test_chat_preset_llama2_chat.py",
    "test_chat_preset_enais_gemma.py",
    "test_keep_checkpoints.py",
    "test_bench_determinism.py",
    "test_disk_full.py",
    "test_training.py",
    "test_disk.py",
    "test_faults.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    # A stable sort: the order of tests within a file, and of the other files, stays as written.
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path_factory, monkeypatch):
    """Every test tracks into its own SQLite store unless it sets MLFLOW_TRACKING_URI itself."""
    store = tmp_path_factory.mktemp("mlflow") / "mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory) -> Path:
    from safetydrift.models import ModelSpec, prepare_model

    out = tmp_path_factory.mktemp("models") / "base"
    prepare_model(ModelSpec(source=str(TINY_MODEL), init="random", dtype="float32"), out)
    return out


@pytest.fixture(scope="session")
def prepared_mtpref(tmp_path_factory) -> Path:
    from safetydrift.data.mtpref import prepare_mtpref
    from safetydrift.data.sources import Source

    out = tmp_path_factory.mktemp("mtpref")
    prepare_mtpref(
        Source(str(FIXTURES / "mtpref-tiny.jsonl")), "train", LANGUAGES, "english", 0.167, 42, out
    )
    return out


def copy_project(destination: Path) -> Path:
    """A fresh git + DVC checkout of this project's pipeline files, for `dvc repro` tests."""
    for name in ("dvc.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, destination / name)
    # The committed default, whatever preset the working tree's params.yaml holds now.
    shutil.copy(ROOT / "presets" / "paper.yaml", destination / "params.yaml")
    for name in (
        "stages",
        "presets",
        "scripts",
        "src",
        "tests/fixtures",
        "reviews",
        "requirements",
    ):
        shutil.copytree(
            ROOT / name, destination / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / ".gitignore", destination / ".gitignore")
    # The folder the report depends on, there even when no evaluation set is run.
    (destination / "metrics" / "evaluations").mkdir(parents=True)
    readme = Path("metrics") / "evaluations" / "README.md"
    shutil.copy(ROOT / readme, destination / readme)
    run = lambda *cmd: subprocess.run(cmd, cwd=destination, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    run("git", "config", "user.email", "test@example.com")
    run("git", "config", "user.name", "test")
    run(sys.executable, "-m", "dvc", "init", "-q")
    # The project's own DVC configuration: its cache links files instead of copying them.
    shutil.copy(ROOT / ".dvc" / "config", destination / ".dvc" / "config")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "project")
    return destination


def stage_env() -> dict[str, str]:
    """Environment for stage subprocesses: this interpreter's tools first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    """`safetydrift ARGS` in a test project, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "safetydrift.cli", *args],
        cwd=project,
        env=stage_env(),
        capture_output=True,
        text=True,
    )


def load_stage(name: str):
    """A DVC stage script of stages/ as a module, to call its `main` in the test's process."""
    spec = importlib.util.spec_from_file_location(f"stages.{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`dvc ARGS` in a test project; a failure (with `check`) shows DVC's own output."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=project,
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def small_filesystem(path: Path, size: str) -> None:
    """Mount a tmpfs of `size` (e.g. 64k) at `path`, for tests of a full disk: the caller
    unmounts it. Mounting needs root; elsewhere the test is skipped, saying why."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")


def smoke_copy(path: Path, **train: object) -> Path:
    """`copy_project` at `path` (made if missing) on the smoke preset, `train` keys overridden."""
    import yaml

    path.mkdir(parents=True, exist_ok=True)
    project = copy_project(path)
    params = yaml.safe_load((project / "presets" / "smoke.yaml").read_text())
    params["train"].update(train)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path`, as `du --apparent-size` counts them."""
    return sum(p.stat().st_size for p in files_under(path))
