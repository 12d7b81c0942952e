"""Evaluation sets beyond AdvBench: what each set is (params `evaluations`) and its prompts.

A model fine-tuned on translation that echoes harmful requests may echo benign ones too: then it
lost instruction following, not (only) safety. So besides harmful sets (HarmBench, StrongREJECT,
AdvBench without the authors' "!") the study runs benign ones, whose prompts a safe and helpful
model answers (what is measured on each: `safetydrift.evaluation_rates`).

AdvBench with "!" is the set `advbench`: `data.advbench` and `refusal.prompts` configure it and
its own stages (`generate_refusal`, `eval_refusal`, `judge_harm`) measure it, as the paper's
headline. Every other set is defined under `evaluations.sets`, and `evaluations.run` lists the
units that run: a unit is a set (`evaluations.sets.NAME: {kind, source, ...}`) or a group of sets
(`evaluations.sets.NAME: {group: {SET: {kind, source, ...}, ...}}`). A unit is one stage per cell:
a group's sets are decoded in one batch by one process that loads the cell's checkpoints once,
and its stages declare only the unit's key, so adding or changing a unit reruns no other unit
(a set in a group reruns with its group; a set listed alone reruns alone).

A set's prompts are read with the project's data readers (`safetydrift.data`: local CSV, JSON
Lines and Parquet files, hub ids with a pinned revision), plus JSON files (a list of objects, or
an object of columns as in safety-tuned-llamas' I-Alpaca.json) and a hub set's configuration.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetydrift.data.sources import (
    DataError,
    Source,
    check_hub_source,
    read_local_table,
    read_source,
    require_columns,
)
from safetydrift.files import read_json, write_jsonl
from safetydrift.params import ParamError, choice, get

HARMFUL = "harmful"
BENIGN = "benign"
KINDS = (HARMFUL, BENIGN)
ADVBENCH_SET = "advbench"
RUN_KEY = "evaluations.run"
SETS_KEY = "evaluations.sets"
GROUP_KEY = "group"  # `evaluations.sets.NAME.group`: a group's member sets
# How each set's prompts are framed: `safetydrift.generation.prompts.PromptSettings`'s fields.
FRAMING_KEYS = ("prefix", "suffix", "base_suffix", "system_prompt", "subset", "subset_seed")
SOURCE_KEYS = ("kind", "source", "revision", "split", "config")
COLUMN_KEYS = ("prompt_column", "context_column", "id_column", "filter")
KNOWN_KEYS = (*SOURCE_KEYS, *COLUMN_KEYS, *FRAMING_KEYS)
# HarmBench puts a contextual behavior's context before it, separated so (its baselines'
# DirectRequest: f"{context_str}\n\n---\n\n{behavior}").
CONTEXT_SEPARATOR = "\n\n---\n\n"

DATA_DIR = Path("data/evaluations")
GENERATIONS_DIR = Path("generations/evaluations")
EVALS_DIR = Path("evals/evaluations")
METRICS_DIR = Path("metrics/evaluations")


def set_key(name: str) -> str:
    return f"{SETS_KEY}.{name}"


def member_key(group: str, name: str) -> str:
    return f"{set_key(group)}.{GROUP_KEY}.{name}"


@dataclass(frozen=True)
class EvaluationSet:
    """One evaluation set from params.yaml: its kind, where its prompts come from, which columns
    hold them, which rows are kept, and how its prompts are framed."""

    name: str
    kind: str
    sources: tuple[str, ...]  # local files (read in order) or one hub id
    prompt_column: str
    revision: str | None = None  # hub ids only; pin a commit sha
    split: str = "train"  # hub ids only
    config: str | None = None  # hub ids only: the data set's configuration
    context_column: str | None = None  # put before the prompt where not empty (HarmBench)
    id_column: str | None = None  # None: row numbers
    filter: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # column -> kept values
    framing: Mapping[str, Any] = field(default_factory=dict)  # PromptSettings values
    key: str = ""  # where params.yaml defines it: `evaluations.sets.NAME[.group.MEMBER]`

    @classmethod
    def from_params(cls, name: str, values: Any, key: str | None = None) -> EvaluationSet:
        key = key or set_key(name)
        where = f"params.yaml: `{key}"
        if not isinstance(values, Mapping):
            raise ParamError(f"{where}` must be a mapping, got {type(values).__name__}")
        unknown = sorted(set(values) - set(KNOWN_KEYS))
        if unknown:
            raise ParamError(f"{where}` has unknown keys {unknown}; known: {list(KNOWN_KEYS)}")
        for required in ("kind", "source", "prompt_column"):
            if not values.get(required):
                raise ParamError(f"{where}.{required}` is required")
        choice(values["kind"], KINDS, f"{key}.kind")
        source = values["source"]
        sources = tuple(str(s) for s in source) if isinstance(source, list) else (str(source),)
        if not sources:
            raise ParamError(f"{where}.source` is an empty list")
        keep = values.get("filter") or {}
        if not isinstance(keep, Mapping):
            raise ParamError(f"{where}.filter` must map a column to a value or a list of values")
        for column in ("prompt_column", "context_column", "id_column", "split", "config"):
            value = values.get(column)
            if value is not None and not isinstance(value, str):
                raise ParamError(f"{where}.{column}` must be text, got {value!r}")
        subset = values.get("subset")
        if subset is not None and (not isinstance(subset, int) or isinstance(subset, bool)):
            raise ParamError(f"{where}.subset` must be a whole number or null, got {subset!r}")
        if subset is not None and subset <= 0:
            raise ParamError(f"{where}.subset` must be > 0, got {subset}")
        return cls(
            name=name,
            kind=values["kind"],
            sources=sources,
            prompt_column=values["prompt_column"],
            revision=values.get("revision"),
            split=values.get("split") or "train",
            config=values.get("config"),
            context_column=values.get("context_column"),
            id_column=values.get("id_column"),
            filter={
                str(column): tuple(str(v) for v in (kept if isinstance(kept, list) else [kept]))
                for column, kept in keep.items()
            },
            framing={k: values[k] for k in FRAMING_KEYS if k in values},
            key=key,
        )


@dataclass(frozen=True)
class EvaluationUnit:
    """An entry of `evaluations.run`: one set, or a group of sets. It is the unit of a stage (one
    per cell), of invalidation (its stages declare its key alone) and of batching (one process
    loads the cell's checkpoints once and decodes every member's prompts together)."""

    name: str
    members: tuple[EvaluationSet, ...]  # a set alone: itself
    grouped: bool

    def metric_prefix(self, member: str) -> str:
        """What a member's MLflow metric names begin with: its name within a group (the unit's
        run holds every member), nothing for a set alone (as before groups)."""
        return f"{member}." if self.grouped else ""


def _is_group(values: Any) -> bool:
    return isinstance(values, Mapping) and GROUP_KEY in values


def _members(unit: str, values: Any) -> dict[str, tuple[str, Any]]:
    """A unit's sets, each with its params key and definition: a group's members (checked to be
    a mapping of sets, not groups), or the set itself."""
    if not _is_group(values):
        return {unit: (set_key(unit), values)}
    where = f"params.yaml: `{set_key(unit)}"
    if set(values) != {GROUP_KEY}:
        others = sorted(set(values) - {GROUP_KEY})
        raise ParamError(
            f"{where}` is a group: `{GROUP_KEY}` must be its only key, got also {others} "
            "(a member's own keys go under its name)"
        )
    group = values[GROUP_KEY]
    if not isinstance(group, Mapping) or not group:
        raise ParamError(
            f"{where}.{GROUP_KEY}` must map member set names to their definitions, got {group!r}"
        )
    members = {}
    for name, member in group.items():
        key = member_key(unit, str(name))
        if _is_group(member):
            raise ParamError(f"params.yaml: `{key}`: a group's members are sets, never groups")
        members[str(name)] = (key, member)
    return members


def set_keys(params: Mapping[str, Any]) -> dict[str, str]:
    """Every set defined under `evaluations.sets`, alone or in a group, and its params key; two
    definitions of one name (a member and a set, two members, a member and a group) are an
    error naming both."""
    defined = get(dict(params), SETS_KEY, None) or {}
    if not isinstance(defined, Mapping):
        raise ParamError(f"params.yaml: `{SETS_KEY}` must map names to sets or groups")
    keys: dict[str, str] = {}
    groups = {str(u): set_key(str(u)) for u, values in defined.items() if _is_group(values)}
    for unit, values in defined.items():
        for name, (key, _) in _members(str(unit), values).items():
            if _is_group(values) and name == ADVBENCH_SET:
                raise ParamError(
                    f"params.yaml: `{key}`: `{ADVBENCH_SET}` is the study's own AdvBench set "
                    "(`data.advbench`, `refusal.prompts`); name a variant otherwise"
                )
            other = keys.get(name) or (groups.get(name) if _is_group(values) else None)
            if other is not None:
                raise ParamError(
                    f"params.yaml: `{other}` and `{key}` both name `{name}`: every set and "
                    "group needs a name of its own (the metrics, the report and `check "
                    "--evaluations` know a set by its name)"
                )
            keys[name] = key
    return keys


def override_sets(defaults: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`evaluations.sets` of `override` over those of `defaults`: a set or group that `override`
    defines replaces the one of that name in `defaults`, wherever `defaults` defines it (alone
    or in a group; a group left with no member goes), so that no name is defined twice."""
    replaced = {*override, *set_keys({"evaluations": {"sets": override}})}
    kept: dict[str, Any] = {}
    for unit, values in defaults.items():
        if unit in replaced:
            continue
        if _is_group(values):
            members = {m: v for m, v in values[GROUP_KEY].items() if m not in replaced}
            if members:
                kept[unit] = {GROUP_KEY: members}
        else:
            kept[unit] = values
    return {**kept, **override}


def evaluation_names(params: Mapping[str, Any]) -> list[str]:
    """The units (sets and groups) `evaluations.run` lists, each checked to be defined under
    `evaluations.sets`: the names of their stages (`generate_evaluation@UNIT-CELL`)."""
    run = get(dict(params), RUN_KEY, None)
    if run is None:
        return []
    if not isinstance(run, list) or not all(isinstance(n, str) and n for n in run):
        raise ParamError(
            f"params.yaml: `{RUN_KEY}` must be a list of set or group names, got {run!r}"
        )
    repeated = sorted({n for n in run if run.count(n) > 1})
    if repeated:
        raise ParamError(f"params.yaml: `{RUN_KEY}` lists {', '.join(repeated)} twice")
    if ADVBENCH_SET in run:
        raise ParamError(
            f"params.yaml: `{RUN_KEY}`: `{ADVBENCH_SET}` is the study's own AdvBench set "
            "(`data.advbench`, `refusal.prompts`), always run; name a variant otherwise"
        )
    defined = get(dict(params), SETS_KEY, None) or {}
    missing = [n for n in run if n not in defined]
    if missing:
        raise ParamError(
            f"params.yaml: `{RUN_KEY}` names {', '.join(missing)}, not defined under "
            f"`{SETS_KEY}` ({', '.join(defined) or 'none'})"
        )
    return list(run)


def evaluation_unit(params: Mapping[str, Any], name: str) -> EvaluationUnit:
    """The unit `evaluations.sets.NAME`: a set alone, or a group and its member sets."""
    values = get(dict(params), set_key(name), None)
    if values is None:
        raise ParamError(f"params.yaml: no evaluation set or group `{set_key(name)}`")
    set_keys(params)  # a member's name clashing with another set's is refused here too
    members = tuple(
        EvaluationSet.from_params(member, definition, key)
        for member, (key, definition) in _members(name, values).items()
    )
    return EvaluationUnit(name, members, _is_group(values))


def evaluation_set(params: Mapping[str, Any], name: str) -> EvaluationSet:
    """The set NAME wherever `evaluations.sets` defines it: alone or as a group's member."""
    key = set_keys(params).get(name)
    if key is None:
        raise ParamError(f"params.yaml: no evaluation set `{name}` under `{SETS_KEY}`")
    return EvaluationSet.from_params(name, get(dict(params), key), key)


def run_sets(params: Mapping[str, Any]) -> list[EvaluationSet]:
    """Every set that runs: the members of each unit of `evaluations.run`, in order."""
    return [s for unit in evaluation_names(params) for s in evaluation_unit(params, unit).members]


def unit_results(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each member set's results in a unit's metrics/evaluations/UNIT/CELL.json (a set alone:
    one member, itself)."""
    return dict(metrics["sets"])


# --------------------------------------------------------------------------------------------
# Prompts


def read_json_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON file: a list of objects, or an object of columns (lists of one length; an
    empty list is a column the file leaves unused, as I-Alpaca's `inputs`)."""
    data = read_json(path)
    if isinstance(data, list):
        for number, row in enumerate(data, start=1):
            if not isinstance(row, dict):
                raise DataError(f"{path}, row {number}: expected a JSON object")
        return data
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a list of objects or an object of columns")
    columns = {}
    for name, values in data.items():
        if not isinstance(values, list):
            raise DataError(f"{path}: column `{name}` is not a list")
        if values:
            columns[name] = values
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{path}: columns of different lengths ({lengths})")
    size = next(iter(lengths.values()), 0)
    return [{name: values[i] for name, values in columns.items()} for i in range(size)]


def read_set_source(spec: EvaluationSet, location: str) -> list[dict[str, Any]]:
    """The rows of one of the set's sources."""
    key = f"{spec.key}.source"
    source = Source(location, spec.revision)
    if location.endswith(".json"):
        return read_json_table(Path(location))
    if source.is_local:
        if not Path(location).exists():
            raise DataError(f"params.yaml: `{key}`: {location}: no such file")
        return read_local_table(Path(location))
    if spec.config is None:
        return read_source(source, split=spec.split, key=key)
    # A hub set with several configurations (HarmBench: standard, contextual, copyright).
    # datasets takes ~1 s to import, and the report stage imports this module without reading sets.
    import datasets

    check_hub_source(location, spec.revision, "dataset", key)
    try:
        dataset = datasets.load_dataset(
            location, spec.config, revision=spec.revision, split=spec.split
        )
    except (OSError, ValueError) as error:
        raise DataError(f"params.yaml: `{key}` {location!r}: cannot be loaded ({error})") from None
    return dataset.to_list()


def prompt_rows(
    spec: EvaluationSet, rows: Sequence[Mapping[str, Any]], where: str, offset: int = 0
) -> list[dict[str, Any]]:
    """`{id, prompt}` of the rows that `filter` keeps; the context (where the row has one) before
    the prompt. Without an id column a row's id is its number (from 0, after `offset` rows of
    earlier sources). A missing column or an empty prompt names the file and the row."""
    named = [spec.prompt_column, spec.context_column, spec.id_column, *spec.filter]
    require_columns(rows, [c for c in dict.fromkeys(named) if c], where)
    out = []
    for number, row in enumerate(rows, start=1):
        if any(str(row[c]) not in kept for c, kept in spec.filter.items()):
            continue
        prompt = row[spec.prompt_column]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}, row {number}: empty `{spec.prompt_column}`")
        prompt = prompt.strip()
        context = row[spec.context_column] if spec.context_column else None
        if context is not None and not isinstance(context, str):
            raise DataError(f"{where}, row {number}: `{spec.context_column}` is not text")
        if context and context.strip():
            prompt = f"{context.strip()}{CONTEXT_SEPARATOR}{prompt}"
        row_id = row[spec.id_column] if spec.id_column else offset + number - 1
        out.append({"id": row_id, "prompt": prompt})
    return out


def load_prompts(spec: EvaluationSet) -> list[dict[str, Any]]:
    """The set's prompts from its sources, in order; no prompt left, or an id that repeats, is
    an error naming the set."""
    prompts: list[dict[str, Any]] = []
    offset = 0
    for location in spec.sources:
        rows = read_set_source(spec, location)
        prompts += prompt_rows(spec, rows, location, offset)
        offset += len(rows)
    where = f"params.yaml: `{spec.key}`"
    if not prompts:
        raise DataError(
            f"{where}: no rows left from {', '.join(spec.sources)} (filter {dict(spec.filter)})"
        )
    counts = Counter(str(p["id"]) for p in prompts)
    repeated = [i for i, n in counts.items() if n > 1]
    if repeated:
        raise DataError(f"{where}: `id_column` {spec.id_column} repeats {', '.join(repeated[:5])}")
    return prompts


def prepare_prompts(spec: EvaluationSet, out_path: Path) -> dict[str, Any]:
    """Write the set's prompts (`id`, `prompt`) and say what was read."""
    prompts = load_prompts(spec)
    write_jsonl(out_path, prompts)
    described = [Source(s, spec.revision).describe() for s in spec.sources]
    return {"evaluation": spec.name, "kind": spec.kind, "sources": described, "rows": len(prompts)}


def prepare_unit(unit: EvaluationUnit, out_path: Path) -> dict[str, Any]:
    """Write every member's prompts (`id`, `prompt`, `set`: the member's name) in member order
    and say what was read, per member."""
    rows, members = [], {}
    for spec in unit.members:
        prompts = load_prompts(spec)
        rows += [{**p, "set": spec.name} for p in prompts]
        members[spec.name] = {
            "kind": spec.kind,
            "sources": [Source(s, spec.revision).describe() for s in spec.sources],
            "rows": len(prompts),
        }
    write_jsonl(out_path, rows)
    return {"evaluation": unit.name, "sets": members, "rows": len(rows)}
