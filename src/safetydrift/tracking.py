"""MLflow tracking shared by every stage: one experiment per study, one run per stage cell.

Each stage writes its own run with MLflow's client, in its own process. The store is
`MLFLOW_TRACKING_URI` when set, else a SQLite file in the repository (ignored by git). It is
opened and checked when the run opens, before the stage does any work: an unreachable server
fails the stage in seconds with its URI, or, with `runtime.tracking_fallback: local` in
params.yaml, the run goes to the repository's SQLite store instead. A store that refuses a
write (a full disk, a deleted database) fails the stage with one line and its run is never
marked FINISHED. Only the params a stage declares are logged, never the environment: tokens
such as HF_TOKEN must not reach the store.

MLflow is imported when a run opens, not with this module: importing it and opening a SQLite
store cost a stage ~2.2 s on a CPU (1.3 s import, 0.8 s for the store's ORM and schema check),
which `safetydrift grid` and the other commands that only need `tracking_uri` or
`TrackingError` should not pay. Logging is synchronous: a stage logs a few batches (one per
checkpoint), each a single SQLite transaction of ~10-30 ms, so MLflow's asynchronous logging
would save nothing worth a queue that must be drained before the process exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from safetydrift.params import choice

log = logging.getLogger(__name__)

DEFAULT_STORE = "mlruns.db"
ARTIFACTS_DIR = "mlartifacts"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on one param value
MAX_REASON_LENGTH = 500

FALLBACK_PARAM = "runtime.tracking_fallback"
FALLBACKS = ("none", "local")

# MLflow's HTTP settings (its own environment variables, read on every request), used where
# the user has not set them. Opening the run is the check that the server answers: one quick
# retry, so a closed port fails in ~1 s and a silent host in ~10 s (MLflow's defaults, 7
# retries with exponential backoff and a 120 s timeout, let a stage hang for minutes). Writes
# during the run, once the server has answered, get more patience.
OPEN_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
RUN_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}

_fallback = "none"


def set_fallback(mode: str | None) -> None:
    """Where a run goes when its store cannot be opened: `none` fails the stage, `local` uses
    the repository's SQLite store (`runtime.tracking_fallback`, applied by every stage)."""
    global _fallback
    mode = "none" if mode is None else mode
    _fallback = choice(mode, FALLBACKS, FALLBACK_PARAM, ValueError)


def repo_root() -> Path:
    """The directory holding dvc.yaml; stages run from there, tests from temporary copies."""
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").exists():
            return candidate
    return here


def local_uri(root: Path | None = None) -> str:
    """The repository's own SQLite store."""
    return f"sqlite:///{(root or repo_root()) / DEFAULT_STORE}"


def tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI`, else the SQLite store of the repository at `root` (or here).

    A relative SQLite or file store is made absolute, so that every stage and `safetydrift
    grid`'s workers, wherever they run, write the same one.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or local_uri(root)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
    if "://" not in uri and not uri.startswith(("file:", "databricks")):
        return str(Path(uri).resolve())
    return uri


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


def _reason(error: BaseException) -> str:
    """What went wrong, in one line: the first line of the innermost error of the chain (MLflow
    wraps SQLAlchemy's error, which wraps the database's, and appends SQL and links)."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= MAX_REASON_LENGTH else text[: MAX_REASON_LENGTH - 3] + "..."


@contextlib.contextmanager
def _http_settings(settings: Mapping[str, str]) -> Iterator[None]:
    """MLflow's HTTP settings for the calls inside, where the user set none of their own."""
    added = [name for name in settings if name not in os.environ]
    os.environ.update({name: settings[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


class TrackingError(RuntimeError):
    """The MLflow run of a stage could not be opened or written."""


def _experiment_id(client, name: str, uri: str, root: Path) -> str:
    """The study's experiment, created on first use (artifacts beside a SQLite store)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifact_location = (root / ARTIFACTS_DIR).as_uri() if uri.startswith("sqlite:") else None
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # another stage created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _create_sqlite_store_once(path: Path) -> None:
    """Create the SQLite store at `path` if there is none, one process at a time.

    MLflow creates a missing store's tables on first use; stages that start at once
    (`safetydrift grid --jobs N`, or the first stages after the file was deleted) would each run
    the migrations and all but one fail ("table alembic_version already exists"). So a process
    that finds no store creates it under an exclusive lock on its folder (not a lock file,
    which git would show), and one that finds it waits only until its creator is done.
    """
    from mlflow import MlflowClient  # import cost: module docstring

    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        if not path.exists() or path.stat().st_size == 0:
            MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments(max_results=1)
    finally:
        os.close(folder)  # releases the lock


class StageRun:
    """A stage's open MLflow run. Every write is synchronous; a refused one raises
    `TrackingError` naming the store."""

    def __init__(self, client, uri: str, run_id: str) -> None:
        self._client = client
        self.uri = uri
        self.run_id = run_id

    @classmethod
    def open(
        cls, uri: str, experiment: str, run_name: str, tags: Mapping[str, str], root: Path
    ) -> StageRun:
        """Open the store at `uri` and start a run there; a store that cannot be opened raises
        `TrackingError` at once, before the stage's work."""
        # Measured import cost (module docstring): only a stage that opens a run pays it.
        from mlflow import MlflowClient

        # It logs each database error with its traceback; TrackingError says it in one line.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

        http_settings = OPEN_HTTP_SETTINGS if uri.startswith(("http:", "https:")) else {}
        try:
            if uri.startswith("sqlite:///"):
                _create_sqlite_store_once(Path(uri[len("sqlite:///") :]))
            with _http_settings(http_settings):
                client = MlflowClient(tracking_uri=uri)
                experiment_id = _experiment_id(client, experiment, uri, root)
                run_id = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        except Exception as error:
            raise TrackingError(
                f"the MLflow store {uri} could not be opened: {_reason(error)}"
            ) from error
        return cls(client, uri, run_id.info.run_id)

    def _write(self, what: str, call, *args: Any, **kwargs: Any) -> None:
        http_settings = RUN_HTTP_SETTINGS if self.uri.startswith(("http:", "https:")) else {}
        try:
            with _http_settings(http_settings):
                call(*args, **kwargs)
        except Exception as error:
            raise TrackingError(
                f"the MLflow store {self.uri} refused the {what} of run {self.run_id}: "
                f"{_reason(error)}"
            ) from error

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.log_metric_history([(step or 0, metrics)])

    def log_metric_history(self, history: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Many steps' metrics in one write: a training stage sends a checkpoint's worth at once
        (MLflow's client splits it into batches of 1,000)."""
        from mlflow.entities import Metric  # import cost: module docstring

        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), timestamp, int(step))
            for step, step_values in history
            for key, value in step_values.items()
            if value is not None
        ]
        if metrics:
            self._write("metrics", self._client.log_batch, self.run_id, metrics=metrics)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param  # import cost: module docstring

        if params:
            values = [Param(k, _param_value(v)) for k, v in params.items()]
            self._write("params", self._client.log_batch, self.run_id, params=values)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag  # import cost: module docstring

        if tags:
            values = [RunTag(k, str(v)) for k, v in tags.items()]
            self._write("tags", self._client.log_batch, self.run_id, tags=values)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._write(
            f"artifact {path}",
            self._client.log_artifact,
            self.run_id,
            str(path),
            artifact_path=artifact_path,
        )

    def log_table(self, columns: Mapping[str, Sequence[Any]], artifact_file: str) -> None:
        """A per-row table (MLflow's table artifact: the UI shows and compares it across runs)."""
        self._write(
            f"table {artifact_file}",
            self._client.log_table,
            self.run_id,
            data={name: list(values) for name, values in columns.items()},
            artifact_file=artifact_file,
        )

    def log_inputs(self, inputs: Mapping[str, str], root: Path) -> None:
        """The DVC-tracked files and folders a stage reads, as MLflow datasets: `{path: context}`
        (MLflow's `mlflow.data.context` tag: training, evaluation). The digest is the md5 that
        dvc.lock records for the path, so a run links to the exact DVC object it read."""
        from mlflow.entities import Dataset, DatasetInput, InputTag  # import cost: module docstring

        digests = dvc_output_digests(root)
        datasets = []
        for path, context in inputs.items():
            digest = digests.get(path.rstrip("/"))
            source = {"path": path, "dvc_md5": digest, "git_commit": _git_revision()}
            datasets.append(
                DatasetInput(
                    Dataset(
                        name=path,
                        digest=(digest or "untracked")[:36],
                        source_type="dvc",
                        source=json.dumps(source),
                    ),
                    tags=[InputTag("mlflow.data.context", context)],
                )
            )
        if not datasets:
            return
        try:
            self._write("inputs", self._client.log_inputs, self.run_id, datasets=datasets)
        except TrackingError as error:
            # The store creates a dataset the first time a run logs it, by looking it up and
            # inserting it if absent: stages side by side that read the same file can both miss
            # it and one insert loses on the store's unique key. The dataset exists then, and
            # logging again links this run to it.
            if not _lost_insert_race(error):
                raise
            self._write("inputs", self._client.log_inputs, self.run_id, datasets=datasets)

    def close(self, status: str) -> None:
        """End the run with `status` (FINISHED or FAILED)."""
        self._write(f"end ({status})", self._client.set_terminated, self.run_id, status=status)


def _lost_insert_race(error: BaseException) -> bool:
    """A unique-key violation, as SQLite, PostgreSQL and MySQL report it (directly or through an
    MLflow server's message)."""
    text = str(error).lower()
    return any(
        mark in text
        for mark in ("unique constraint", "integrityerror", "duplicate entry", "duplicate key")
    )


def dvc_output_digests(root: Path) -> dict[str, str]:
    """The md5 that dvc.lock records for each stage output (a folder's ends in `.dir`), by path
    without a trailing slash; a path no stage has produced yet (a stage run outside `dvc repro`)
    is absent. dvc.lock is read once: for the standin grid it grows to ~20,000 lines."""
    # libyaml's loader where PyYAML has it: 0.12 s for the grid's dvc.lock, 0.93 s in Python.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        lock = yaml.load((root / "dvc.lock").read_text(encoding="utf-8"), Loader=loader) or {}
    except (OSError, yaml.YAMLError):
        return {}
    digests = {}
    for entry in (lock.get("stages") or {}).values():
        for out in entry.get("outs") or []:
            path = str(out.get("path", "")).rstrip("/")
            if out.get("md5"):
                digests.setdefault(path, str(out["md5"]))
    return digests


def open_run(experiment: str, run_name: str, tags: Mapping[str, str]) -> StageRun:
    """The run in the configured store, or in the local one where that cannot be opened and
    `runtime.tracking_fallback` is `local`."""
    root = repo_root()
    uri = tracking_uri(root)
    try:
        return StageRun.open(uri, experiment, run_name, tags, root)
    except TrackingError as error:
        fallback = local_uri(root)
        if _fallback != "local" or uri == fallback:
            advice = "is its server running? " if uri.startswith(("http:", "https:")) else ""
            if uri != fallback:
                advice += f"`{FALLBACK_PARAM}: local` in params.yaml tracks into {fallback}"
            raise TrackingError(f"{error}{' (' + advice + ')' if advice else ''}") from error
        log.warning("%s; tracking into %s instead (%s: local)", error, fallback, FALLBACK_PARAM)
        return StageRun.open(fallback, experiment, run_name, tags, root)


@contextlib.contextmanager
def stage_run(
    study: str,
    stage: str,
    params: Mapping[str, Any],
    cell: str | None = None,
    inputs: Mapping[str, str] | None = None,
) -> Iterator[StageRun]:
    """An MLflow run named `stage@cell` in the study's experiment, with its params logged, and
    its DVC-tracked inputs (`{path: context}`) logged as datasets.

    The run is opened (and its store checked) on entry, before the stage's work. A stage that
    fails marks its run FAILED, so the store never shows a crashed stage as done.
    """
    tags = {"safetydrift.stage": stage, "safetydrift.study": study}
    if cell:
        tags["safetydrift.cell"] = cell
    revision = _git_revision()
    if revision:
        tags["mlflow.source.git.commit"] = revision
    run = open_run(experiment_name(study), f"{stage}@{cell}" if cell else stage, tags)
    try:
        run.log_params(params)
        if inputs:
            run.log_inputs(inputs, repo_root())
        yield run
    except BaseException:
        with contextlib.suppress(Exception):  # the stage's own error is the one to report
            run.close("FAILED")
        raise
    run.close("FINISHED")
