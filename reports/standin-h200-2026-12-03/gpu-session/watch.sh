#!/bin/bash
# Swap the next part into .carry as soon as the device acknowledges the current one.
cd /work/main
for p in $(ls /tmp/parts | sort); do
  rm -f .carry/*.part.*; cp /tmp/parts/$p .carry/
  echo "$(date +%T) offered $p" >> /tmp/watch.log
  until find /work/.device -name "ack-$p" 2>/dev/null | grep -q .; do sleep 0.2; done
  echo "$(date +%T) acked $p" >> /tmp/watch.log
done
rm -f .carry/*.part.*
echo "$(date +%T) all parts sent" >> /tmp/watch.log
