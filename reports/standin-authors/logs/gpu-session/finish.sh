# finish.sh: stop the grid (its unfinished cells are lost), report what finished, collect.
source "$(dirname "$0")/env.sh"
echo "$(date +%s) finish-start" >> /tmp/logs/stamps
for p in $(ps -eo pid,args | grep "[s]afetydrift.cli grid" | awk '{print $1}'); do kill $p; done
sleep 5; python -m ray.scripts.scripts stop --force >/dev/null 2>&1 || ray stop --force >/dev/null 2>&1
for p in $(ps -eo pid,args | grep -E "[s]tages/|[d]vc repro|[s]afetydrift.cli repro" | awk '{print $1}'); do kill $p; done
sleep 2
cd /tmp/ws && rm -f .dvc/tmp/rwlock .dvc/tmp/lock 2>/dev/null
ls metrics/refusal metrics/harm 2>/dev/null | tr '\n' ' '
( time timeout 100 python -m dvc repro --single-item report ) > /tmp/logs/final-report.log 2>&1; echo "report rc=$?"; tail -3 /tmp/logs/final-report.log
echo "$(date +%s) finish-report" >> /tmp/logs/stamps
bash "$(dirname "$0")/collect.sh"
