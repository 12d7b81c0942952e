"""Stages log to a real MLflow tracking server, bound to 127.0.0.1, and the runs read back."""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import FIXTURES, load_stage

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


# The tracking service: one long-lived writer of every stage's run.


@pytest.fixture
def private_service(tmp_path, monkeypatch):
    """A service of this test's own (its directory under XDG_RUNTIME_DIR), ended afterwards."""
    import os
    import shutil
    import signal
    import tempfile

    # Short: a Unix socket's path has a limit that pytest's temporary paths can pass.
    runtime = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.chdir(tmp_path)
    yield runtime
    for lock in runtime.glob("*/*.lock"):
        pid = service_pid(lock.with_suffix(".sock"))
        if pid:
            os.kill(pid, signal.SIGTERM)
    shutil.rmtree(runtime, ignore_errors=True)


def service_pid(socket_path):
    """The pid of the service listening at `socket_path`, from its greeting; None if none."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.connect(str(socket_path))
            return int(connection.recv(64).split()[1])
        except (OSError, IndexError):
            return None


def runs_of(study):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    experiment = client.get_experiment_by_name(tracking.experiment_name(study))
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def test_stages_share_one_service_that_ends_when_idle(private_service, monkeypatch):
    monkeypatch.setenv("SAFETYDRIFT_TRACKING_IDLE", "2")
    with tracking.stage_run("service-test", "first", {"a": 1}) as first:
        first.log_metrics({"x": 1.0})
    with tracking.stage_run("service-test", "second", {"a": 2}) as second:
        second.log_metrics({"x": 2.0})
    assert first.service_pid == second.service_pid
    socket_path, lock_path, log_path = tracking.service_paths()
    assert socket_path.parent.stat().st_mode & 0o777 == 0o700
    assert service_pid(socket_path) == first.service_pid
    runs = runs_of("service-test")
    assert {name: r.data.metrics["x"] for name, r in runs.items()} == {"first": 1.0, "second": 2.0}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    deadline = time.time() + 30
    while socket_path.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert not socket_path.exists(), log_path.read_text()
    assert "idle for 2 s: exiting" in log_path.read_text()
    with tracking.stage_run("service-test", "third", {}) as third:
        pass
    assert third.service_pid != first.service_pid
    assert runs_of("service-test")["third"].info.status == "FINISHED"


def test_stages_at_once_are_written_one_by_one(private_service):
    import threading

    errors = []

    def stage(number):
        try:
            with tracking.stage_run("service-test", f"stage{number}", {"n": number}) as run:
                run.log_metric_history([(step, {"loss": number + step}) for step in range(50)])
        except Exception as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=stage, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    runs = runs_of("service-test")
    assert sorted(runs) == [f"stage{n}" for n in range(8)]
    assert {r.data.params["n"] for r in runs.values()} == {str(n) for n in range(8)}
    assert {r.data.metrics["loss"] for r in runs.values()} == {n + 49.0 for n in range(8)}
    assert len({r.info.run_id for r in runs.values()}) == 8


def test_a_failed_write_fails_the_stage_with_the_reason(private_service, tmp_path):
    broken = tracking.stage_run("service-test", "broken", {})
    with pytest.raises(tracking.TrackingError, match="could not be written: .*missing.txt"):  # noqa: SIM117
        with broken as run:
            run.log_artifact(tmp_path / "missing.txt")
    assert runs_of("service-test")["broken"].info.status == "FAILED"
    with tracking.stage_run("service-test", "after", {}) as after:  # the service goes on
        after.log_metrics({"x": 1.0})
    assert after.service_pid == run.service_pid
    assert runs_of("service-test")["after"].info.status == "FINISHED"


def test_a_stage_killed_before_closing_leaves_its_run_failed(private_service):
    script = (
        "import os\n"
        "from safetydrift import tracking\n"
        "run = tracking.StageRun(tracking.tracking_uri(), tracking.experiment_name('service-test'),"
        " 'killed', {}, tracking.repo_root())\n"
        "run.log_metrics({'x': 1.0})\n"
        "print(run.run_id, flush=True)\n"
        "os._exit(9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    deadline = time.time() + 30
    while runs_of("service-test")["killed"].info.status == "RUNNING" and time.time() < deadline:
        time.sleep(0.2)
    run = runs_of("service-test")["killed"]
    assert run.info.run_id == done.stdout.strip()
    assert run.info.status == "FAILED" and run.data.metrics["x"] == 1.0


def test_a_dead_services_socket_is_replaced(private_service):
    socket_path, _, _ = tracking.service_paths()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path))
    stale.close()  # the file stays, nobody listens: as after a killed service
    assert socket_path.exists() and service_pid(socket_path) is None
    with tracking.stage_run("service-test", "fresh", {}) as run:
        pass
    assert service_pid(socket_path) == run.service_pid
    assert runs_of("service-test")["fresh"].info.status == "FINISHED"


def test_the_service_refuses_a_directory_others_can_enter_or_too_long_a_path(
    private_service, tmp_path, monkeypatch
):
    import os

    shared = private_service / f"safetydrift-{os.getuid()}"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(tracking.TrackingError, match="not a directory that only this user"):
        tracking.service_paths()
    deep = tmp_path / ("long" * 30)
    deep.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    with pytest.raises(tracking.TrackingError, match="too long for a Unix socket; set XDG_RUN"):
        tracking.service_paths()


def test_a_relative_store_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/mlruns.db")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/runs/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"
