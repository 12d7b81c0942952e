#!/usr/bin/env bash
# Run the study in params.yaml one grid cell at a time, recording every stage's wall time:
#
#   scripts/run_grid.sh                 # the base model, every cell of the grid, the report
#   scripts/run_grid.sh lora-5e-05 ...  # only these cells (and the base model and the report)
#
# Each cell is one `safetydrift repro` of its two evaluations, which DVC precedes by the cell's
# training, so a run cut short keeps every finished cell, and running the script again resumes
# where it stopped: DVC skips whatever dvc.lock already records. Cells at `report.fixed_lr`
# (Figure 1) come first, then the other learning rates, largest first. A cell that fails is
# reported at the end and does not stop the others. Timings: reports/timings/CELL.json, summed
# by `safetydrift timings reports/timings/*.json`.
set -uo pipefail
cd "$(dirname "$0")/.."
timings=${TIMINGS_DIR:-reports/timings}
mkdir -p "$timings"
if [ $# -gt 0 ]; then
  cells=("$@")
else
  mapfile -t cells < <(python -c '
from safetydrift.cells import Cell
from safetydrift.params import get, load_params
params = load_params()
fixed = float(get(params, "report.fixed_lr"))
rates = sorted({float(r) for r in get(params, "grid.learning_rates")}, key=lambda r: (r != fixed, -r))
for rate in rates:
    for method in get(params, "grid.methods"):
        print(Cell(method, rate).name)
')
fi
repro() { python -m safetydrift.cli repro --timings "$timings/$1.json" -- "${@:2}"; }
failed=()
repro base eval_refusal_base eval_chrf_base || failed+=(base)
for cell in "${cells[@]}"; do
  repro "$cell" "eval_refusal@$cell" "eval_chrf@$cell" || failed+=("$cell")
done
repro report report || failed+=(report)
python -m safetydrift.cli timings "$timings"/*.json
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
