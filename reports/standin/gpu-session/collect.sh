# collect.sh DEST: what comes back (8 files at most, 16 MB each, 64 MB in all): the grid
# workspace's records, report and stage timings, its generations and judgements (xz, cut into
# 15 MB pieces), the timings and logs.
exec 9>/tmp/collect.lock; flock 9   # one collection at a time
DEST=${1:?usage: collect.sh DEST}; rm -rf $DEST.new; mkdir -p $DEST.new
cd /tmp/ws
tar -czf $DEST.new/ws.tgz --ignore-failed-read --exclude='reports/h200-*' --exclude='reports/standin*' params.yaml dvc.lock reports metrics timings data/mtpref/stats.json data/chat/stats.json $(ls -d models/*/training.json models/*/ckpt-*/safetydrift_checkpoint.json 2>/dev/null) 2>/dev/null
tar -cf - evals 2>/dev/null | xz -6 -T8 | split -b 15000000 -d -a 1 - $DEST.new/evals.txz.
tar -czf $DEST.new/bench.tgz --ignore-failed-read -C /tmp out 2>/dev/null
tar -czf $DEST.new/logs.tgz --ignore-failed-read -C /tmp logs bin mps-log 2>/dev/null
rm -rf $DEST && mv $DEST.new $DEST
ls -la $DEST
