"""Stages log to a real MLflow tracking server, bound to 127.0.0.1, and the runs read back."""

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import FIXTURES

from safetydrift import pipeline, tracking

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
    pipeline.prepare_advbench(PARAMS)

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
        pipeline.prepare_advbench(bad)
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
