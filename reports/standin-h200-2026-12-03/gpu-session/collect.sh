# collect.sh: what comes back (8 files at most, 16 MB each, 64 MB in all).
cd /tmp/ws
tar -czf $OUT/ws.tgz --ignore-failed-read params.yaml dvc.lock reports metrics data/mtpref/stats.json data/chat/stats.json $(ls -d models/*/training.json models/*/ckpt-*/safetydrift_checkpoint.json 2>/dev/null) 2>/dev/null
tar -cJf $OUT/evals.txz --ignore-failed-read evals 2>/dev/null
tar -czf $OUT/bench.tgz --ignore-failed-read -C /tmp out det-qlora det-dpo check 2>/dev/null
tar -czf $OUT/logs.tgz --ignore-failed-read -C /tmp logs bin 2>/dev/null
for f in $OUT/*; do [ $(stat -c %s $f) -gt 16000000 ] && { echo "too big: $f"; rm $f; }; done
ls -la $OUT
