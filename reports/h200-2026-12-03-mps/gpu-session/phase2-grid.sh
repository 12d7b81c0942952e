#!/bin/bash
# phase2-grid.sh (the first machine's phase2): once the judge is here and phase1 done: the judge's
# preparation, the base model's judging alone, then the whole standin grid timed end to end; its
# results set aside; then one cell's judging and generation stages again, each alone. The first
# machine's phase1.sh also set `train.keep_checkpoints: final` in params.yaml before preparing.
exec > /tmp/logs/phase2.log 2>&1; set -x
source /tmp/bin/env.sh
stamp() { echo "$(date +%s) $*" >> /tmp/logs/stamps; }
stamp phase2-start
mv /tmp/p/models/*.gguf /root/.cache/standin-models/ 2>/dev/null
until grep -q -E "phase1-done|pip-failed" /tmp/logs/stamps; do sleep 2; done
cd /tmp/ws
stamp prepare-judges-start
$SD repro --timings /tmp/out/alone/prepare_judge_models.json -- prepare_judge_models > /tmp/logs/prepare-judges.log 2>&1; stamp prepare-judges-done rc=$?
# Failed (rc 255): judge_harm_base reads evals/refusal/base.jsonl, which eval_refusal_base writes.
$SD repro --timings /tmp/out/alone/judge_harm_base.json -- --single-item judge_harm_base > /tmp/logs/alone-judge_harm_base.log 2>&1; stamp judge_harm_base-done rc=$?
git add -A; git -c user.email=gpu@x -c user.name=gpu commit -qm "base generated and judged" -q || true
$SD grid --estimate --jobs 8 > /tmp/logs/estimate.log 2>&1; cat /tmp/logs/estimate.log
stamp grid-start
/usr/bin/time -v $SD grid --jobs 8 --summary reports/grid-summary.json > /tmp/logs/grid.log 2>&1; rc=$?; stamp grid-done rc=$rc
cp -r reports/timings /tmp/logs/grid-timings 2>/dev/null; cp reports/grid-summary.json /tmp/out/ 2>/dev/null
bash /tmp/bin/collect.sh /tmp/collected > /tmp/logs/collect1.log 2>&1
stamp collected
for S in judge_harm@lora-5e-05-42 judge_evaluation@controls-lora-5e-05-42 generate_refusal@lora-5e-05-42 generate_evaluation@controls-lora-5e-05-42; do
  stamp $S-start
  $SD repro --timings /tmp/out/alone/$S.json -- --force --single-item $S > /tmp/logs/alone-$S.log 2>&1; stamp $S-done rc=$?
done
stamp phase2-done
