"""DVC stage `prepare_mtpref`: MT-Pref into data/mtpref/{train,test}.jsonl and stats.json."""

from safetydrift.cli import run_stage
from safetydrift.params import load_params
from safetydrift.pipeline import prepare_mtpref

if __name__ == "__main__":
    run_stage(lambda: prepare_mtpref(load_params()))
