# finish.sh: the last call. Stop what still runs; bring back the latest collection (or, when the
# grid did not end, the report from what finished), the timings and the logs.
source /tmp/bin/env.sh
echo "$(date +%s) finish-start" >> /tmp/logs/stamps
for p in $(ps -eo pid,args | grep -E "[s]afetydrift.cli (grid|repro)|[p]hase[12].sh" | awk '{print $1}'); do kill $p; done
sleep 3; python -m ray.scripts.scripts stop --force >/dev/null 2>&1
for p in $(ps -eo pid,args | grep -E "[s]tages/|[d]vc repro" | awk '{print $1}'); do kill $p; done
sleep 2
cd /tmp/ws && rm -f .dvc/tmp/rwlock .dvc/tmp/lock 2>/dev/null
if ! grep -q collected /tmp/logs/stamps; then
  ( time timeout 60 python -m dvc repro --single-item report ) > /tmp/logs/final-report.log 2>&1; echo "report rc=$?"; tail -3 /tmp/logs/final-report.log
  bash /tmp/bin/collect.sh /tmp/collected
fi
cp /tmp/collected/* $OUT/
tar -czf $OUT/bench.tgz --ignore-failed-read -C /tmp out 2>/dev/null
tar -czf $OUT/logs.tgz --ignore-failed-read -C /tmp logs bin mps-log 2>/dev/null
ls -la $OUT
echo quit | nvidia-cuda-mps-control 2>/dev/null
