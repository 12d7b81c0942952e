# recv.sh: every transfer call. Keep this call's part; when all of A (wheels, the stand-in, data) or
# all of B (the judge) are here, join them and start phase1 or phase2 in their own sessions.
mkdir -p /tmp/parts /tmp/bin /tmp/logs && cp -n .carry/bin/* /tmp/bin/
for f in .carry/*.part.*; do [ -e "$f" ] && cp "$f" /tmp/parts/ && : > "$OUT/ack-$(basename "$f")"; done
for X in A B; do
  n=$(cat /tmp/bin/$X.count); have=$(ls /tmp/parts/$X.part.* 2>/dev/null | wc -l)
  echo "$X: $have of $n parts"
  if [ ! -e /tmp/$X.joined ] && [ "$have" -eq "$n" ]; then
    bash /tmp/bin/join.sh $X "$(cat /tmp/bin/$X.sha)" > /tmp/logs/join-$X.log 2>&1 && touch /tmp/$X.joined
    tail -2 /tmp/logs/join-$X.log
    if [ -e /tmp/$X.joined ]; then
      [ $X = A ] && setsid -f nohup bash /tmp/bin/phase1.sh "$PWD" </dev/null >/dev/null 2>&1
      [ $X = B ] && setsid -f nohup bash /tmp/bin/phase2.sh "$PWD" </dev/null >/dev/null 2>&1
    fi
  fi
done
bash /tmp/bin/poll.sh 0
