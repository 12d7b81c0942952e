# finish.sh: the last call. Stop what still runs; the grid's outputs as collected when it ended (or,
# when it did not end, stop it and write the report from what finished); the logs and alone timings now.
source /tmp/bin/env.sh
echo "$(date +%s) finish-start" >> /tmp/logs/stamps
for p in $(ps -eo pid,args | grep -E "[s]afetydrift.cli (grid|repro)|[p]hase2.sh" | awk '{print $1}'); do kill $p; done
sleep 3; python -m ray.scripts.scripts stop --force >/dev/null 2>&1
for p in $(ps -eo pid,args | grep -E "[s]tages/|[d]vc repro" | awk '{print $1}'); do kill $p; done
sleep 2
cd /tmp/ws && rm -f .dvc/tmp/rwlock .dvc/tmp/lock 2>/dev/null
if [ -e /tmp/collected/ws.tgz ]; then
  cp /tmp/collected/ws.tgz /tmp/collected/evals.txz $OUT/
  tar -czf $OUT/bench.tgz --ignore-failed-read -C /tmp out 2>/dev/null
  tar -czf $OUT/logs.tgz --ignore-failed-read -C /tmp logs bin mps-log 2>/dev/null
  ls -la $OUT
else
  ( time timeout 90 python -m dvc repro --single-item report ) > /tmp/logs/final-report.log 2>&1; echo "report rc=$?"; tail -3 /tmp/logs/final-report.log
  bash /tmp/bin/collect.sh $OUT
fi
echo quit | nvidia-cuda-mps-control 2>/dev/null
