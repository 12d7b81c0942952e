#!/bin/bash
# phase1.sh REPO: install, make the workspaces, prepare, then the benchmarks that need no judge.
# Run with setsid; logs in /tmp/logs.
REPO=$1
mkdir -p /tmp/logs /tmp/out; exec > /tmp/logs/phase1.log 2>&1; set -x
T0=$(date +%s); stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; echo "$(date +%s) $*" >> /tmp/logs/stamps; }
stamp phase1-start
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/p/whl/*.whl || { stamp pip-failed; exit 1; }
stamp pip-done
source $REPO/.carry/bin/env.sh
mkdir -p /root/.cache/standin-models && mv /tmp/p/models/*.gguf /root/.cache/standin-models/
ln -sfn /tmp/p/shared /tmp/shared
python -c "import torch, transformers, peft, trl, bitsandbytes, ray, dvc, mlflow; print(torch.__version__, transformers.__version__, peft.__version__, trl.__version__, bitsandbytes.__version__, ray.__version__, mlflow.__version__)"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv
# Workspaces outside the synced checkout: each call re-syncs the repo root's tracked files.
for ws in ws abl gem; do
  rm -rf /tmp/$ws; mkdir -p /tmp/$ws
  if git -C $REPO rev-parse 2>/dev/null; then
    (cd $REPO && git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents {} /tmp/$ws/ 2>/dev/null)
  else
    (cd $REPO && tar -c --exclude=./.carry --exclude=./.git . | tar -x -C /tmp/$ws)
  fi
  (cd /tmp/$ws && git init -q && git add -A && git -c user.email=gpu@x -c user.name=gpu commit -qm "workspace of $(cat $REPO/.carry/bin/COMMIT)" && python -m dvc cache dir --local /tmp/dvc-cache && python -m dvc config --local core.analytics false)
done
cd /tmp/ws && $SD preset standin && git add -A && git -c user.email=gpu@x -c user.name=gpu commit -qm "standin preset" || true
stamp prepare-start
python -m dvc repro prepare_mtpref prepare_advbench prepare_model > /tmp/logs/prepare.log 2>&1; stamp prepare-done rc=$?
# QLoRA: eager (the preset) against its decoder recorded as CUDA graphs, same 400 examples.
python benchmarks/bench_training.py --params params.yaml --examples 400 --methods qlora \
  --variants preset,graphed --out /tmp/out/bench-qlora-graphs.json > /tmp/logs/bench-qlora.log 2>&1
stamp qlora-bench-done rc=$?
# Determinism: full with the fast path and deterministic; the other methods' fast path.
mkdir -p /tmp/det1 /tmp/det2
(python benchmarks/bench_determinism.py --methods full --lr 5e-5 --deterministic --steps 100 \
   --chrf-sentences 200 --out /tmp/det1/determinism-full.json > /tmp/logs/det-full.log 2>&1; stamp det-full-done rc=$?) &
(python benchmarks/bench_determinism.py --methods lora,qlora,dpo --lr 5e-5 --steps 100 \
   --chrf-sentences 200 --out /tmp/det2/determinism-others.json > /tmp/logs/det-others.log 2>&1; stamp det-others-done rc=$?) &
wait
stamp phase1-done
