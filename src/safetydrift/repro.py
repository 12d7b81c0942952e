"""`safetydrift repro`: `dvc repro` with the wall time of every stage it ran, for study reports.

DVC prints `Running stage 'NAME':` when a stage starts, and `Stage 'NAME' didn't change,
skipping` or `Stage 'NAME' is cached - skipping run` for one it skips or restores from its
run-cache. The time from a stage's line to the next such line (or to DVC's exit) is that stage's
wall time, DVC's own hashing and caching of its outputs included. Everything DVC prints is
passed through unchanged.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safetydrift.files import write_json
from safetydrift.restore import report_restored, restore_uncached_outputs

RUNNING = re.compile(r"Running stage '([^']+)'")
SKIPPED = re.compile(r"Stage '([^']+)' didn't change, skipping")
# A stage found in DVC's run-cache is checked out, not run: it ends the previous stage's time.
RESTORED = re.compile(r"Stage '([^']+)' is cached - skipping run")


def stage_durations(timed_lines: Iterable[tuple[float, str]], end: float) -> list[dict[str, Any]]:
    """[{stage, seconds}] of the stages that ran, from (timestamp, line) pairs of DVC's output."""
    durations: list[dict[str, Any]] = []
    current: tuple[str, float] | None = None
    for timestamp, line in timed_lines:
        running = RUNNING.search(line)
        if not (running or SKIPPED.search(line) or RESTORED.search(line)):
            continue
        if current is not None:
            durations.append({"stage": current[0], "seconds": round(timestamp - current[1], 2)})
            current = None
        if running:
            current = (running.group(1), timestamp)
    if current is not None:
        durations.append({"stage": current[0], "seconds": round(end - current[1], 2)})
    return durations


def stage_kind(stage: str) -> str:
    """`train@lora-5e-05` -> `train`; `eval_refusal_base` -> `eval_refusal`."""
    name = stage.split("@", 1)[0]
    return name.removesuffix("_base")


def summarize(durations: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stages of each kind: how many ran, their total and their longest wall time."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    for record in durations:
        by_kind[stage_kind(record["stage"])].append(record["seconds"])
    return [
        {"kind": kind, "stages": len(times), "seconds": round(sum(times), 1), "max": max(times)}
        for kind, times in by_kind.items()
    ]


def markdown_table(timings: dict[str, Any]) -> str:
    lines = [
        "| stage kind | stages run | wall time (s) | longest (s) |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| `{row['kind']}` | {row['stages']} | {row['seconds']} | {row['max']} |"
        for row in timings["by_kind"]
    ]
    lines.append(f"| **all** | {len(timings['stages'])} | {timings['wall_seconds']} | |")
    return "\n".join(lines)


def combine(paths: Sequence[Path]) -> dict[str, Any]:
    """One record of several `safetydrift repro` runs (the slices of a grid run)."""
    runs = [json.loads(Path(path).read_text(encoding="utf-8")) for path in paths]
    stages = [stage for run in runs for stage in run["stages"]]
    return {
        "runs": len(runs),
        "failed_runs": sum(run["returncode"] != 0 for run in runs),
        "wall_seconds": round(sum(run["wall_seconds"] for run in runs), 1),
        "stages": stages,
        "by_kind": summarize(stages),
    }


def timed_repro(dvc_args: Sequence[str], timings_path: Path, write_lock_once: bool = False) -> int:
    """Run `dvc repro DVC_ARGS`, echo its output, and write every stage's wall time as JSON.

    The file is written even when DVC fails, with its exit status, so that a partial run still
    shows where its time went. `write_lock_once`: dvc.lock is written when DVC ends rather than
    after every stage (safetydrift.grid.lock_once), for restoring many stages from the run-cache.
    """
    dvc = "safetydrift.grid.lock_once" if write_lock_once else "dvc"
    command = [sys.executable, "-m", dvc, "repro", *dvc_args]
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    started = time.perf_counter()
    timed_lines: list[tuple[float, str]] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            timed_lines.append((time.perf_counter(), line))
    end = time.perf_counter()
    durations = stage_durations(timed_lines, end)
    timings = {
        "command": ["dvc", "repro", *dvc_args],
        "started": started_at,
        "returncode": process.returncode,
        "wall_seconds": round(end - started, 1),
        "stages": durations,
        "by_kind": summarize(durations),
    }
    write_json(timings_path, timings)
    print(markdown_table(timings))
    print(f"timings written to {timings_path}")
    if process.returncode != 0:
        # DVC deleted the failed stages' outputs before running them; the uncached ones
        # (metrics) would stay lost until a rerun succeeds.
        restored, unrestorable = restore_uncached_outputs(Path.cwd())
        if restored or unrestorable:
            print(report_restored(restored, unrestorable))
    return process.returncode
