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
    """`MLFLOW_TRACKING_URI`, else the SQLite store of the repository at `root` (or here).

    A relative SQLite or file store is made absolute here: the tracking service that writes it
    runs elsewhere.
    """
    store = (root or repo_root()) / DEFAULT_STORE
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store}"
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


class TrackingError(RuntimeError):
    """The MLflow run of a stage could not be written."""


class StageRun:
    """A stage's MLflow run, written by the tracking service.

    Importing MLflow and opening its store take a process 2-3 s (6-7 s on the GPU machine without
    bytecode), and the study runs ~70 stage processes, most of them shorter than that import
    where they do not load a model. So the runs are written by one long-lived process per user
    (`python -m safetydrift.tracking --serve`, see "The tracking service" below): the first stage
    starts it, later stages reuse it, and it exits after `SAFETYDRIFT_TRACKING_IDLE` seconds
    (default 60) without a stage. A stage connects in milliseconds and sends its run as JSON
    lines: params, tags, metrics (timestamped when the stage logged them), artifacts, in the
    stage's order. `close` waits until the service has written and ended the run; if anything
    failed, the stage fails there with the service's error, so a stage never passes with its
    run missing.
    """

    def __init__(
        self, uri: str, experiment: str, run_name: str, tags: Mapping[str, str], root: Path
    ) -> None:
        self._connection, self.service_pid = connect_to_service()
        self._replies = self._connection.makefile("r", encoding="utf-8")
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

        try:
            self._connection.sendall((json.dumps(message) + "\n").encode("utf-8"))
        except OSError as error:
            raise TrackingError(f"the tracking service went away: {error}") from error

    def _reply(self, expected: str) -> str:
        """The service's next reply of kind `expected` (`run` or `closed`); its error raises."""
        while True:
            line = self._replies.readline()
            if not line:
                raise TrackingError(
                    f"the tracking service ended before the run was written (its log: "
                    f"{service_paths()[2]})"
                )
            kind, _, text = line.rstrip("\n").partition(" ")
            if kind == "error":
                raise TrackingError(f"the MLflow run could not be written: {text}")
            if kind == "run":
                self._run_id = text
            if kind == expected:
                return text

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            self._reply("run")
        assert self._run_id is not None
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
        try:
            self._send(op="close", status=status)
            self._reply("closed")
        finally:
            self._replies.close()
            self._connection.close()


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
# The tracking service
#
# One process per user, Python, version of this module and MLflow environment (`MLFLOW_*`
# variables) listens on a Unix socket in a private directory (mode 0700, this user's) and writes
# the runs of any number of stages, one thread per connected stage, one write at a time. It
# holds an exclusive lock on a file beside the socket for as long as it lives, so two stages
# that start it at once get one service, and a dead service's socket is replaced. A stage that
# finds no service starts one, detached from its own session and output, and connects as soon as
# it listens (~0.1 s: MLflow is imported in the background while stages already connect).

SERVICE_IDLE_SECONDS = 60.0
# Variables that change where or how MLflow writes (its own, and object stores' credentials): a
# stage whose values differ gets a service of its own, started with them.
SERVICE_ENVIRONMENT = ("MLFLOW_", "AWS_", "AZURE_", "GOOGLE_", "DATABRICKS_")


def service_key() -> str:
    """What a stage may share a service with: the same Python, this same module, the same
    `SERVICE_ENVIRONMENT`. Hashed: the values (tokens among them) are never written."""
    import hashlib

    digest = hashlib.sha256(sys.executable.encode())
    digest.update(Path(__file__).read_bytes())
    for name, value in sorted(os.environ.items()):
        # The store itself comes with each run (`tracking_uri`): one service writes to any.
        if name.startswith(SERVICE_ENVIRONMENT) and name != "MLFLOW_TRACKING_URI":
            digest.update(f"{name}={value}\0".encode())
    return digest.hexdigest()[:16]


def service_directory() -> Path:
    """A directory only this user can enter (`XDG_RUNTIME_DIR`, else the temporary directory)."""
    import stat
    import tempfile

    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    path = base / f"safetydrift-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or stat.S_IMODE(info.st_mode) & 0o077
    ):
        raise TrackingError(
            f"{path} is not a directory that only this user can use (mode "
            f"{stat.S_IMODE(info.st_mode):o}, owner {info.st_uid}); the tracking service will "
            "not listen there. Remove it, or set XDG_RUNTIME_DIR to a private directory."
        )
    return path


def service_paths() -> tuple[Path, Path, Path]:
    """The service's socket, lock file and log."""
    stem = service_directory() / f"tracking-{service_key()}"
    socket_path = stem.with_suffix(".sock")
    if len(os.fsencode(socket_path)) > 100:  # the kernel's limit for a socket's path is ~107
        raise TrackingError(
            f"{socket_path} is too long for a Unix socket; set XDG_RUNTIME_DIR (or TMPDIR) to "
            "a shorter directory"
        )
    return socket_path, stem.with_suffix(".lock"), stem.with_suffix(".log")


def connect_to_service(timeout: float = 60.0):
    """A connection to the running service (started first if there is none), and its pid."""
    import socket

    socket_path, _, log_path = service_paths()
    started: subprocess.Popen | None = None
    deadline = time.monotonic() + timeout
    while True:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(str(socket_path))
            # The service greets a stage once it counts it: from then on it stays up for it.
            greeting = connection.recv(64).split()
            if greeting[:1] == [b"ready"]:
                return connection, int(greeting[1])
        except OSError:
            pass
        connection.close()
        if started is None or started.poll() is not None:
            if started is not None and started.returncode != 0:
                raise TrackingError(
                    f"the tracking service failed to start (exit status {started.returncode}); "
                    f"its log: {log_path}"
                )
            # None yet, or ours found another one holding the lock (one that was exiting).
            started = start_service(socket_path, log_path)
        if time.monotonic() > deadline:
            raise TrackingError(
                f"no tracking service listened at {socket_path} within {timeout:.0f} s; "
                f"its log: {log_path}"
            )
        time.sleep(0.01)


def start_service(socket_path: Path, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ)
    if env.get("PYTHONPATH"):  # the service runs in its own directory: keep the stage's imports
        entries = env["PYTHONPATH"].split(os.pathsep)
        env["PYTHONPATH"] = os.pathsep.join(str(Path(e).resolve()) for e in entries if e)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "safetydrift.tracking", "--serve", str(socket_path)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            cwd=socket_path.parent,
            env=env,
            start_new_session=True,  # not killed with the stage, nor holding its output open
        )


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


class RunWriter:
    """Writes one stage's run from its messages, with the service's MLflow clients by URI."""

    def __init__(self, clients: dict[str, Any]) -> None:
        self.clients = clients  # opening a store (its schema check) is paid once per URI
        self.client = None
        self.run_id: str | None = None

    def apply(self, message: dict[str, Any]) -> str | None:
        """Write what `message` says; the reply it gets, if any."""
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param, RunTag

        op = message["op"]
        if op == "open":
            uri = message["uri"]
            if uri not in self.clients:
                self.clients[uri] = MlflowClient(tracking_uri=uri)
            self.client = self.clients[uri]
            self.run_id = self.client.create_run(
                _experiment_id(self.client, message),
                run_name=message["run_name"],
                tags=message["tags"],
            ).info.run_id
            return f"run {self.run_id}"
        if self.client is None:
            raise ValueError(f"tracking message {op!r} before the run was opened")
        if op == "params":
            params = [Param(k, v) for k, v in message["params"].items()]
            self.client.log_batch(self.run_id, params=params)
        elif op == "metrics":
            metrics = [Metric(*value) for value in message["values"]]
            self.client.log_batch(self.run_id, metrics=metrics)
        elif op == "tags":
            tags = [RunTag(k, v) for k, v in message["tags"].items()]
            self.client.log_batch(self.run_id, tags=tags)
        elif op == "artifact":
            self.client.log_artifact(
                self.run_id, message["path"], artifact_path=message["artifact_path"]
            )
        elif op == "close":
            self.client.set_terminated(self.run_id, status=message["status"])
            return "closed"
        else:
            raise ValueError(f"unknown tracking message {op!r}")
        return None

    def fail(self) -> None:
        """After an error: the run, if it was opened, ends FAILED rather than RUNNING."""
        if self.client is not None and self.run_id is not None:
            with contextlib.suppress(Exception):
                self.client.set_terminated(self.run_id, status="FAILED")


class Service:
    """The listening side: one thread per stage; writes one at a time (SQLite has one writer)."""

    def __init__(self, idle_seconds: float) -> None:
        import threading

        self.idle_seconds = idle_seconds
        self.state = threading.Lock()
        self.write_lock = threading.Lock()
        self.connected = 0
        self.idle_since = time.monotonic()
        self.mlflow_ready = threading.Event()
        self.import_error: str | None = None
        self.clients: dict[str, Any] = {}  # MlflowClient by tracking URI, used under write_lock

    def import_mlflow(self) -> None:
        try:
            import mlflow  # noqa: F401
            from mlflow import MlflowClient  # noqa: F401
        except Exception as error:  # reported to every stage that connects
            self.import_error = f"importing MLflow failed: {type(error).__name__}: {error}"
        self.mlflow_ready.set()

    def serve(self, listener) -> None:
        import threading

        threading.Thread(target=self.import_mlflow, daemon=True).start()
        listener.settimeout(1.0)
        while True:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                with self.state:
                    idle = self.connected == 0
                    if idle and time.monotonic() - self.idle_since >= self.idle_seconds:
                        return
                continue
            with self.state:
                self.connected += 1
            try:
                connection.sendall(f"ready {os.getpid()}\n".encode())
            except OSError:
                self.disconnected(connection)
                continue
            threading.Thread(target=self.handle, args=(connection,), daemon=True).start()

    def disconnected(self, connection) -> None:
        connection.close()
        with self.state:
            self.connected -= 1
            self.idle_since = time.monotonic()

    def handle(self, connection) -> None:
        import json

        writer = RunWriter(self.clients)
        error: str | None = None
        message: dict[str, Any] = {"op": None}
        try:
            with connection.makefile("r", encoding="utf-8") as lines:
                self.mlflow_ready.wait()
                error = self.import_error
                for line in lines:
                    message = json.loads(line)
                    reply = None
                    if error is None:
                        try:
                            with self.write_lock:
                                reply = writer.apply(message)
                        except Exception as failure:
                            error = f"{type(failure).__name__}: {failure}"
                            log.error("run %s: %s", writer.run_id, error)
                            with self.write_lock:
                                writer.fail()
                    if error is not None and message["op"] in ("open", "close"):
                        reply = f"error {error}"
                    if reply is not None:
                        connection.sendall(f"{' '.join(reply.splitlines())}\n".encode())
                    if message["op"] == "close":
                        break
        except OSError:
            pass  # the stage went away; its own error is the one to report
        finally:
            if error is None and writer.run_id is not None and message["op"] != "close":
                with self.write_lock:
                    writer.fail()  # the stage died before it closed its run
            self.disconnected(connection)


def run_service(socket_path: Path, idle_seconds: float) -> int:
    """Listen at `socket_path` until idle; 0 at once where another service holds the lock."""
    import fcntl
    import signal
    import socket

    # Stopped with SIGTERM (`kill PID`), it still removes its socket on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    lock_file = open(socket_path.with_suffix(".lock"), "a")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0
    socket_path.unlink(missing_ok=True)  # a dead service's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(64)
    log.info("tracking service %d listening at %s", os.getpid(), socket_path)
    try:
        Service(idle_seconds).serve(listener)
    finally:
        socket_path.unlink(missing_ok=True)  # new stages start a new service from here on
        listener.close()
    log.info("tracking service %d idle for %.0f s: exiting", os.getpid(), idle_seconds)
    return 0


def idle_seconds_setting() -> float:
    value = os.environ.get("SAFETYDRIFT_TRACKING_IDLE", str(SERVICE_IDLE_SECONDS))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        raise TrackingError(
            f"SAFETYDRIFT_TRACKING_IDLE must be a number of seconds >= 0, got {value!r}"
        )
    return seconds


if __name__ == "__main__":
    import argparse

    from safetydrift.process import enable_bytecode_cache, exit_now

    parser = argparse.ArgumentParser(description="The tracking service (started by stages).")
    parser.add_argument("--serve", type=Path, required=True, help="the Unix socket to listen at")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    enable_bytecode_cache()
    status = run_service(args.serve, idle_seconds_setting())
    # MLflow's teardown (its SQL engines, its modules) would only delay the exit.
    exit_now(status)
