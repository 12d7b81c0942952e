#!/bin/bash
# phase2.sh: once the judge is here and phase1 done: the whole standin grid in /tmp/ws (the
# judge's preparation, the base model, 16 cells, the report), timed end to end, eight cells at
# once under MPS, in the order whose schedule of the last lease's job times is shortest
# (--durations); collected; then judge_harm of one cell again alone on the grid's generations.
exec > /tmp/logs/phase2.log 2>&1; set -x
source /tmp/bin/env.sh
stamp() { echo "$(date +%s) $*" >> /tmp/logs/stamps; }
stamp phase2-start
mkdir -p /root/.cache/standin-models && mv /tmp/p/models/*.gguf /root/.cache/standin-models/ 2>/dev/null
until grep -q -E "phase1-done|pip-failed" /tmp/logs/stamps; do sleep 2; done
cd /tmp/ws
stamp grid-start
# A collection every 150 s from the grid's tenth minute, so that a lease that ends mid-grid still
# leaves what the grid had finished with the next poll.
( sleep 600; while true; do bash /tmp/bin/collect.sh /tmp/collected > /tmp/logs/collect-during.log 2>&1; sleep 150; done ) &
DURING=$!
/usr/bin/time -v $SD grid --jobs 8 --durations reports/h200-2026-12-03-grid3/timings --summary reports/grid-timings.json > /tmp/logs/grid.log 2>&1; rc=$?; stamp grid-done rc=$rc
kill $DURING; sleep 1
cp reports/grid-timings.json /tmp/out/ 2>/dev/null
bash /tmp/bin/collect.sh /tmp/collected > /tmp/logs/collect1.log 2>&1
stamp collected
C=lora-5e-05-42
for S in judge_harm@$C; do
  stamp $S-start
  $SD repro --timings /tmp/out/alone-$S.json -- --force --single-item $S > /tmp/logs/alone-$S.log 2>&1; stamp $S-done rc=$?
  cp timings/judge_harm/$C.json /tmp/out/alone-judge_harm-split.json 2>/dev/null
done
bash /tmp/bin/collect.sh /tmp/collected > /tmp/logs/collect2.log 2>&1
stamp phase2-done
