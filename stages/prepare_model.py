"""DVC stage `prepare_model`: the base chat model into models/base/ as safetensors."""

from safetydrift.cli import run_stage
from safetydrift.params import load_params
from safetydrift.pipeline import prepare_model

if __name__ == "__main__":
    run_stage(lambda: prepare_model(load_params()))
