#!/bin/bash
# phase2.sh REPO: once the judge is here: the whole standin grid (16 cells, the base model, every
# evaluation set, both model judges, the report), timed end to end; then the judge alone on one
# cell, the check of one checkpoint, and the determinism runs judged for harm. Run with setsid.
REPO=$1
exec > /tmp/logs/phase2.log 2>&1; set -x
source /tmp/bin/env.sh
stamp() { echo "$(date +%s) $*" >> /tmp/logs/stamps; }
stamp phase2-start
mv /tmp/p/models/*.gguf /root/.cache/standin-models/ 2>/dev/null
until grep -q -E "prepare-done|pip-failed" /tmp/logs/stamps; do sleep 2; done
# The determinism pairs first (they would slow the grid), for at most 200 s more.
for i in $(seq 100); do grep -q phase1-done /tmp/logs/stamps && break; sleep 2; done
stamp grid-wait-over
cd /tmp/ws
$SD grid --estimate --jobs 8 > /tmp/logs/estimate.log 2>&1; cat /tmp/logs/estimate.log
stamp grid-start
/usr/bin/time -v $SD grid --jobs 8 > /tmp/logs/grid.log 2>&1; rc=$?; stamp grid-done rc=$rc
if [ $rc -ne 0 ] && grep -q "will not fit" /tmp/logs/grid.log; then
  python - <<'PY'
import pathlib, yaml
p = pathlib.Path("params.yaml"); params = yaml.safe_load(p.read_text())
params["train"]["keep_checkpoints"] = "final"
p.write_text(yaml.safe_dump(params, sort_keys=False))
PY
  git add -A; git -c user.email=gpu@x -c user.name=gpu commit -qm "keep final checkpoints" || true
  $SD grid --estimate --jobs 8 > /tmp/logs/estimate-final.log 2>&1
  stamp grid2-start
  /usr/bin/time -v $SD grid --jobs 8 > /tmp/logs/grid2.log 2>&1; stamp grid2-done rc=$?
fi
cp -r reports/timings /tmp/logs/grid-timings 2>/dev/null; cp reports/grid-timings.json /tmp/logs/ 2>/dev/null
# The judge stage alone, on one cell (issue: at most 30 s per cell of four checkpoints).
stamp judge-alone-start
/usr/bin/time -v python -m dvc repro --force --single-item judge_harm@lora-5e-05-42 > /tmp/logs/judge-alone.log 2>&1; stamp judge-alone-done rc=$?
# The check of one stand-in checkpoint against the base model, and the determinism runs judged.
( /usr/bin/time -v $SD check --params presets/standin.yaml --base models/base --tuned models/full-5e-05-42/ckpt-100 \
    --evaluations advbench,benign-edgy --judge-model models/judges/qwen-1.5b --out /tmp/check > /tmp/logs/check.log 2>&1
  stamp check-done rc=$? ) &
for M in qlora dpo; do
  [ -e /tmp/det-$M/determinism-$M.json ] && ( python benchmarks/bench_determinism.py --judge-runs --out /tmp/det-$M/determinism-$M.json \
      > /tmp/logs/det-$M-judge.log 2>&1; stamp det-$M-judged rc=$? ) &
done
wait
stamp phase2-done
