"""Evaluation sets beyond AdvBench: what each set is (params `evaluations`) and its prompts.

A model fine-tuned on translation that echoes harmful requests may echo benign ones too: then it
lost instruction following, not (only) safety. So besides harmful sets (HarmBench, StrongREJECT,
AdvBench without the authors' "!") the study runs benign ones, whose prompts a safe and helpful
model answers (what is measured on each: `safetydrift.evaluation_rates`).

AdvBench with "!" is the set `advbench`: `data.advbench` and `refusal.prompts` configure it and
its own stages (`generate_refusal`, `eval_refusal`, `judge_harm`) measure it, as the paper's
headline. Every other set is `evaluations.sets.NAME`, run when `evaluations.run` lists it; its
stages declare only their own set's key, so adding or changing a set reruns no other set.

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

    @classmethod
    def from_params(cls, name: str, values: Any) -> EvaluationSet:
        where = f"params.yaml: `{set_key(name)}"
        if not isinstance(values, Mapping):
            raise ParamError(f"{where}` must be a mapping, got {type(values).__name__}")
        unknown = sorted(set(values) - set(KNOWN_KEYS))
        if unknown:
            raise ParamError(f"{where}` has unknown keys {unknown}; known: {list(KNOWN_KEYS)}")
        for key in ("kind", "source", "prompt_column"):
            if not values.get(key):
                raise ParamError(f"{where}.{key}` is required")
        choice(values["kind"], KINDS, f"{set_key(name)}.kind")
        source = values["source"]
        sources = tuple(str(s) for s in source) if isinstance(source, list) else (str(source),)
        if not sources:
            raise ParamError(f"{where}.source` is an empty list")
        keep = values.get("filter") or {}
        if not isinstance(keep, Mapping):
            raise ParamError(f"{where}.filter` must map a column to a value or a list of values")
        for key in ("prompt_column", "context_column", "id_column", "split", "config"):
            value = values.get(key)
            if value is not None and not isinstance(value, str):
                raise ParamError(f"{where}.{key}` must be text, got {value!r}")
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
        )


def evaluation_names(params: Mapping[str, Any]) -> list[str]:
    """The sets `evaluations.run` lists, each checked to be defined under `evaluations.sets`."""
    run = get(dict(params), RUN_KEY, None)
    if run is None:
        return []
    if not isinstance(run, list) or not all(isinstance(n, str) and n for n in run):
        raise ParamError(f"params.yaml: `{RUN_KEY}` must be a list of set names, got {run!r}")
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


def evaluation_set(params: Mapping[str, Any], name: str) -> EvaluationSet:
    values = get(dict(params), set_key(name), None)
    if values is None:
        raise ParamError(f"params.yaml: no evaluation set `{set_key(name)}`")
    return EvaluationSet.from_params(name, values)


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
    key = f"{set_key(spec.name)}.source"
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
    where = f"params.yaml: `{set_key(spec.name)}`"
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
