# finish.sh: stop what still runs (unfinished cells are lost), write the report from what finished, collect.
source /tmp/bin/env.sh
echo "$(date +%s) finish-start" >> /tmp/logs/stamps
for p in $(ps -eo pid,args | grep -E "[s]afetydrift.cli (grid|check)|[b]ench_determinism" | awk '{print $1}'); do kill $p; done
sleep 5; python -m ray.scripts.scripts stop --force >/dev/null 2>&1 || ray stop --force >/dev/null 2>&1
for p in $(ps -eo pid,args | grep -E "[s]tages/|[d]vc repro" | awk '{print $1}'); do kill $p; done
sleep 2
cd /tmp/ws && rm -f .dvc/tmp/rwlock .dvc/tmp/lock 2>/dev/null
if ! grep -q -E "grid2?-done rc=0" /tmp/logs/stamps; then
  ( time timeout 60 python -m dvc repro --single-item report ) > /tmp/logs/final-report.log 2>&1; echo "report rc=$?"; tail -3 /tmp/logs/final-report.log
fi
bash /tmp/bin/collect.sh
