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
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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


class StageRun:
    """A stage's MLflow run, written from a background thread.

    Opening a run costs a stage process seconds (importing MLflow, opening the store, creating the
    run: 5-8 s on the GPU machine with a SQLite store), which would add to every one of the
    study's ~70 stage processes. Here only the imports happen on the stage's thread; the run is
    opened, and everything logged to it is written in order, by one background thread while the
    stage loads its model and works. `close` waits for all of it and ends the run; an error in
    tracking fails the stage there.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, tags: Mapping[str, str]) -> None:
        # MLflow's modules are imported here, on the stage's own thread: importing them on the
        # background thread while this one imports torch or transformers (which share numpy,
        # pandas, yaml...) could hand either thread a half-initialised module.
        import mlflow  # noqa: F401
        import mlflow.entities  # noqa: F401

        if uri.startswith("sqlite:"):
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
        self._client = None
        self._run_id: str | None = None
        self._pending: list[Future] = []
        self._submit(self._open, uri, experiment, run_name, dict(tags))

    def _submit(self, function, *args) -> None:
        self._pending.append(self._pool.submit(function, *args))

    def _open(self, uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> None:
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=uri)
        found = self._client.get_experiment_by_name(experiment)
        if found is None:
            artifact_location = None
            if uri.startswith("sqlite:"):
                artifact_location = (repo_root() / ARTIFACTS_DIR).as_uri()
            try:
                experiment_id = self._client.create_experiment(
                    experiment, artifact_location=artifact_location
                )
            except Exception:  # another stage created it first
                found = self._client.get_experiment_by_name(experiment)
                if found is None:
                    raise
                experiment_id = found.experiment_id
        else:
            experiment_id = found.experiment_id
        run = self._client.create_run(experiment_id, run_name=run_name, tags=tags)
        self._run_id = run.info.run_id

    @property
    def run_id(self) -> str:
        self._pending[0].result()  # the run exists once `_open` is done
        assert self._run_id is not None
        return self._run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.log_metric_history([(step or 0, metrics)])

    def log_metric_history(self, history: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Many steps' metrics in one write: a training stage sends a checkpoint's worth at once
        (one SQLite transaction instead of one a step)."""
        timestamp = int(time.time() * 1000)
        values = [
            (key, float(value), timestamp, step)
            for step, step_values in history
            for key, value in step_values.items()
            if value is not None
        ]
        if values:
            self._submit(self._log_metrics, values)

    def _log_metrics(self, values: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric

        self._client.log_batch(self._run_id, metrics=[Metric(*value) for value in values])

    def log_params(self, params: Mapping[str, Any]) -> None:
        if params:
            self._submit(self._log_params, {k: _param_value(v) for k, v in params.items()})

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        self._client.log_batch(self._run_id, params=[Param(k, v) for k, v in params.items()])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._submit(self._set_tags, {k: str(v) for k, v in tags.items()})

    def _set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(self._run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._submit(self._log_artifact, str(path), artifact_path)

    def _log_artifact(self, path: str, artifact_path: str | None) -> None:
        self._client.log_artifact(self._run_id, path, artifact_path=artifact_path)

    def close(self, status: str) -> None:
        """Wait for everything logged, then end the run with `status` (FINISHED or FAILED)."""
        try:
            for future in self._pending:
                future.result()
            self._client.set_terminated(self._run_id, status=status)
        finally:
            self._pool.shutdown(wait=True)


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
    run = StageRun(tracking_uri(), experiment_name(study), run_name, tags)
    run.log_params(params)
    try:
        yield run
    except BaseException:
        with contextlib.suppress(Exception):  # the stage's own error is the one to report
            run.close("FAILED")
        raise
    run.close("FINISHED")
