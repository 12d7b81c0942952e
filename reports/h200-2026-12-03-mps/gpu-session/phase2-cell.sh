#!/bin/bash
# phase2.sh: once the judge is here and phase1 done: the judge's preparation, then one cell
# (lora-5e-05-42: the most answers to judge) from training to chrF, one stage at a time, each
# alone on the GPU; then the decoder's cache budget on the judge. Run with setsid.
exec > /tmp/logs/phase2.log 2>&1; set -x
source /tmp/bin/env.sh
stamp() { echo "$(date +%s) $*" >> /tmp/logs/stamps; }
stamp phase2-start
mv /tmp/p/models/*.gguf /root/.cache/standin-models/ 2>/dev/null
until grep -q -E "phase1-done|pip-failed" /tmp/logs/stamps; do sleep 2; done
cd /tmp/ws
stamp prepare-judges-start
$SD repro --timings /tmp/out/alone/prepare_judge_models.json -- prepare_judge_models > /tmp/logs/prepare-judges.log 2>&1; stamp prepare-judges-done rc=$?
C=lora-5e-05-42
stamp cell-start
$SD repro --timings /tmp/out/alone/cell-$C.json -- judge_harm@$C judge_evaluation@controls-$C eval_chrf@$C > /tmp/logs/cell.log 2>&1; stamp cell-done rc=$?
bash /tmp/bin/collect.sh /tmp/collected > /tmp/logs/collect1.log 2>&1; stamp collected
stamp judge-memory-start
python benchmarks/bench_generation.py --model models/judges/qwen-1.5b --engines static,static-unbounded --batch-size 256 \
  --prompt-tokens 300-1000 --limit 1536 --max-new-tokens 384 --out /tmp/out/judge-memory.json > /tmp/logs/judge-memory.log 2>&1; stamp judge-memory-done rc=$?
stamp phase2-done
