"""Deterministic mode: the same inputs on the same GPU give the same bits, run after run.

The study's fast path (compiled blocks, CUDA graphs, cuDNN autotuning, cuBLAS's default
workspaces, atomics in some backward kernels) is not bit-stable: two runs of one cell with the
same seed have moved far (issue 20: DPO 1e-5 refusal 0.215 then 0.021). `train.deterministic`
and `generation.deterministic` trade speed for repeatability. Under them:

- `torch.use_deterministic_algorithms(True)`: an op without a deterministic implementation
  raises instead of silently varying;
- `CUBLAS_WORKSPACE_CONFIG=:4096:8`, which cuBLAS needs for repeatable reductions; it must be
  set before cuBLAS starts, so a process that already used CUDA without it is refused;
- cuDNN deterministic, without benchmark autotuning;
- the seeds of `random`, NumPy and torch (CPU and every GPU): `transformers.set_seed(seed,
  deterministic=True)`.

What else each stage turns off (compilation, CUDA graphs, flash attention) is in its own code:
`safetydrift.training` and `safetydrift.generation`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

CUBLAS_WORKSPACE_CONFIG = ":4096:8"
# The two settings cuBLAS documents as making its results reproducible.
DETERMINISTIC_CUBLAS_CONFIGS = (":4096:8", ":16:8")


def check_cublas_workspace() -> None:
    """Set cuBLAS's deterministic workspace, or refuse where it is too late to take effect."""
    import torch

    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") in DETERMINISTIC_CUBLAS_CONFIGS:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        raise RuntimeError(
            "deterministic mode: CUDA was already in use in this process without "
            f"CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE_CONFIG}, so cuBLAS may not be "
            "reproducible; set it in the environment before the process starts"
        )
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG


def determinism_record() -> dict[str, Any]:
    """What this process runs under, for an output's metadata."""
    import torch

    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }


@contextlib.contextmanager
def deterministic_mode(seed: int, enabled: bool = True) -> Iterator[dict[str, Any]]:
    """Run the block deterministically (when `enabled`) and yield what it ran under.

    torch's switches are process-wide, so they are put back afterwards: a later fast-path run in
    the same process (a benchmark, the tests) is not slowed or made to raise by them.
    """
    import torch

    if not enabled:
        yield {"deterministic": False, **determinism_record()}
        return
    from transformers import set_seed

    check_cublas_workspace()
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        set_seed(seed, deterministic=True)
        yield {"deterministic": True, **determinism_record()}
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic = previous[2]
        torch.backends.cudnn.benchmark = previous[3]
