"""DVC stage `prepare_model`: the base model into models/base/ (safetensors, tokenizer)."""

from pathlib import Path
from typing import Any

from safetydrift import tracking
from safetydrift.models import ModelSpec, prepare_model
from safetydrift.params import get, load_params
from safetydrift.stage import BASE_MODEL_DIR, declared_params, run_stage, study_name

PARAMS = ["model"]


def main(params: dict[str, Any], out_dir: Path = BASE_MODEL_DIR) -> dict[str, Any]:
    spec = ModelSpec.from_params(get(params, "model"))
    with tracking.stage_run(
        study_name(params), "prepare_model", declared_params(params, PARAMS)
    ) as run:
        info = prepare_model(spec, out_dir)
        run.log_metrics({"parameters": info["parameters"]})
        provenance = ("sha256", "resolved_revision", "architecture")
        run.set_tags({k: v for k, v in info.items() if k in provenance})
    return info


if __name__ == "__main__":
    run_stage(lambda: main(load_params()))
