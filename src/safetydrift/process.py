"""A stage process's start and end: its bytecode cache, its age, and a prompt exit.

Every DVC stage is a fresh Python process that imports torch, transformers and PEFT before any
work, and the study runs ~70 of them. Two things there cost more than they should:

- An environment that sets `PYTHONDONTWRITEBYTECODE` and ships no `.pyc` files (the workplace's
  GPU image does both) makes every process compile those libraries' source again: on the H100's
  host, 15-17 s of imports where 7 s do with the bytecode cached. `enable_bytecode_cache` keeps
  the compiled bytecode in a cache folder of ours instead (Python's `sys.pycache_prefix`), never
  beside the installed sources.
- The interpreter's teardown after a finished stage (collecting the model's tensors and modules,
  closing CUDA) takes ~1.5 s, for nothing: `exit_now` ends the process once its outputs are
  written and closed.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

# A folder for the bytecode cache, or `off` to leave Python's setting alone.
PYCACHE_ENV = "SAFETYDRIFT_PYCACHE"


def default_pycache_dir() -> Path:
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "safetydrift" / "pycache"


def enable_bytecode_cache() -> Path | None:
    """Cache compiled bytecode for this process and its children where the environment forbids
    writing it; return the cache folder, or None where nothing was changed.

    Nothing changes where Python already writes bytecode, or with `SAFETYDRIFT_PYCACHE=off`. The
    folder is `SAFETYDRIFT_PYCACHE`, else `PYTHONPYCACHEPREFIX`, else
    `~/.cache/safetydrift/pycache`. Children (`accelerate launch`, DVC's stages under
    `safetydrift grid`) inherit it through the environment. Python writes each
    `.pyc` atomically, so stages running side by side can share the folder.
    """
    setting = os.environ.get(PYCACHE_ENV, "")
    if not sys.dont_write_bytecode or setting.lower() == "off":
        return None
    folder = Path(setting or sys.pycache_prefix or default_pycache_dir()).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.warning("no bytecode cache (%s): every import compiles its source again", error)
        return None
    sys.pycache_prefix = str(folder)
    sys.dont_write_bytecode = False
    os.environ["PYTHONPYCACHEPREFIX"] = str(folder)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    return folder


def process_age_seconds() -> float | None:
    """Seconds since this process started (Linux), so that a stage can report its import time.

    Both ends are on the boot-time clock: the process's start in clock ticks since boot
    (/proc/self/stat), against `CLOCK_BOOTTIME` now. (Wall-clock time against /proc/stat's
    boot time, in whole seconds, would be up to a second off.)
    """
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
        now = time.clock_gettime(time.CLOCK_BOOTTIME)
    except (OSError, IndexError, ValueError, AttributeError):
        return None
    return round(now - started, 2)


def exit_now(code: int = 0) -> None:
    """End a finished stage's process at once: its exit handlers run, the teardown does not.

    Only for a process whose work is done: every output written and closed, every child waited
    for, its MLflow run ended (`tracking.stage_run` writes synchronously). Exit handlers (MLflow
    registers its own, e.g. to drain asynchronous logging), log handlers and the standard
    streams run or are flushed first.
    """
    atexit._run_exitfuncs()  # what registered for the exit (e.g. torch's compile workers)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stream
            stream.flush()
    os._exit(code)
