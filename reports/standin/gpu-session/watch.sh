#!/bin/bash
# watch.sh REPO FILES_AT_ROOT: on the machine that calls the device tool, swap the next part into
# REPO/.carry as soon as the device acknowledges the current one (an empty $OUT/ack-PART file,
# which the tool copies back under FILES_AT_ROOT; acks older than this watcher's start are ignored).
cd "${1:?usage: watch.sh REPO FILES_AT_ROOT}"
acks=${2:?usage: watch.sh REPO FILES_AT_ROOT}
start=$(mktemp); sleep 1
for p in $(ls /tmp/parts | sort); do
  rm -f .carry/*.part.*; cp /tmp/parts/$p .carry/
  echo "$(date +%T) offered $p" >> /tmp/watch.log
  until find "$acks" -name "ack-$p" -newer "$start" 2>/dev/null | grep -q .; do sleep 0.2; done
  echo "$(date +%T) acked $p" >> /tmp/watch.log
done
rm -f .carry/*.part.*
echo "$(date +%T) all parts sent" >> /tmp/watch.log
