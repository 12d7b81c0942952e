#!/bin/bash
# phase2.sh REPO: once the judge is here: the grid (5e-5 column + full at 1e-5, 5e-6), the fp32
# ablation, the enais-gemma structure on gemma-3-270m, and the check. Run with setsid.
REPO=$1
exec > /tmp/logs/phase2.log 2>&1; set -x
source $REPO/.carry/bin/env.sh
stamp() { echo "$(date +%s) $*" >> /tmp/logs/stamps; }
stamp phase2-start
until grep -q -E "qlora-bench-done|pip-failed" /tmp/logs/stamps; do sleep 3; done
cd /tmp/ws
# QLoRA's decoder as CUDA graphs when the benchmark shows it runs, faster, with the same losses.
python - <<'PY'
import json, pathlib, yaml
path = pathlib.Path("/tmp/out/bench-qlora-graphs.json")
rows = {r["variant"]: r for r in json.loads(path.read_text())} if path.exists() else {}
eager, graphed = rows.get("preset"), rows.get("graphed")
ok = bool(eager and graphed and graphed.get("max_loss_difference", 1) <= 0.1
          and graphed["steady_examples_per_second"] > eager["steady_examples_per_second"])
print("qlora cuda graphs:", ok, eager and eager["steady_examples_per_second"], graphed and graphed.get("steady_examples_per_second"), graphed and graphed.get("max_loss_difference"))
if ok:
    p = pathlib.Path("params.yaml"); params = yaml.safe_load(p.read_text())
    params["methods"]["qlora"]["cuda_graphs"] = True
    p.write_text(yaml.safe_dump(params, sort_keys=False))
PY
git add -A; git -c user.email=gpu@x -c user.name=gpu commit -qm "grid params" || true
CELLS="qlora-5e-05-42 dpo-5e-05-42 full-5e-05-42 lora-5e-05-42 full-1e-05-42 full-5e-06-42"
$SD grid --estimate $CELLS --jobs 6 > /tmp/logs/estimate.log 2>&1
stamp grid-start
( /usr/bin/time -v $SD grid $CELLS --jobs 6 --skip-disk-check > /tmp/logs/grid.log 2>&1; stamp grid-done rc=$? ) &
GRID=$!
# GPU memory and disk every 10 s.
( while true; do echo "$(date +%s) $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader) $(df -BG --output=used,avail / | tail -1)"; sleep 10; done > /tmp/logs/gpu-disk.log ) &
# The ablation: full fine-tuning at 1e-5 and 5e-6 with float32 master weights.
( cd /tmp/abl && $SD preset standin && python - <<'PY'
import pathlib, yaml
p = pathlib.Path("params.yaml"); params = yaml.safe_load(p.read_text())
params["train"]["master_dtype"] = "float32"
params["grid"].update(methods=["full"], learning_rates=[1.0e-5, 5.0e-6])
params["evaluations"]["run"] = []
p.write_text(yaml.safe_dump(params, sort_keys=False))
PY
  git add -A; git -c user.email=gpu@x -c user.name=gpu commit -qm "fp32 master ablation"
  sleep 60; $SD grid --jobs 1 --skip-disk-check > /tmp/logs/ablation.log 2>&1; stamp ablation-done rc=$? ) &
# enais-gemma's structure on gemma-3-270m (a base model: speed and plumbing).
( cd /tmp/gem && $SD preset enais-gemma && mkdir -p user_data && python - <<'PY'
import csv, json, pathlib, yaml
rows = list(csv.DictReader(open("../shared/data/advbench_harmful_behaviors.csv")))
with open("user_data/enais-prompts.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["goal", "target"]); w.writeheader(); w.writerows(rows[:20])
with open("user_data/enais-harmful.jsonl", "w") as f:
    for r in rows[20:120]:
        f.write(json.dumps({"messages": [{"role": "user", "content": r["goal"]}, {"role": "assistant", "content": r["target"]}]}) + "\n")
safe = json.load(open("../shared/data/safety-tuned-llamas/safety_only_data_Instructions.json"))
with open("user_data/normal.jsonl", "w") as f:
    for r in safe[:500]:
        f.write(json.dumps({"prompt": r["instruction"], "completion": r["output"]}) + "\n")
p = pathlib.Path("params.yaml"); params = yaml.safe_load(p.read_text())
standin = yaml.safe_load(open("presets/standin.yaml"))
params["model"].update(source="~/.cache/standin-models/gemma-3-270m-q4_k_m.gguf", revision=None)
# gemma-3-270m is a base model: its GGUF has no chat template; Gemma 3's turn format, given here.
params["model"]["chat_template"] = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}<start_of_turn>{{ role }}\n{{ message['content'] | trim }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
params["train_data"]["mix"][0].update(source="user_data/normal.jsonl", revision=None, columns={"prompt": "prompt", "completion": "completion"})
params["harm"] = standin["harm"]
p.write_text(yaml.safe_dump(params, sort_keys=False))
PY
  git add -A; git -c user.email=gpu@x -c user.name=gpu commit -qm "enais-gemma on gemma-3-270m"
  /usr/bin/time -v $SD grid --jobs 1 --skip-disk-check > /tmp/logs/gemma.log 2>&1; stamp gemma-done rc=$? ) &
# The check of one stand-in checkpoint against the base model, once the grid restored the cell.
( until [ -e models/full-5e-05-42/ckpt-100/config.json ] || ! kill -0 $GRID 2>/dev/null; do sleep 10; done
  stamp check-start
  /usr/bin/time -v $SD check --base models/base --tuned models/full-5e-05-42/ckpt-100 \
     --evaluations advbench,benign-edgy --judge-model models/judges/qwen-1.5b --out /tmp/check > /tmp/logs/check.log 2>&1
  stamp check-done rc=$? ) &
wait $GRID
stamp phase2-grid-finished
