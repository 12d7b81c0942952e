"""DVC stage `train@METHOD-LR`: fine-tune one grid cell; checkpoints into models/METHOD-LR/."""

import argparse

from safetydrift.cli import run_stage
from safetydrift.params import load_params
from safetydrift.pipeline import train

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", required=True, help="full, lora, qlora or dpo")
    parser.add_argument("--lr", required=True, type=float, help="peak learning rate")
    args = parser.parse_args()
    run_stage(lambda: train(load_params(), args.method, args.lr))
