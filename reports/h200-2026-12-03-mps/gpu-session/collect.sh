# collect.sh DEST: what comes back (8 files at most, 16 MB each, 64 MB in all).
DEST=${1:?usage: collect.sh DEST}; mkdir -p $DEST
cd /tmp/ws
tar -czf $DEST/ws.tgz --ignore-failed-read params.yaml dvc.lock reports metrics data/mtpref/stats.json data/chat/stats.json $(ls -d models/*/training.json models/*/ckpt-*/safetydrift_checkpoint.json 2>/dev/null) 2>/dev/null
tar -cJf $DEST/evals.txz --ignore-failed-read evals 2>/dev/null
tar -czf $DEST/bench.tgz --ignore-failed-read -C /tmp out 2>/dev/null
tar -czf $DEST/logs.tgz --ignore-failed-read -C /tmp logs bin mps-log 2>/dev/null
for f in $DEST/*; do [ $(stat -c %s $f) -gt 16000000 ] && { echo "too big: $f"; rm $f; }; done
ls -la $DEST
