#!/bin/bash
# phase1.sh REPO: install; CUDA MPS; two workspaces on the `standin` preset with their own DVC
# caches (so neither restores the other's stages from DVC's run-cache): /tmp/ws for the grid,
# untouched here so the grid runs from nothing; /tmp/ws-alone, where one cell (lora-5e-05-42)
# trains and generates alone on the GPU while the judge's parts still arrive.
REPO=$1
mkdir -p /tmp/logs /tmp/out/alone; exec > /tmp/logs/phase1.log 2>&1; set -x
stamp() { echo "$(date +%s) $*" >> /tmp/logs/stamps; }
stamp phase1-start
python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site /tmp/p/whl/*.whl || { stamp pip-failed; exit 1; }
stamp pip-done
source /tmp/bin/env.sh
mkdir -p /root/.cache/standin-models && mv /tmp/p/models/*.gguf /root/.cache/standin-models/
ln -sfn /tmp/p/shared /tmp/shared
python -c "import torch, transformers, peft, trl, bitsandbytes, ray, dvc, mlflow; print(torch.__version__, transformers.__version__, peft.__version__, trl.__version__, bitsandbytes.__version__, ray.__version__, mlflow.__version__)"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,compute_mode --format=csv
# CUDA MPS: the cells' processes then run their kernels side by side instead of in time slices.
mkdir -p /tmp/mps-log
if CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log nvidia-cuda-mps-control -d && timeout 60 python -c "import torch; x=torch.ones(1024,1024,device='cuda'); print('mps client ok', float((x@x).sum()))"; then
  stamp mps-on
else
  echo quit | nvidia-cuda-mps-control; stamp mps-off
fi
( while true; do echo "$(date +%s) $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader) $(df -BG --output=used,avail / | tail -1)"; sleep 10; done > /tmp/logs/gpu-disk.log ) &
for W in ws ws-alone; do
  rm -rf /tmp/$W; mkdir -p /tmp/$W
  (cd $REPO && tar -c --exclude=./.carry --exclude=./.git . | tar -x -C /tmp/$W)
  cd /tmp/$W && git init -q && git add -A && git -c user.email=gpu@x -c user.name=gpu commit -qm "workspace of $(cat /tmp/bin/COMMIT)" \
    && python -m dvc cache dir --local /tmp/dvc-cache-$W && python -m dvc config --local core.analytics false
  $SD preset standin --force
  git add -A && git -c user.email=gpu@x -c user.name=gpu commit -qm "standin preset" || true
done
# The grid keeps only each cell's final checkpoint weights (the disk estimate: 41.5 GB with it).
cd /tmp/ws && sed -i 's/^  keep_checkpoints: all /  keep_checkpoints: final /' params.yaml && grep -n "keep_checkpoints" params.yaml
git add -A && git -c user.email=gpu@x -c user.name=gpu commit -qm "keep final" || true
# Alone on the GPU: one cell's training, AdvBench generation and evaluation-group generation.
cd /tmp/ws-alone
C=lora-5e-05-42
stamp alone-prepare-start
$SD repro --timings /tmp/out/alone/prepare.json -- prepare_mtpref prepare_train_data prepare_advbench prepare_model prepare_evaluation > /tmp/logs/alone-prepare.log 2>&1; stamp alone-prepare-done rc=$?
for S in train@$C generate_refusal@$C generate_evaluation@controls-$C; do
  stamp $S-start
  $SD repro --timings /tmp/out/alone/$S.json -- --single-item $S > /tmp/logs/alone-$S.log 2>&1; stamp $S-done rc=$?
done
stamp phase1-done
