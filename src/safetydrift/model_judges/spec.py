"""A model judge as params.yaml names it (`JudgeModelSpec`, `judge_specs` over `harm.judges`),
every value checked before any model is looked at; the judge names and guard formats."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetydrift.generation.settings import GenerationSettings
from safetydrift.model_judges.prompts import DEFAULT_RUBRIC_DIR
from safetydrift.models import DTYPES, ModelSpec
from safetydrift.params import ParamError, get

STRONGREJECT_RUBRIC = "strongreject-rubric"
GUARD = "guard"
JUDGE_NAMES = (STRONGREJECT_RUBRIC, GUARD)
LLAMA_GUARD = "llama-guard"
HARMBENCH = "harmbench"
GUARD_FORMATS = (LLAMA_GUARD, HARMBENCH)
JUDGE_BACKENDS = ("hf", "static")

# A guard writes one word (and a category line); the rubric writes four lines of reasoning and
# three scores, about 150-300 tokens with the models tried so far.
DEFAULT_MAX_NEW_TOKENS = {STRONGREJECT_RUBRIC: 384, GUARD: 16}


@dataclass(frozen=True)
class JudgeModelSpec:
    """One model judge from params.yaml: which judge, which model, how to run it."""

    name: str
    source: str  # hub id, local Hugging Face directory, or .gguf file
    revision: str | None = None  # hub ids only; pin a commit sha
    dtype: str = "bfloat16"
    trust_remote_code: bool = False
    chat_template: str | None = None  # for a model that has none: Jinja text or a .jinja file
    backend: str = "static"
    batch_size: int = 1024
    max_new_tokens: int | None = None  # None: DEFAULT_MAX_NEW_TOKENS of the judge
    format: str | None = None  # guard: llama-guard | harmbench
    threshold: float = 0.5  # strongreject-rubric: harmful when score >= threshold
    rubric_dir: str = DEFAULT_RUBRIC_DIR  # strongreject-rubric: the published rubric files
    memory_budget_gb: float | None = None  # None: the free memory of the device

    @classmethod
    def from_params(cls, values: Mapping[str, Any], key_prefix: str) -> JudgeModelSpec:
        where = f"params.yaml: `{key_prefix}"
        if not isinstance(values, Mapping):
            raise ParamError(f"{where}` must be a mapping, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ParamError(f"{where}` has unknown keys {unknown}; known: {sorted(known)}")
        for key in ("name", "source"):
            if not values.get(key):
                raise ParamError(f"{where}.{key}` is required")
        if "trust_remote_code" in values and not isinstance(values["trust_remote_code"], bool):
            raise ParamError(
                f"{where}.trust_remote_code` must be true or false (a YAML boolean), got "
                f"{values['trust_remote_code']!r}"
            )
        spec = cls(**{**values, "source": str(values["source"])})
        spec.validate(key_prefix)
        return spec

    def validate(self, key_prefix: str = "judge") -> None:
        where = f"params.yaml: `{key_prefix}"
        if self.name not in JUDGE_NAMES:
            raise ParamError(f"{where}.name` must be one of {JUDGE_NAMES}, got {self.name!r}")
        if self.dtype not in DTYPES:
            raise ParamError(f"{where}.dtype` must be one of {DTYPES}, got {self.dtype!r}")
        if self.backend not in JUDGE_BACKENDS:
            raise ParamError(
                f"{where}.backend` must be one of {JUDGE_BACKENDS}, got {self.backend!r}"
            )
        for key in ("batch_size", "max_new_tokens"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ParamError(f"{where}.{key}` must be a whole number, got {value!r}")
            if value is not None and value <= 0:
                raise ParamError(f"{where}.{key}` must be > 0, got {value}")
        if self.name == GUARD and self.format not in GUARD_FORMATS:
            raise ParamError(
                f"{where}.format` must be one of {GUARD_FORMATS} for the guard judge, "
                f"got {self.format!r}"
            )
        if self.name == STRONGREJECT_RUBRIC and self.format not in (None, "strongreject"):
            raise ParamError(
                f"{where}.format` is not used by {STRONGREJECT_RUBRIC}, got {self.format!r}"
            )
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ParamError(f"{where}.threshold` must be a number, got {self.threshold!r}")
        if not 0 < self.threshold <= 1:
            raise ParamError(
                f"{where}.threshold` must lie in (0, 1] (a score of 0 is a refusal), "
                f"got {self.threshold}"
            )
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:
            raise ParamError(f"{where}.memory_budget_gb` must be > 0, got {self.memory_budget_gb}")

    @property
    def new_tokens(self) -> int:
        return self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[self.name]

    def model_spec(self, source: str | None = None) -> ModelSpec:
        return ModelSpec(
            source=source or self.source,
            revision=self.revision,
            dtype=self.dtype,
            chat_template=self.chat_template,
            trust_remote_code=self.trust_remote_code,
        )

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(
            backend=self.backend,
            max_new_tokens=self.new_tokens,
            batch_size=self.batch_size,
            dtype=self.dtype,
        )


# Keys of a `harm.judges` entry that name it and its model; the rest configure the judge.
ENTRY_KEYS = ("name", "judge", "model")


def judge_specs(params: Mapping[str, Any], models_dir: Path) -> dict[str, JudgeModelSpec]:
    """`{name: spec}` of every judge in `harm.judges`, pointed at its model as the
    `prepare_judge_models` stage wrote it under `models_dir`."""
    entries = get(dict(params), "harm.judges", None) or []
    models = get(dict(params), "harm.models", None) or {}
    specs = {}
    for index, entry in enumerate(entries):
        where = f"harm.judges[{index}]"
        missing = [key for key in ENTRY_KEYS if key not in entry]
        if missing:
            raise ParamError(f"params.yaml: `{where}` lacks {', '.join(missing)} ({ENTRY_KEYS})")
        if entry["model"] not in models:
            raise ParamError(
                f"params.yaml: `{where}.model` is {entry['model']!r}, not one of `harm.models` "
                f"({', '.join(models) or 'none'})"
            )
        if entry["name"] in specs:
            raise ParamError(f"params.yaml: `{where}.name` {entry['name']!r} is used twice")
        values = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
        values |= {"name": entry["judge"], "source": str(models_dir / entry["model"])}
        values.setdefault("dtype", models[entry["model"]].get("dtype", "bfloat16"))
        specs[entry["name"]] = JudgeModelSpec.from_params(values, where)
    return specs
