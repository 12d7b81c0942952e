"""The check's settings: the packaged defaults (`data_files/check.yaml`, the `paper` preset's), a
`--params` file's sections over them, and what they name checked: the evaluation sets, the judges
(`Judging`) and the gate (`Gate`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from safetydrift.data.advbench import prepare_advbench
from safetydrift.data.sources import Source
from safetydrift.evaluation_sets import (
    ADVBENCH_SET,
    HARMFUL,
    SETS_KEY,
    EvaluationSet,
    evaluation_set,
    override_sets,
    prepare_prompts,
    set_keys,
)
from safetydrift.generation.prompts import PromptSettings
from safetydrift.harm import judged_classes
from safetydrift.judges import canonical_judge_name, judge_names
from safetydrift.params import ParamError, get, load_params
from safetydrift.response_classes import PARAMS_KEY, RESPONSE_CLASS_JUDGE, ResponseClassSettings

DEFAULTS_FILE = "check.yaml"
# The sections of a params file that a check reads; the rest (training, the grid) it ignores.
SECTIONS = ("prompt", "generation", "refusal", "harm", "report", "data", "evaluations", "check")
# Mappings a params file replaces whole: a set defined anew keeps none of the default's keys (a
# `filter` of the default HarmBench set would otherwise stick to the user's own `harmbench`),
# whether either defines it alone or in a group (`override_sets`).
WHOLE = ("data.advbench",)


class CheckError(ValueError):
    """Input the check cannot use (a flag, a file, a model folder), named with what was expected."""


def default_settings() -> dict[str, Any]:
    text = resources.files("safetydrift").joinpath("data_files", DEFAULTS_FILE).read_text("utf-8")
    return yaml.safe_load(text)


def merge(defaults: Mapping[str, Any], override: Mapping[str, Any], prefix: str = "") -> dict:
    """`override` over `defaults`, mapping by mapping; the mappings of WHOLE are replaced, and
    evaluation sets set by set (`override_sets`)."""
    merged = dict(defaults)
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        whole = dotted in WHOLE
        if dotted == SETS_KEY and isinstance(value, Mapping):
            merged[key] = override_sets(merged.get(key) or {}, value)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) and not whole:
            merged[key] = merge(merged[key], value, f"{dotted}.")
        else:
            merged[key] = value
    return merged


def load_settings(params_path: str | Path | None = None) -> dict[str, Any]:
    """The packaged defaults, with a params file's sections (a preset, params.yaml, or a file of
    just the keys to change) over them."""
    defaults = default_settings()
    if params_path is None:
        return defaults
    params = load_params(params_path)
    read = {key: params[key] for key in SECTIONS if key in params}
    if not read:
        raise CheckError(
            f"--params {params_path}: holds none of the sections a check reads "
            f"({', '.join(SECTIONS)})"
        )
    return merge(defaults, read)


@dataclass(frozen=True)
class CheckSet:
    """One evaluation set as a check runs it: its prompts' source and framing."""

    name: str
    kind: str
    framing: PromptSettings
    spec: EvaluationSet | None = None  # None: AdvBench as `data.advbench` names it
    advbench: Source | None = None

    def prepare(self, out_path: Path) -> dict[str, Any]:
        """Write the set's prompts (`id`, `prompt`) to `out_path` and say what was read."""
        if self.spec is not None:
            return prepare_prompts(self.spec, out_path)
        assert self.advbench is not None
        return {
            "evaluation": self.name,
            "kind": self.kind,
            **prepare_advbench(self.advbench, out_path),
        }


def check_sets(settings: Mapping[str, Any], names: Sequence[str]) -> list[CheckSet]:
    """The named sets: `advbench` (`data.advbench`, framed by `refusal.prompts`) and those of
    `evaluations.sets`, alone or in a group (a check runs sets, never groups); an unknown or
    repeated name is an error listing the known ones."""
    known = [ADVBENCH_SET, *(n for n in set_keys(settings) if n != ADVBENCH_SET)]
    if not names:
        raise CheckError("--evaluations: no set named; known sets: " + ", ".join(known))
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise CheckError(f"--evaluations names {', '.join(repeated)} twice")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CheckError(
            f"--evaluations: unknown set {', '.join(f'`{n}`' for n in unknown)}; known sets: "
            f"{', '.join(known)} (define more under `evaluations.sets` in a --params file)"
        )
    sets = []
    for name in names:
        if name == ADVBENCH_SET:
            advbench = get(dict(settings), "data.advbench")
            if not isinstance(advbench, Mapping) or not advbench.get("source"):
                raise ParamError("params: `data.advbench.source` is required for the set advbench")
            framing = PromptSettings.from_params(get(dict(settings), "refusal.prompts", None))
            source = Source(str(advbench["source"]), advbench.get("revision"))
            sets.append(CheckSet(name, HARMFUL, framing, advbench=source))
        else:
            spec = evaluation_set(settings, name)
            framing = PromptSettings.from_params(dict(spec.framing))
            sets.append(CheckSet(name, spec.kind, framing, spec=spec))
    for s in sets:
        if s.framing.base_suffix:
            raise CheckError(
                f"set `{s.name}`: `base_suffix` {s.framing.base_suffix!r} would give the base "
                "model other prompts than the tuned one; a check asks both the same"
            )
    return sets


@dataclass(frozen=True)
class Judging:
    """How responses are judged: the study's judges and thresholds."""

    keyword_judges: tuple[str, ...]
    refusal_judge: str  # the judge of the gated refusal rate on harmful sets
    class_settings: ResponseClassSettings
    confidence: float
    harm_confidence: float
    judged_classes: tuple[str, ...]

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, Any], refusal_judge: str | None = None
    ) -> Judging:
        settings = dict(settings)
        listed = get(settings, "refusal.judges")
        if not isinstance(listed, list) or not listed:
            raise ParamError(f"params: `refusal.judges` must be a list of judges, got {listed!r}")
        keyword = [canonical_judge_name(str(j)) for j in listed]
        refusal_judge = canonical_judge_name(
            refusal_judge or get(settings, "report.primary_judge", keyword[0])
        )
        known = [*judge_names(), RESPONSE_CLASS_JUDGE]
        for name in [*keyword, refusal_judge]:
            if name not in known:
                raise CheckError(f"unknown refusal judge `{name}`; known: {', '.join(known)}")
        if refusal_judge != RESPONSE_CLASS_JUDGE and refusal_judge not in keyword:
            keyword.append(refusal_judge)
        return cls(
            keyword_judges=tuple(dict.fromkeys(keyword)),
            refusal_judge=refusal_judge,
            class_settings=ResponseClassSettings.from_params(get(settings, PARAMS_KEY, None)),
            confidence=float(get(settings, "refusal.confidence", 0.95)),
            harm_confidence=float(get(settings, "harm.confidence", 0.95)),
            judged_classes=judged_classes(settings),
        )


@dataclass(frozen=True)
class Gate:
    """What fails the check: a gated rate worse at Holm-adjusted p < alpha by more than
    `max_drop`."""

    max_drop: float
    alpha: float
    gate_benign: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.max_drop < 1:
            raise CheckError(f"--max-drop is a rate difference in [0, 1), got {self.max_drop}")
        if not 0 < self.alpha < 0.5:
            raise CheckError(f"--alpha must lie in (0, 0.5), got {self.alpha}")
