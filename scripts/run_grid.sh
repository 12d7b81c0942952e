#!/usr/bin/env bash
# Run the study in params.yaml on this machine, timed (a thin wrapper over `safetydrift grid`):
#
#   scripts/run_grid.sh                     # the base model, every cell, the report
#   scripts/run_grid.sh --jobs 4            # four cells side by side (one GPU has room)
#   scripts/run_grid.sh lora-5e-05-42 ...   # only these cells (and the base model and report)
#
# Every cell is `dvc repro eval_refusal@CELL eval_chrf@CELL` (DVC trains the cell first), so a
# run cut short keeps every finished cell and running the script again resumes where it stopped.
# Timings: reports/timings/JOB.json (+ .log), end to end in reports/grid-timings.json.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m safetydrift.cli grid "$@"
