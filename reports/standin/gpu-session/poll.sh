# poll.sh SECONDS: wait, then show where the runs are, and bring back what is there so far: the
# latest collection and the logs come back with every poll, so a machine lost between calls loses
# only what happened since the last one.
sleep "${1:-0}"
tail -n 6 /tmp/logs/stamps 2>/dev/null
for f in /tmp/logs/phase1.log /tmp/logs/phase2.log /tmp/logs/grid.log; do [ -e $f ] && { echo "== $f"; tail -c 700 $f; echo; }; done
tail -n 1 /tmp/logs/gpu-disk.log 2>/dev/null
if [ -n "$OUT" ]; then
  [ -d /tmp/collected ] && cp /tmp/collected/* "$OUT"/ 2>/dev/null
  tar -czf "$OUT/logs.tgz" --ignore-failed-read -C /tmp logs out 2>/dev/null
fi
