"""At most `runtime.judges_per_gpu` model judges at a time on one GPU, across processes.

Cells side by side on one GPU (`safetydrift grid --gpus-per-cell`) share its memory, which Ray's
GPU shares place but do not limit. A model judge batch is the largest user: on an H200 a 1.5B
judge at batch 256 held 29-37 GB, and four at once beside six training cells ran the GPU out of
memory (reports/standin-authors/). So a process takes one of the GPU's slots, a file lock, before
it loads a judge onto that GPU, and keeps it until it exits (the operating system releases the
lock, a crash too). Other processes wait for a free slot. Only when judges run changes, not what
they compute: the setting is a run-time one, and no stage declares it.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from pathlib import Path

from filelock import FileLock, Timeout

from safetydrift.params import ParamError

log = logging.getLogger(__name__)

PARAMS_KEY = "runtime.judges_per_gpu"
DEFAULT_JUDGES_PER_GPU = 2
LOCK_DIR = Path(tempfile.gettempdir()) / "safetydrift-gpu-slots"
POLL_SECONDS = 1.0

_judges_per_gpu: int | None = DEFAULT_JUDGES_PER_GPU
# The slot (its number and lock) this process holds on each GPU, kept until it exits.
_held: dict[str, tuple[int, FileLock]] = {}


def set_judges_per_gpu(value: object) -> None:
    """`runtime.judges_per_gpu`: a positive whole number, or null for no limit."""
    global _judges_per_gpu
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ParamError(
            f"params.yaml: `{PARAMS_KEY}` must be a whole number of at least 1, or null for no "
            f"limit, got {value!r}"
        )
    _judges_per_gpu = value


def gpu_identity(device: str) -> str | None:
    """The physical GPU behind a torch device name (its UUID, the same whatever
    CUDA_VISIBLE_DEVICES numbers it), or None for a device that is not a CUDA GPU."""
    if not device.startswith("cuda"):
        return None
    import torch  # only for a CUDA device: a judge there has imported it already

    properties = torch.cuda.get_device_properties(torch.device(device))
    # Without a UUID (an older driver), the name and bus id: as seen here, not across processes
    # that number the GPUs differently.
    uuid = getattr(properties, "uuid", None)
    name = str(uuid) if uuid else f"{properties.name}-{getattr(properties, 'pci_bus_id', device)}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def hold_slot(gpu: str, slots: int | None = None, lock_dir: Path = LOCK_DIR) -> int | None:
    """Take one of `slots` slots of `gpu` (default `runtime.judges_per_gpu`) for the rest of this
    process, waiting while all are taken; the slot's number, or None without a limit."""
    slots = _judges_per_gpu if slots is None else slots
    if slots is None:
        return None
    if gpu in _held:
        return _held[gpu][0]
    lock_dir.mkdir(parents=True, exist_ok=True)
    locks = [FileLock(str(lock_dir / f"{gpu}-{k}.lock")) for k in range(slots)]
    waited_since = None
    while True:
        for number, lock in enumerate(locks):
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            _held[gpu] = (number, lock)
            if waited_since is not None:
                log.info("judge slot %d of GPU %s after %.1f s", number, gpu,
                         time.monotonic() - waited_since)  # fmt: skip
            return number
        if waited_since is None:
            waited_since = time.monotonic()
            log.info(
                "all %d judge slot(s) of GPU %s are taken (`%s`): waiting", slots, gpu, PARAMS_KEY
            )
        time.sleep(POLL_SECONDS)


def hold_judge_slot(device: str) -> int | None:
    """`hold_slot` for the GPU of `device`; nothing to hold on a CPU."""
    gpu = gpu_identity(device)
    return None if gpu is None else hold_slot(gpu)
