"""DVC stage `prepare_advbench`: AdvBench's harmful requests into data/advbench.jsonl."""

from safetydrift.cli import run_stage
from safetydrift.params import load_params
from safetydrift.pipeline import prepare_advbench

if __name__ == "__main__":
    run_stage(lambda: prepare_advbench(load_params()))
