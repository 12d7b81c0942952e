#!/bin/bash
# phase1.sh REPO: install, make the workspace, prepare, then the determinism pairs that need no judge
# (QLoRA and DPO at 5e-5: two fast-path and two deterministic runs each). Run with setsid.
REPO=$1
mkdir -p /tmp/logs /tmp/out; exec > /tmp/logs/phase1.log 2>&1; set -x
stamp() { echo "$(date +%s) $*" >> /tmp/logs/stamps; }
stamp phase1-start
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/p/whl/*.whl || { stamp pip-failed; exit 1; }
stamp pip-done
source /tmp/bin/env.sh
mkdir -p /root/.cache/standin-models && mv /tmp/p/models/*.gguf /root/.cache/standin-models/
ln -sfn /tmp/p/shared /tmp/shared
python -c "import torch, transformers, peft, trl, bitsandbytes, ray, dvc, mlflow; print(torch.__version__, transformers.__version__, peft.__version__, trl.__version__, bitsandbytes.__version__, ray.__version__, mlflow.__version__)"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
rm -rf /tmp/ws; mkdir -p /tmp/ws
(cd $REPO && tar -c --exclude=./.carry --exclude=./.git . | tar -x -C /tmp/ws)
cd /tmp/ws && git init -q && git add -A && git -c user.email=gpu@x -c user.name=gpu commit -qm "workspace of $(cat /tmp/bin/COMMIT)" \
  && python -m dvc cache dir --local /tmp/dvc-cache && python -m dvc config --local core.analytics false
$SD preset standin --force && git add -A && git -c user.email=gpu@x -c user.name=gpu commit -qm "standin preset" || true
( while true; do echo "$(date +%s) $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader) $(df -BG --output=used,avail / | tail -1)"; sleep 10; done > /tmp/logs/gpu-disk.log ) &
stamp prepare-start
/usr/bin/time -v python -m dvc repro prepare_mtpref prepare_advbench prepare_model > /tmp/logs/prepare.log 2>&1; stamp prepare-done rc=$?
git add -A; git -c user.email=gpu@x -c user.name=gpu commit -qm prepared -q || true
mkdir -p /tmp/det-qlora /tmp/det-dpo
PIDS=""
for M in qlora dpo; do
  ( python benchmarks/bench_determinism.py --methods $M --lr 5e-5 --deterministic --steps 100 \
      --chrf-sentences 200 --out /tmp/det-$M/determinism-$M.json > /tmp/logs/det-$M.log 2>&1; stamp det-$M-done rc=$? ) &
  PIDS="$PIDS $!"
done
wait $PIDS
stamp phase1-done
