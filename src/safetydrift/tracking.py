"""MLflow tracking shared by every stage: one experiment per study, one run per stage cell.

The store is `MLFLOW_TRACKING_URI` when set, else a SQLite file in the repository (ignored by
git). Only the params a stage declares are logged, never the environment: tokens such as
HF_TOKEN must not reach the store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_STORE = "mlruns.db"
ARTIFACTS_DIR = "mlartifacts"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on one param value


def repo_root() -> Path:
    """The directory holding dvc.yaml; stages run from there, tests from temporary copies."""
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").exists():
            return candidate
    return here


def tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI`, else the SQLite store of the repository at `root` (or here)."""
    store = (root or repo_root()) / DEFAULT_STORE
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store}"


def experiment_name(study: str) -> str:
    return f"safetydrift-{study}"


def _git_revision() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


class TrackingError(RuntimeError):
    """The MLflow run of a stage could not be written."""


class StageRun:
    """A stage's MLflow run, written by a helper process.

    Importing MLflow and opening its store take a stage process seconds (6-7 s on the GPU
    machine), and the study runs ~70 stage processes. So each stage hands its run to a helper
    process (`python -m safetydrift.tracking`, started with the stage) that imports MLflow on
    another core while the stage imports torch and loads its model, then writes the run: params,
    tags, metrics (timestamped when the stage logged them), artifacts, in the stage's order.
    Messages are JSON lines on the helper's stdin. `close` waits for the helper; if it failed,
    the stage fails there, so a stage never passes with its run missing.
    """

    def __init__(
        self, uri: str, experiment: str, run_name: str, tags: Mapping[str, str], root: Path
    ) -> None:
        self._helper = subprocess.Popen(
            [sys.executable, "-m", "safetydrift.tracking"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._run_id: str | None = None
        self._send(
            op="open",
            uri=uri,
            experiment=experiment,
            run_name=run_name,
            tags=dict(tags),
            root=str(root),
        )

    def _send(self, **message: Any) -> None:
        import json

        assert self._helper.stdin is not None
        try:
            self._helper.stdin.write(json.dumps(message) + "\n")
            self._helper.stdin.flush()
        except BrokenPipeError:
            self._fail()

    def _fail(self) -> None:
        self._helper.wait()
        raise TrackingError(
            f"the MLflow run could not be written (tracking helper exited with "
            f"{self._helper.returncode}; its error is printed above)"
        )

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            assert self._helper.stdout is not None
            line = self._helper.stdout.readline()
            if not line:
                self._fail()
            self._run_id = line.strip()
        return self._run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.log_metric_history([(step or 0, metrics)])

    def log_metric_history(self, history: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Many steps' metrics in one write: a training stage sends a checkpoint's worth at once
        (one SQLite transaction instead of one a step)."""
        timestamp = int(time.time() * 1000)
        values = [
            (key, float(value), timestamp, int(step))
            for step, step_values in history
            for key, value in step_values.items()
            if value is not None
        ]
        if values:
            self._send(op="metrics", values=values)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if params:
            self._send(op="params", params={k: _param_value(v) for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._send(op="tags", tags={k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._send(op="artifact", path=str(Path(path).resolve()), artifact_path=artifact_path)

    def close(self, status: str) -> None:
        """End the run with `status` (FINISHED or FAILED) once everything logged is written."""
        self._send(op="close", status=status)
        assert self._helper.stdin is not None
        self._helper.stdin.close()
        if self._helper.wait() != 0:
            self._fail()


@contextlib.contextmanager
def stage_run(
    study: str, stage: str, params: Mapping[str, Any], cell: str | None = None
) -> Iterator[StageRun]:
    """An MLflow run named `stage@cell` in the study's experiment, with its params logged.

    A stage that fails marks its run FAILED, so the store never shows a crashed stage as done.
    """
    tags = {"safetydrift.stage": stage, "safetydrift.study": study}
    if cell:
        tags["safetydrift.cell"] = cell
    revision = _git_revision()
    if revision:
        tags["mlflow.source.git.commit"] = revision
    run_name = f"{stage}@{cell}" if cell else stage
    run = StageRun(tracking_uri(), experiment_name(study), run_name, tags, repo_root())
    run.log_params(params)
    try:
        yield run
    except BaseException:
        with contextlib.suppress(Exception):  # the stage's own error is the one to report
            run.close("FAILED")
        raise
    run.close("FINISHED")


# --------------------------------------------------------------------------------------------
# The helper process


def _experiment_id(client, message: dict[str, Any]) -> str:
    """The study's experiment, created on first use (artifacts beside a SQLite store)."""
    name = message["experiment"]
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifact_location = None
    if message["uri"].startswith("sqlite:"):
        artifact_location = (Path(message["root"]) / ARTIFACTS_DIR).as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # another stage created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def serve(lines, out) -> None:
    """Write one stage's run from its JSON-line messages (what `python -m` of this module does)."""
    import json

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = None
    run_id = None
    for line in lines:
        message = json.loads(line)
        op = message["op"]
        if op == "open":
            client = MlflowClient(tracking_uri=message["uri"])
            run_id = client.create_run(
                _experiment_id(client, message),
                run_name=message["run_name"],
                tags=message["tags"],
            ).info.run_id
            print(run_id, file=out, flush=True)
        elif op == "params":
            params = [Param(k, v) for k, v in message["params"].items()]
            client.log_batch(run_id, params=params)
        elif op == "metrics":
            client.log_batch(run_id, metrics=[Metric(*value) for value in message["values"]])
        elif op == "tags":
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in message["tags"].items()])
        elif op == "artifact":
            client.log_artifact(run_id, message["path"], artifact_path=message["artifact_path"])
        elif op == "close":
            client.set_terminated(run_id, status=message["status"])
        else:
            raise ValueError(f"unknown tracking message {op!r}")


if __name__ == "__main__":
    from safetydrift.process import exit_now

    serve(sys.stdin, sys.stdout)
    # The run is written and closed; the stage waits for this exit, and MLflow's teardown
    # (its SQL engine, its modules) would add a second to every stage.
    exit_now(0)
