"""Stages log to MLflow in their own process: a real tracking server bound to 127.0.0.1, SQLite
stores, and a store that is unreachable, deleted or out of disk space."""

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, load_stage

from safetydrift import tracking

PARAMS = {
    "study": {"name": "tracking-test"},
    "data": {"advbench": {"source": str(FIXTURES / "advbench-tiny.csv"), "revision": None}},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            assert server.poll() is None, server.stderr.read().decode()
            assert time.time() < deadline, "mlflow server did not start"
            time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=30)


def test_a_stage_run_reads_back_from_a_real_server(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_that_must_not_be_logged")
    monkeypatch.chdir(tmp_path)
    load_stage("prepare_advbench").main(PARAMS)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name(tracking.experiment_name("tracking-test"))
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "prepare_advbench" and run.info.status == "FINISHED"
    assert run.data.params["data.advbench.source"] == str(FIXTURES / "advbench-tiny.csv")
    assert run.data.metrics["rows"] == 12
    assert run.data.tags["safetydrift.stage"] == "prepare_advbench"
    logged = " ".join([*run.data.params.values(), *run.data.tags.values()])
    assert "hf_secret" not in logged


def test_a_failing_stage_is_recorded_as_failed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = {**PARAMS, "data": {"advbench": {"source": str(tmp_path / "missing.csv")}}}
    with pytest.raises(ValueError, match="missing.csv: no such file"):
        load_stage("prepare_advbench").main(bad)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    experiment = client.get_experiment_by_name(tracking.experiment_name("tracking-test"))
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert not (tmp_path / "data" / "advbench.jsonl").exists()


def test_the_default_store_is_a_sqlite_file_in_the_repository(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlruns.db'}"


def test_a_metric_history_is_logged_in_one_batch_with_its_steps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # More values than one MLflow batch takes (1,000): the client splits them.
    history = [
        (step, {"loss": 1 / step, "grad_norm": None, "rewards/margin": step})
        for step in range(1, 601)
    ]
    with tracking.stage_run("tracking-test", "train", {"lr": 1e-4}, cell="full-0.0001") as run:
        run.log_metric_history(history)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    losses = client.get_metric_history(run.run_id, "loss")
    assert sorted((m.step, m.value) for m in losses) == [(s, 1 / s) for s in range(1, 601)]
    assert len(client.get_metric_history(run.run_id, "rewards/margin")) == 600
    assert client.get_metric_history(run.run_id, "grad_norm") == []


def test_inputs_are_datasets_with_dvc_lock_digests_and_tables_are_artifacts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare_mtpref:\n    outs:\n"
        "    - path: data/mtpref/train.jsonl\n      hash: md5\n"
        "      md5: 0123456789abcdef0123456789abcdef\n      size: 10\n"
    )
    inputs = {"data/mtpref/train.jsonl": "training", "models/base": "training"}
    with tracking.stage_run("tracking-test", "train", {}, cell="lora-5e-05", inputs=inputs) as run:
        run.log_table({"id": [1, 2], "response": ["a", "b"]}, "responses.json")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    logged = client.get_run(run.run_id).inputs.dataset_inputs
    digests = {d.dataset.name: d.dataset.digest for d in logged}
    assert digests == {
        "data/mtpref/train.jsonl": "0123456789abcdef0123456789abcdef",
        "models/base": "untracked",  # no stage has produced it in this lock
    }
    assert {t.key: t.value for d in logged for t in d.tags} == {"mlflow.data.context": "training"}
    table = Path(client.download_artifacts(run.run_id, "responses.json", str(tmp_path)))
    assert json.loads(table.read_text())["data"] == [[1, "a"], [2, "b"]]


# Faults of the store, with a real stage script run as DVC runs it, in a temporary project.

ADVBENCH_OUTPUT = Path("data") / "advbench.jsonl"


def stage_project(tmp_path: Path, **runtime) -> Path:
    """A project folder holding what `stages/prepare_advbench.py` reads: dvc.yaml, params.yaml."""
    import yaml

    project = tmp_path / "project"
    project.mkdir()
    (project / "dvc.yaml").write_text("stages: {}\n")
    params = {**PARAMS, "runtime": {"progress": False, **runtime}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project


def run_prepare_advbench(
    project: Path, uri: str | None
) -> tuple[subprocess.CompletedProcess, float]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if uri is not None:
        env["MLFLOW_TRACKING_URI"] = uri
    env["PYTHONPATH"] = str(ROOT / "src")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "prepare_advbench.py")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, time.perf_counter() - started


def runs_in(uri: str, study: str = "tracking-test") -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(tracking.experiment_name(study))
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


CLOSED_PORT = 9  # discard: nothing listens there on this machine


@pytest.fixture
def closed_port_uri() -> str:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", CLOSED_PORT)) == 0:
            pytest.skip(f"something listens on 127.0.0.1:{CLOSED_PORT}")
    return f"http://127.0.0.1:{CLOSED_PORT}"


def test_an_unreachable_server_fails_the_stage_in_seconds_before_any_work(
    tmp_path, closed_port_uri
):
    project = stage_project(tmp_path)
    done, seconds = run_prepare_advbench(project, closed_port_uri)
    assert done.returncode == 1, done.stderr
    (line,) = error_lines(done)
    # One line, no traceback (above it, at most urllib3's warning that it retries once).
    assert done.stderr.strip().endswith(line) and "Traceback" not in done.stderr
    assert f"the MLflow store {closed_port_uri} could not be opened" in line
    assert "Connection refused (is its server running?" in line
    assert "tracking_fallback: local" in line
    assert seconds < 15
    assert not (project / ADVBENCH_OUTPUT).exists()


def test_with_the_local_fallback_an_unreachable_server_tracks_into_the_project(
    tmp_path, closed_port_uri
):
    project = stage_project(tmp_path, tracking_fallback="local")
    done, seconds = run_prepare_advbench(project, closed_port_uri)
    assert done.returncode == 0, done.stderr
    assert f"the MLflow store {closed_port_uri} could not be opened" in done.stderr
    assert f"tracking into sqlite:///{project.resolve()}/mlruns.db instead" in done.stderr
    assert (project / ADVBENCH_OUTPUT).exists()
    (run,) = runs_in(tracking.local_uri(project.resolve()))
    assert run.info.status == "FINISHED" and run.data.metrics["rows"] == 12


def test_a_fallback_the_project_does_not_know_is_refused_naming_the_key(tmp_path):
    project = stage_project(tmp_path, tracking_fallback="remote")
    done, _ = run_prepare_advbench(project, None)
    assert done.returncode == 1
    assert error_lines(done) == [
        "error: params.yaml: `runtime.tracking_fallback` must be one of none, local, got 'remote'"
    ]
    assert not (project / ADVBENCH_OUTPUT).exists()


def test_a_store_deleted_between_stages_is_created_again_by_the_next(tmp_path):
    project = stage_project(tmp_path)
    uri = tracking.local_uri(project.resolve())
    first, _ = run_prepare_advbench(project, None)
    assert first.returncode == 0, first.stderr
    (project / "mlruns.db").unlink()
    (project / ADVBENCH_OUTPUT).unlink()
    second, _ = run_prepare_advbench(project, None)
    assert second.returncode == 0, second.stderr
    (run,) = runs_in(uri)  # the first stage's run went with the deleted store
    assert run.info.status == "FINISHED" and run.data.metrics["rows"] == 12
    assert (project / ADVBENCH_OUTPUT).exists()


@pytest.fixture
def small_filesystem(tmp_path):
    """A 4 MB tmpfs (room for an MLflow store, not much more), unmounted afterwards."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def fill(folder: Path) -> Path:
    """A file that takes every free byte of `folder`'s filesystem."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_a_full_disk_under_the_store_fails_the_stage_with_one_line(tmp_path, small_filesystem):
    project = stage_project(tmp_path)
    uri = f"sqlite:///{small_filesystem / 'mlruns.db'}"
    first, _ = run_prepare_advbench(project, uri)
    assert first.returncode == 0, first.stderr
    (project / ADVBENCH_OUTPUT).unlink()
    filler = fill(small_filesystem)
    full, _ = run_prepare_advbench(project, uri)
    assert full.returncode == 1
    assert error_lines(full) == [full.stderr.strip()]
    line = full.stderr.strip()
    assert f"the MLflow store {uri} could not be opened" in line
    assert "disk is full" in line
    assert not (project / ADVBENCH_OUTPUT).exists()
    filler.unlink()
    # The store is whole, with the first stage's run and nothing FINISHED from the second.
    # (Read with sqlite3, closed at once: MLflow's client would keep the file system busy.)
    with contextlib.closing(sqlite3.connect(small_filesystem / "mlruns.db")) as store:
        assert store.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        statuses = store.execute("SELECT name, status FROM runs").fetchall()
    assert [s for s in statuses if s[1] != "FAILED"] == [("prepare_advbench", "FINISHED")]


def test_a_relative_store_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/mlruns.db")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/runs/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_a_store_deleted_during_a_stage_fails_its_next_write_naming_the_store(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    with (
        pytest.raises(tracking.TrackingError) as failure,
        tracking.stage_run("tracking-test", "eval_refusal", {}, cell="base") as run,
    ):
        store.unlink()
        run.log_metrics({"refusal_rate": 0.5})
    assert str(failure.value) == (
        f"the MLflow store sqlite:///{store} refused the metrics of run {run.run_id}: "
        "OperationalError: attempt to write a readonly database"
    )


STAGE_PROCESS = """
import sys
from safetydrift import tracking
with tracking.stage_run("tracking-test", "train", {"n": sys.argv[1]}, cell=sys.argv[1]) as run:
    run.log_metric_history([(step, {"loss": 1.0 / step}) for step in range(1, 301)])
"""


def test_stages_started_at_once_on_a_new_store_all_record_their_runs(tmp_path):
    # As `safetydrift grid --jobs N` starts them: processes side by side, one SQLite file.
    import os

    uri = f"sqlite:///{tmp_path / 'store' / 'mlruns.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT / "src")}
    stages = [
        subprocess.Popen(
            [sys.executable, "-c", STAGE_PROCESS, f"cell{n}"],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    errors = [stage.communicate(timeout=300)[1] for stage in stages]
    assert [stage.returncode for stage in stages] == [0] * 4, errors
    runs = runs_in(uri)
    assert sorted(r.info.run_name for r in runs) == [f"train@cell{n}" for n in range(4)]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.metrics["loss"] for r in runs} == {1.0 / 300}


SAME_INPUT_PROCESS = """
import sys, time
from pathlib import Path
from safetydrift import tracking
n, count = sys.argv[1], int(sys.argv[2])
with tracking.stage_run("tracking-test", "train", {"n": n}, cell=n) as run:
    Path(f"ready-{n}").touch()
    while len(list(Path().glob("ready-*"))) < count:  # all at once, as cells of a grid
        time.sleep(0.01)
    run.log_inputs({"data/train.jsonl": "training"}, Path.cwd())
"""


def test_stages_that_read_the_same_file_at_once_all_log_it_as_their_input(tmp_path):
    # The store creates a dataset the first time a run logs it; two runs logging the same one
    # at the same moment race to create it, and the loser must still record its input.
    import os

    (tmp_path / "data").mkdir()
    (tmp_path / "data/train.jsonl").write_text('{"source": "a", "target": "b"}\n')
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT / "src")}
    count = 6
    stages = [
        subprocess.Popen(
            [sys.executable, "-c", SAME_INPUT_PROCESS, f"cell{n}", str(count)],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(count)
    ]
    errors = [stage.communicate(timeout=300)[1] for stage in stages]
    assert [stage.returncode for stage in stages] == [0] * count, errors
    runs = runs_in(uri)
    assert len(runs) == count and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["data/train.jsonl"]
