"""DVC stage `prepare_judge_models`: each judge model of `harm.models` into models/judges/NAME/.

A judge model is a hub id (pinned `revision`), a local directory or a `.gguf` file; it is written
once as safetensors with its tokenizer and chat template, so that every `judge_harm` stage loads it
in seconds instead of dequantizing or downloading it again.
"""

from pathlib import Path
from typing import Any

from safetydrift import tracking
from safetydrift.files import atomic_dir
from safetydrift.models import ModelSpec, prepare_model
from safetydrift.params import ParamError, get, load_params
from safetydrift.stage import JUDGE_MODELS_DIR, declared_params, run_stage, study_name

PARAMS = ["harm.models"]


def main(params: dict[str, Any], out_dir: Path = JUDGE_MODELS_DIR) -> dict[str, Any]:
    models = get(params, "harm.models", None) or {}
    if not isinstance(models, dict):
        raise ParamError("params.yaml: `harm.models` must map judge-model names to their source")
    specs = {name: ModelSpec.from_params(entry) for name, entry in models.items()}
    infos = {}
    with (
        tracking.stage_run(
            study_name(params), "prepare_judge_models", declared_params(params, PARAMS)
        ) as run,
        atomic_dir(out_dir) as tmp,
    ):
        for name, spec in specs.items():
            infos[name] = prepare_model(spec, tmp / name)
            run.set_tags({f"{name}.sha256": infos[name].get("sha256")})
        if not specs:
            (tmp / "NONE").write_text("no judge models in `harm.models`\n")
    return infos


if __name__ == "__main__":
    run_stage(lambda: main(load_params()))
