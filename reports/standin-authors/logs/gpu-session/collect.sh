# collect.sh: what comes back (8 files at most, 16 MB each).
cd /tmp
tar -czf $OUT/ws.tgz --ignore-failed-read -C /tmp/ws params.yaml dvc.lock reports metrics data/mtpref/stats.json $(cd /tmp/ws && ls -d models/*/training.json models/*/ckpt-*/safetydrift_checkpoint.json 2>/dev/null) 2>/dev/null
tar -czf $OUT/gens.tgz --ignore-failed-read -C /tmp/ws generations 2>/dev/null
tar -czf $OUT/abl-gem.tgz --ignore-failed-read -C /tmp abl/params.yaml abl/dvc.lock abl/reports abl/metrics $(cd /tmp && ls -d abl/models/*/training.json abl/generations gem/models/*/training.json gem/generations 2>/dev/null) gem/params.yaml gem/dvc.lock gem/reports gem/metrics gem/data 2>/dev/null
tar -czf $OUT/bench.tgz --ignore-failed-read -C /tmp out det1/determinism-full.json det2/determinism-others.json check 2>/dev/null
tar -czf $OUT/logs.tgz --ignore-failed-read -C /tmp logs 2>/dev/null
ls -la $OUT
