"""DVC stage `eval_chrf@CELL`: corpus chrF of the saved translations, with a bootstrap interval."""

import argparse

from safetydrift.cli import run_stage
from safetydrift.params import load_params
from safetydrift.pipeline import eval_chrf

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cell", required=True, help="`base` or METHOD-LR, e.g. lora-5e-05")
    args = parser.parse_args()
    run_stage(lambda: eval_chrf(load_params(), args.cell))
