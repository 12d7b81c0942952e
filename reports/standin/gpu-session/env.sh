# Sourced by every step on the GPU machine.
export PYTHONPATH=/tmp/site:/tmp/ws/src PATH=/tmp/site/bin:$PATH HOME=/root
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export MLFLOW_TRACKING_URI= TOKENIZERS_PARALLELISM=false
unset MLFLOW_TRACKING_URI
SD="python -m safetydrift.cli"
