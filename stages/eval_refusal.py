"""DVC stage `eval_refusal@CELL`: judge the saved AdvBench responses; refusal rates + intervals."""

import argparse

from safetydrift.cli import run_stage
from safetydrift.params import load_params
from safetydrift.pipeline import eval_refusal

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cell", required=True, help="`base` or METHOD-LR, e.g. lora-5e-05")
    args = parser.parse_args()
    run_stage(lambda: eval_refusal(load_params(), args.cell))
