# measure.sh: the AdvBench pass of the static decoder against transformers' static-cache generate
cat /tmp/parts/C.part.* > /tmp/C.tar && echo "f242d992a443530e9978109ef8a9729a44c99c3fd3a3c33ed306a619e5a2dc46  /tmp/C.tar" | sha256sum -c || exit 1
mkdir -p /tmp/p && tar -xf /tmp/C.tar -C /tmp/p && rm /tmp/C.tar
python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site /tmp/p/whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
T0=$(date +%s)
python - <<'PY'
from pathlib import Path
from safetydrift.models import ModelSpec, prepare_model
spec = ModelSpec.from_params({"source": "/tmp/p/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "revision": None, "init": "pretrained", "dtype": "bfloat16", "chat_template": None, "trust_remote_code": False})
print({k: v for k, v in prepare_model(spec, Path("/tmp/base")).items() if k != "sha256"})
PY
echo "prepare $(( $(date +%s)-T0 )) s"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
python benchmarks/bench_generation.py --model /tmp/base --prompts /tmp/p/advbench_harmful_behaviors.csv \
  --engines static,hf-static --out $OUT/gen.json 2>&1 | grep -v Warning | tee $OUT/gen.log
