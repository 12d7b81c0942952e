#!/bin/bash
# phase1.sh REPO: install, make the workspace (the standin preset), start CUDA MPS,
# prepare, then the base model's AdvBench and evaluation-group generation, each alone on the GPU.
REPO=$1
mkdir -p /tmp/logs /tmp/out; exec > /tmp/logs/phase1.log 2>&1; set -x
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
# A user-level daemon (the GPU's compute mode is left as it is); off again if a client fails.
mkdir -p /tmp/mps-log
if CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log nvidia-cuda-mps-control -d && timeout 60 python -c "import torch; x=torch.ones(1024,1024,device='cuda'); print('mps client ok', float((x@x).sum()))"; then
  stamp mps-on
else
  echo quit | nvidia-cuda-mps-control; stamp mps-off
fi
cat /tmp/mps-log/control.log 2>/dev/null | tail -5
rm -rf /tmp/ws; mkdir -p /tmp/ws
(cd $REPO && tar -c --exclude=./.carry --exclude=./.git . | tar -x -C /tmp/ws)
cd /tmp/ws && git init -q && git add -A && git -c user.email=gpu@x -c user.name=gpu commit -qm "workspace of $(cat /tmp/bin/COMMIT)" \
  && python -m dvc cache dir --local /tmp/dvc-cache && python -m dvc config --local core.analytics false
$SD preset standin --force
git add -A && git -c user.email=gpu@x -c user.name=gpu commit -qm "standin preset" || true
( while true; do echo "$(date +%s) $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader) $(df -BG --output=used,avail / | tail -1)"; sleep 10; done > /tmp/logs/gpu-disk.log ) &
stamp prepare-start
/usr/bin/time -v python -m dvc repro prepare_mtpref prepare_train_data prepare_advbench prepare_model prepare_evaluation > /tmp/logs/prepare.log 2>&1; stamp prepare-done rc=$?
git add -A; git -c user.email=gpu@x -c user.name=gpu commit -qm prepared -q || true
# Alone on the GPU: the base model's AdvBench generation, then its evaluation group.
mkdir -p /tmp/out/alone
for S in generate_refusal_base generate_evaluation_base; do
  stamp $S-start
  $SD repro --timings /tmp/out/alone/$S.json -- --single-item $S > /tmp/logs/alone-$S.log 2>&1; stamp $S-done rc=$?
done
# The decoder's CUDA-graph tests on the GPU (the cache budget's new-pool fix among them).
python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/bin/*.whl
stamp gpu-tests-start
python -m pytest -q -p no:cacheprovider -o addopts="" tests/test_decoding.py -k cuda > /tmp/logs/gpu-tests.log 2>&1; stamp gpu-tests-done rc=$?
stamp phase1-done
