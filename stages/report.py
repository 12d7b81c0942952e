"""DVC stage `report`: figures, tables and provenance of the whole grid under reports/."""

from safetydrift.cli import run_stage
from safetydrift.params import load_params
from safetydrift.pipeline import report

if __name__ == "__main__":
    run_stage(lambda: report(load_params()))
