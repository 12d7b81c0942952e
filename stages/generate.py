"""DVC stages `generate_refusal@CELL` and `generate_chrf@CELL`: every checkpoint's responses."""

import argparse

from safetydrift.cli import run_stage
from safetydrift.params import load_params
from safetydrift.pipeline import generate

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("measurement", choices=["refusal", "chrf"])
    parser.add_argument("--cell", required=True, help="`base` or METHOD-LR, e.g. lora-5e-05")
    args = parser.parse_args()
    run_stage(lambda: generate(load_params(), args.measurement, args.cell))
