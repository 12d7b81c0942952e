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


class StageRun:
    """What a stage logs while its MLflow run is open."""

    def __init__(self, mlflow_module, run) -> None:
        self._mlflow = mlflow_module
        self.run = run

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def log_metric_history(self, history: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Many steps' metrics in one write: a training stage sends a checkpoint's worth at once
        (one SQLite transaction, where a call per step would pause training for each)."""
        import time

        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), timestamp, step)
            for step, values in history
            for key, value in values.items()
            if value is not None
        ]
        if metrics:
            self._mlflow.MlflowClient().log_batch(self.run_id, metrics=metrics)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._mlflow.log_params({k: _param_value(v) for k, v in params.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})


@contextlib.contextmanager
def stage_run(
    study: str, stage: str, params: Mapping[str, Any], cell: str | None = None
) -> Iterator[StageRun]:
    """Open an MLflow run named `stage@cell` in the study's experiment, with its params logged.

    A stage that fails marks its run FAILED, so the store never shows a crashed stage as done.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    name = experiment_name(study)
    if mlflow.get_experiment_by_name(name) is None:
        artifact_location = None
        if mlflow.get_tracking_uri().startswith("sqlite:"):
            artifact_location = (repo_root() / ARTIFACTS_DIR).as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=artifact_location)
        except Exception:  # another stage created it first
            if mlflow.get_experiment_by_name(name) is None:
                raise
    mlflow.set_experiment(name)
    run_name = f"{stage}@{cell}" if cell else stage
    tags = {"safetydrift.stage": stage, "safetydrift.study": study}
    if cell:
        tags["safetydrift.cell"] = cell
    revision = _git_revision()
    if revision:
        tags["mlflow.source.git.commit"] = revision
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        handle = StageRun(mlflow, run)
        handle.log_params(params)
        yield handle
