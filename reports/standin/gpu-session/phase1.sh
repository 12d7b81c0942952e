#!/bin/bash
# phase1.sh REPO: install; CUDA MPS; the CUDA tests of the decoder (prefill now in chunks) and of QLoRA's evaluation on
# its dequantized 4-bit base (adapters now merged into it); the grid's workspace /tmp/ws
# on the `standin` preset with its own DVC cache; the shared inputs that need no judge prepared
# while the judge's parts still arrive.
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
mkdir -p /tmp/mps-log
if CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log nvidia-cuda-mps-control -d && timeout 60 python -c "import torch; x=torch.ones(1024,1024,device='cuda'); print('mps client ok', float((x@x).sum()))"; then
  stamp mps-on
else
  echo quit | nvidia-cuda-mps-control; stamp mps-off
fi
( while true; do echo "$(date +%s) $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader) $(df -BG --output=used,avail / | tail -1)"; sleep 10; done > /tmp/logs/gpu-disk.log ) &
rm -rf /tmp/ws; mkdir -p /tmp/ws
(cd $REPO && tar -c --exclude=./.carry --exclude=./.git . | tar -x -C /tmp/ws)
cd /tmp/ws && git init -q && git add -A && git -c user.email=gpu@x -c user.name=gpu commit -qm "workspace of $(cat /tmp/bin/COMMIT)" \
  && python -m dvc cache dir --local /tmp/dvc-cache && python -m dvc config --local core.analytics false
$SD preset standin --force
# The grid keeps only each cell's final checkpoint weights (docs/running.md, Disk).
sed -i 's/^  keep_checkpoints: all /  keep_checkpoints: final /' params.yaml && grep -n "keep_checkpoints\|qlora_base" params.yaml
git add -A && git -c user.email=gpu@x -c user.name=gpu commit -qm "standin preset, keep final" || true
# The shared inputs that need no judge (CPU work: the GGUF into safetensors, the data) beside the
# CUDA tests (GPU work); none of them reads generation.qlora_base.
stamp prepare-early-start
( $SD repro --timings /tmp/out/prepare-early.json -- prepare_model prepare_mtpref prepare_train_data prepare_advbench prepare_evaluation > /tmp/logs/prepare-early.log 2>&1; stamp prepare-early-done rc=$? ) &
PREPARE=$!
stamp cuda-tests-start
timeout 200 python -m pytest -q -p no:cacheprovider -o addopts="" -k cuda tests/test_decoding.py > /tmp/logs/cuda-tests-decoding.log 2>&1
stamp cuda-tests-decoding-done rc=$?
timeout 200 python -m pytest -q -p no:cacheprovider -o addopts="" -k cuda tests/test_qlora_evaluation.py > /tmp/logs/cuda-tests-qlora.log 2>&1
rc=$?; stamp cuda-tests-qlora-done rc=$rc
if [ $rc -ne 0 ]; then
  # QLoRA's new path failed on the GPU: its adapters are merged into the bf16 base instead, a
  # deviation the report's "Deviations from the paper" lists.
  sed -i 's/^  qlora_base: quantized /  qlora_base: merged    /' params.yaml && grep -n qlora_base params.yaml; stamp qlora-merged
  git add -A && git -c user.email=gpu@x -c user.name=gpu commit -qm "qlora merged" || true
fi
wait $PREPARE
stamp phase1-done
