"""Several processes for one cell (`train.num_processes` > 1): the `accelerate launch` command
that reruns the train stage once a GPU (DDP, or FSDP with `train.distributed: fsdp`), and the
size of the group a process trained in.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from safetydrift.params import ParamError
from safetydrift.training.settings import TrainSettings

# accelerate and torch are imported where they are used: one process, the usual case, needs
# neither to be launched (import cost: safetydrift/training/__init__.py).


def distributed_launch(settings: TrainSettings, script_and_args: Sequence[str]) -> list[str] | None:
    """The `accelerate launch` command that reruns the train stage on several processes.

    One process a GPU; with accelerate's own switch for the CPU (`ACCELERATE_USE_CPU=true`, what
    `accelerate launch --cpu` sets) the processes train on the CPU and meet over gloo, which is
    how the launch is tested without GPUs. None when one process trains, or when this process
    already is one of the launched ranks.
    """
    if settings.num_processes == 1 or "LOCAL_RANK" in os.environ:
        return None
    from accelerate.utils import parse_flag_from_env  # import cost: training/__init__.py

    on_cpu = parse_flag_from_env("ACCELERATE_USE_CPU")
    if on_cpu and settings.distributed == "fsdp":
        raise ParamError(
            "params.yaml: `train.distributed` is fsdp, which shards the model across GPUs, but "
            "ACCELERATE_USE_CPU is set: FSDP needs GPUs (ddp runs on the CPU)"
        )
    if not on_cpu:
        import torch  # import cost: training/__init__.py

        gpus = torch.cuda.device_count()
        if gpus < settings.num_processes:
            raise ParamError(
                f"params.yaml: `train.num_processes` is {settings.num_processes}, but this machine "
                f"has {gpus} CUDA GPU(s); one process trains on each GPU "
                "(ACCELERATE_USE_CPU=true trains the processes on the CPU instead)"
            )
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    command += ["--num_processes", str(settings.num_processes), "--num_machines", "1"]
    if settings.distributed == "fsdp":
        command += [
            "--use_fsdp",
            "--fsdp_sharding_strategy",
            "FULL_SHARD",
            "--fsdp_auto_wrap_policy",
            "TRANSFORMER_BASED_WRAP",
            "--fsdp_state_dict_type",
            "FULL_STATE_DICT",
            "--fsdp_use_orig_params",
            "true",
        ]
    else:
        # torchrun's launcher, whatever the device: accelerate's `--cpu` alone would start one
        # process. The ranks read ACCELERATE_USE_CPU from the environment they inherit.
        command += ["--multi_gpu"]
    return [*command, *script_and_args]


def world_size() -> int:
    """Processes in the group this one trained in: 1 unless `accelerate launch` started it."""
    import torch.distributed  # import cost: training/__init__.py

    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
