# poll.sh SECONDS: wait, then show where the runs are.
sleep "${1:-0}"
tail -n 6 /tmp/logs/stamps 2>/dev/null
for f in /tmp/logs/phase1.log /tmp/logs/phase2.log /tmp/logs/grid.log; do [ -e $f ] && { echo "== $f"; tail -c 700 $f; echo; }; done
tail -n 1 /tmp/logs/gpu-disk.log 2>/dev/null
