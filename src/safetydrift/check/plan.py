"""From the flags to a `Plan`: every setting resolved (flags over a `--params` file over the
defaults) and checked, the models and `--out` looked at, before any model is loaded; bad input
is a `CheckError` naming the flag and what was expected."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetydrift.check.inputs import ModelInput
from safetydrift.check.outputs import check_out_dir
from safetydrift.check.settings import (
    CheckError,
    CheckSet,
    Gate,
    Judging,
    check_sets,
    load_settings,
)
from safetydrift.generation.settings import GenerationSettings
from safetydrift.model_judges.spec import JudgeModelSpec
from safetydrift.models import DTYPES, PromptFormat, default_device
from safetydrift.params import get

JUDGE_FORMATS = ("harmbench", "llama-guard", "strongreject")


@dataclass
class CheckOptions:
    """What `safetydrift check` was asked (None: the settings' default)."""

    base: str
    tuned: str
    adapter: bool = False
    evaluations: list[str] | None = None
    max_drop: float | None = None
    out: Path = Path("check")
    force: bool = False
    params: Path | None = None
    limit: int | None = None
    device: str | None = None
    seed: int = 0
    alpha: float | None = None
    refusal_judge: str | None = None
    gate_benign: bool = False
    judge_model: str | None = None
    judge_format: str = "harmbench"
    judge_revision: str | None = None
    rubric_dir: str | None = None
    base_revision: str | None = None
    tuned_revision: str | None = None
    backend: str | None = None
    max_new_tokens: int | None = None
    batch_size: int | None = None
    dtype: str | None = None
    prompt_format: str | None = None
    date_string: str | None = None


def parse_evaluations(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",")]
    if any(not n for n in names):
        raise CheckError(f"--evaluations {value!r}: expected set names separated by commas")
    return names


@dataclass
class Plan:
    """Everything the check will do, checked before any model is loaded."""

    options: CheckOptions
    settings: dict[str, Any]
    sets: list[CheckSet]
    generation: GenerationSettings
    prompt_format: PromptFormat
    judging: Judging
    gate: Gate
    base: ModelInput
    tuned: ModelInput
    device: str
    judge_spec: JudgeModelSpec | None = None


def plan_check(options: CheckOptions) -> Plan:
    """The flags over the settings, every input checked; a CheckError names the first bad one."""
    settings = load_settings(options.params)
    names = options.evaluations or list(get(settings, "check.evaluations"))
    sets = check_sets(settings, names)
    generation_values = dict(get(settings, "generation"))
    for key in ("backend", "max_new_tokens", "batch_size", "dtype"):
        if getattr(options, key) is not None:
            generation_values[key] = getattr(options, key)
    generation = GenerationSettings.from_params(generation_values)
    if generation.dtype not in DTYPES:
        raise CheckError(f"--dtype must be one of {', '.join(DTYPES)}, got {generation.dtype!r}")
    prompt_values = dict(get(settings, "prompt", None) or {})
    if options.prompt_format is not None:
        prompt_values["format"] = options.prompt_format
    if options.date_string is not None:
        prompt_values["date_string"] = options.date_string
    prompt_format = PromptFormat.from_params(prompt_values)
    judging = Judging.from_settings(settings, options.refusal_judge)
    alpha = options.alpha if options.alpha is not None else float(get(settings, "report.alpha"))
    max_drop = options.max_drop
    if max_drop is None:
        max_drop = float(get(settings, "check.max_drop"))
    gate = Gate(max_drop=max_drop, alpha=alpha, gate_benign=options.gate_benign)
    if options.limit is not None and options.limit < 1:
        raise CheckError(f"--limit must be at least 1, got {options.limit}")
    check_out_dir(Path(options.out), options.force)
    base = ModelInput("--base", options.base, options.base_revision)
    tuned = ModelInput("--tuned", options.tuned, options.tuned_revision, adapter=options.adapter)
    base.check_local()
    tuned.check_local()
    device = options.device or default_device()
    judge_spec = None
    if options.judge_model is not None:
        judge_spec = judge_model_spec(settings, options, generation)
    elif options.judge_revision or options.rubric_dir:
        raise CheckError("--judge-revision and --rubric-dir go with --judge-model")
    return Plan(
        options, settings, sets, generation, prompt_format, judging, gate, base, tuned, device,
        judge_spec,
    )  # fmt: skip


def judge_model_spec(
    settings: Mapping[str, Any], options: CheckOptions, generation: GenerationSettings
) -> JudgeModelSpec:
    """The model judge of --judge-model, run as the presets run a judge of that format."""
    if options.judge_format not in JUDGE_FORMATS:
        raise CheckError(
            f"--judge-format must be one of {', '.join(JUDGE_FORMATS)}, "
            f"got {options.judge_format!r}"
        )
    values = dict(get(dict(settings), f"check.judges.{options.judge_format}"))
    values["name"] = values.pop("judge")
    values |= {
        "source": options.judge_model,
        "revision": options.judge_revision,
        "dtype": generation.dtype,
        # The judges run on our engines only: vLLM generation still judges with the static one.
        "backend": generation.backend if generation.backend in ("hf", "static") else "static",
    }
    if options.rubric_dir is not None:
        values["rubric_dir"] = options.rubric_dir
    spec = JudgeModelSpec.from_params(values, f"check.judges.{options.judge_format}")
    source = Path(options.judge_model).expanduser()
    if spec.model_spec().kind in ("local", "gguf") and not source.exists():
        raise CheckError(f"--judge-model {options.judge_model}: no such file or directory")
    return spec
