"""Where cells run: Ray started on this machine (bound to 127.0.0.1) or joined as a cluster, the
GPU share each cell holds, and how many cells run at once.

ray is imported inside the functions that use it, never at the top of a module of this package:
importing it costs seconds, and `start_ray` must set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER before ray
is first imported (ray reads it then), which binds every server Ray starts to 127.0.0.1.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Ray resources are counted in steps of 1e-4: a share is rounded down to one.
SHARE_STEP = 10_000


def visible_gpus(requested: str | None = None) -> list[str]:
    """The GPUs cells may use: `--gpus` (e.g. `0,1`), else CUDA_VISIBLE_DEVICES, else every
    GPU torch sees (none on a machine without CUDA)."""
    listed = requested if requested is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    # Here rather than at the top: torch takes seconds to import, and a grid told its GPUs, or
    # `safetydrift grid --estimate`, needs none of it.
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def ray_share(value: float) -> float:
    """`value` rounded down to Ray's step, ignoring the float error of a product (0.29 × 10⁴ is
    2899.99...)."""
    return math.floor(round(value * SHARE_STEP, 6)) / SHARE_STEP


def gpus_per_cell(
    gpus: float, jobs: int, num_processes: int = 1, requested: float | None = None
) -> float:
    """The GPU share each cell holds: `requested` (`--gpus-per-cell`), else the `gpus` shared
    `jobs` ways, at most one each; `train.num_processes` whole GPUs for a cell trained on
    several. 0 where there is no GPU."""
    if num_processes > 1:
        if requested is not None and requested != num_processes:
            raise ValueError(
                f"--gpus-per-cell is {requested:g} but `train.num_processes` is {num_processes}: "
                f"a cell trained on {num_processes} processes holds {num_processes} whole GPUs"
            )
        if gpus and num_processes > gpus:
            raise ValueError(
                f"`train.num_processes` is {num_processes} but only {gpus:g} GPU(s) are available "
                "to the grid"
            )
        return float(num_processes) if gpus else 0.0
    if requested is not None:
        if requested <= 0 or (requested > 1 and requested != int(requested)):
            raise ValueError(
                f"--gpus-per-cell must be a share of one GPU (0 < share <= 1) or a whole number "
                f"of GPUs, got {requested:g}"
            )
        if not gpus:
            raise ValueError(f"--gpus-per-cell is {requested:g} but the grid has no GPU")
        return ray_share(requested)
    if not gpus:
        return 0.0
    return min(1.0, ray_share(gpus / jobs))


def cells_at_once(gpus: float, share: float, jobs: int) -> int:
    """Cells that run side by side: as many as the GPUs hold at `share` each; `jobs` without
    GPUs."""
    if not share:
        return jobs
    # The share was rounded down, so the quotient is a whole number or just above one.
    return max(1, math.floor(gpus / share + 1e-9))


def start_ray(
    address: str | None, cpus: int | None = None, gpus: float | None = None
) -> dict[str, float]:
    """Start Ray on this machine, or join the cluster at `address`; its CPUs and GPUs.

    On this machine Ray offers `cpus` task slots (one per cell) and `gpus` GPUs (default: those
    CUDA_VISIBLE_DEVICES lists, else all), and every server it starts listens on 127.0.0.1 only.
    """
    if address is None:
        # On Linux Ray binds its servers to every interface for other machines to join; the
        # switch it has for machines that never form a cluster (macOS, Windows) binds them to
        # 127.0.0.1. Read when ray is imported, and by the processes Ray starts.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reports home from a study run
    # The cells' lines as they come, each prefixed with its cell, plainly: Ray would hold back
    # lines that several cells print alike, and colour the prefixes.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    # Only now, after the variables above, and nowhere at a module's top: ray reads them when it
    # is first imported, and a ray imported before would bind Ray to every interface.
    import ray

    if address is None:
        # "local": a Ray of its own, even where `ray start` left one running here.
        ray.init(
            address="local",
            num_cpus=cpus,
            num_gpus=gpus,
            include_dashboard=False,
            log_to_driver=True,
        )
        bound = {node["NodeManagerAddress"] for node in ray.nodes()}
        if bound != {"127.0.0.1"}:
            ray.shutdown()
            raise RuntimeError(
                f"Ray started on {', '.join(sorted(bound))}, not 127.0.0.1 alone: ray was "
                "imported before the grid could bind it to this machine"
            )
    else:
        try:
            ray.init(address=address, log_to_driver=True)
        except ConnectionError as error:
            raise ValueError(f"--address {address}: no Ray cluster answers ({error})") from None
    resources = ray.cluster_resources()
    return {"CPU": resources.get("CPU", 0.0), "GPU": resources.get("GPU", 0.0)}


def stop_ray() -> None:
    """Stop the Ray that `start_ray` started or joined (a cluster's nodes go on)."""
    import ray

    ray.shutdown()


def check_cluster(workspace: Path, mlflow_uri: str) -> int:
    """Nodes of the Ray cluster; cells on other nodes need a DVC remote, and on other machines
    an MLflow server, that every node reaches."""
    import ray

    nodes = [node for node in ray.nodes() if node["Alive"]]
    remote = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "default"],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=False,
    )
    if len(nodes) > 1 and (remote.returncode != 0 or not remote.stdout.strip()):
        raise ValueError(
            f"the Ray cluster has {len(nodes)} nodes but {workspace} has no default DVC remote: "
            "cells on other nodes exchange their inputs and results through one "
            "(`dvc remote add -d NAME URL`, reachable from every node)"
        )
    machines = {node["NodeManagerAddress"] for node in nodes}
    uri = mlflow_uri
    if len(machines) > 1 and (uri.startswith(("sqlite:", "file:")) or "://" not in uri):
        raise ValueError(
            f"the Ray cluster spans {len(machines)} machines but MLFLOW_TRACKING_URI is the local "
            f"store {uri}: set it to an MLflow server every machine reaches"
        )
    return len(nodes)


@dataclass
class Placement:
    """How the cells share the machines: each holds `share` of a GPU, `parallel` at a time, on
    the `nodes` of a Ray cluster (0: one at a time here, without Ray)."""

    share: float
    parallel: int
    nodes: int


def place_cells(
    address: str | None,
    gpus: str | None,
    jobs: int,
    num_processes: int,
    requested_share: float | None,
    n_jobs: int,
) -> Placement:
    """Start Ray where cells will run side by side (see `gpus_per_cell`, `cells_at_once`)."""
    if address is not None:
        if gpus is not None:
            raise ValueError("--gpus picks GPUs of this machine; on a cluster (--address) Ray does")
        resources = start_ray(address)
        share = gpus_per_cell(resources["GPU"], jobs, num_processes, requested_share)
        slots = cells_at_once(resources["GPU"], share, int(resources["CPU"]))
        return Placement(share, min(slots, n_jobs), nodes=1)
    if gpus is not None:
        # Ray gives out the GPUs CUDA_VISIBLE_DEVICES lists, by their ids.
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    gpu_count = len(visible_gpus(gpus))
    share = gpus_per_cell(gpu_count, jobs, num_processes, requested_share)
    parallel = min(cells_at_once(gpu_count, share, jobs), n_jobs)
    if parallel == 1:
        return Placement(share, 1, nodes=0)
    start_ray(None, cpus=parallel, gpus=gpu_count)
    return Placement(share, parallel, nodes=1)
