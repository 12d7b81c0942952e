"""A job of the grid: one `safetydrift repro` of some targets, run as a subprocess whose output
goes line by line to the job's log (`reports/timings/JOB.log`) and to the terminal, each line
prefixed with the job's name; its stage timings go to `JOB.json`. A failed attempt's files are
kept beside the next attempt's.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass
class Job:
    """One `safetydrift repro` of the grid: a cell's two evaluations (DVC trains it first)."""

    name: str
    targets: list[str]
    returncode: int | None = None
    timings: Path | None = None
    attempts: int = 0
    # Where Ray ran it: the machine and the GPUs the cell saw (CUDA_VISIBLE_DEVICES).
    node: str | None = None
    gpus: str | None = None


class Output:
    """Lines from several jobs at once, each prefixed with its job's name."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def line(self, job: str, text: str) -> None:
        self._stream.write(f"[{job}] {text.rstrip()}\n")
        self._stream.flush()


def stream_lines(
    command: Sequence[str], cwd: Path, env: dict[str, str], line: Callable[[str], None]
) -> int:
    """Run `command`, passing each line of its output to `line`; its exit status."""
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        for text in process.stdout:
            line(text)
    return process.returncode


def repro_command(
    timings: Path, dvc_args: Sequence[str], write_lock_once: bool = False
) -> list[str]:
    """`safetydrift repro DVC_ARGS`, which also writes every stage's wall time to `timings`."""
    once = ["--write-lock-once"] if write_lock_once else []
    return [sys.executable, "-m", "safetydrift.cli", "repro", "--timings", str(timings), *once,
            "--", *dvc_args]  # fmt: skip


def run_job(
    job: Job,
    workspace: Path,
    timings_dir: Path,
    env: dict[str, str],
    out: Output,
    write_lock_once: bool = False,
) -> None:
    """Run `job` in `workspace`: its timings to TIMINGS_DIR/JOB.json, its output to JOB.log and
    to `out`."""
    job.timings = timings_dir / f"{job.name}.json"
    with (timings_dir / f"{job.name}.log").open("w", encoding="utf-8") as log:

        def line(text: str) -> None:
            log.write(text)
            out.line(job.name, text)

        command = repro_command(job.timings, job.targets, write_lock_once)
        job.returncode = stream_lines(command, workspace, env, line)


def repro_here(
    name: str,
    targets: Sequence[str],
    workspace: Path,
    timings_dir: Path,
    env: dict[str, str],
    out: Output,
    write_lock_once: bool = False,
) -> Job:
    """A job NAME of `targets` (the prepare stages, a restore, the report), run in `workspace`."""
    job = Job(name, list(targets))
    run_job(job, workspace, timings_dir, env, out, write_lock_once)
    return job


def ran_out_of_gpu_memory(job: Job) -> bool:
    """Whether a failed job's log shows a CUDA out-of-memory error (worth one more try, later)."""
    log = job.timings.with_suffix(".log") if job.timings else None
    if log is None or not log.exists():
        return False
    text = log.read_text(encoding="utf-8", errors="replace")
    return "CUDA out of memory" in text or "OutOfMemoryError" in text


def keep_attempt(job: Job, attempt: int) -> None:
    """Keep a failed attempt's timings and log as JOB.attemptN.*: the next attempt writes JOB.*."""
    assert job.timings is not None
    for suffix in (".json", ".log"):
        path = job.timings.with_suffix(suffix)
        if path.exists():
            path.replace(path.with_name(f"{job.name}.attempt{attempt}{suffix}"))
