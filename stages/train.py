"""DVC stage `train@METHOD-LR`: fine-tune one grid cell; checkpoints into models/METHOD-LR/.

With `train.num_processes` > 1 the stage reruns itself under `accelerate launch` (DDP, or FSDP
with `train.distributed: fsdp`); DVC sees the launcher's exit status.
"""

import argparse
import os
import sys

from safetydrift.cli import run_stage
from safetydrift.methods import distributed_launch, train_settings
from safetydrift.params import load_params
from safetydrift.pipeline import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", required=True, help="full, lora, qlora or dpo")
    parser.add_argument("--lr", required=True, type=float, help="peak learning rate")
    args = parser.parse_args()
    run_stage(lambda: launch_or_train(args.method, args.lr))


def launch_or_train(method: str, learning_rate: float) -> None:
    params = load_params()
    launch = distributed_launch(train_settings(params, method, learning_rate), sys.argv)
    if launch is not None:
        os.execv(launch[0], launch)
    train(params, method, learning_rate)


if __name__ == "__main__":
    main()
