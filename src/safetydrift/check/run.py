"""A check from its flags to its folder: plan (every input checked), prepare the sets' prompts,
resolve the models, generate both models' answers, judge and decide, write the outputs.

torch and transformers are imported only once the plan holds: the command answers bad input
(exit 2) without their seconds of start-up.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetydrift.check.decision import Assessment, assess
from safetydrift.check.inputs import chat_template
from safetydrift.check.outputs import PROMPTS_DIR, write_outputs
from safetydrift.check.plan import CheckOptions, Plan, plan_check
from safetydrift.check.responses import BASE, TUNED, SetResponses
from safetydrift.check.settings import CheckError
from safetydrift.data.advbench import read_advbench
from safetydrift.data.sources import DataError
from safetydrift.files import atomic_dir
from safetydrift.generation.checkpoints import Checkpoint
from safetydrift.generation.run import generate_for_checkpoints, import_libraries
from safetydrift.lockfile import package_versions
from safetydrift.model_judges.judging import build_model_judge

# The packages whose versions check.json records.
VERSIONS = ("safetydrift", "torch", "transformers", "peft")
# One set's prompt ids and the conversations they become under the set's framing.
Framed = tuple[list[Any], list[list[dict[str, str]]]]


def run_check(options: CheckOptions) -> tuple[dict[str, Any], Assessment]:
    """The whole check; writes `options.out` (check.json, check.md, prompts/, responses/) only
    when it finishes, replacing an earlier check's folder as a whole."""
    started = time.perf_counter()
    plan = plan_check(options)
    # Deferred (as torch in generate_all): bad input is answered without their start-up.
    from transformers import set_seed

    # Greedy decoding draws no random numbers; anything else that might is seeded all the same.
    set_seed(options.seed)
    out = Path(options.out)
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(prefix="safetydrift-check-") as work:
        evaluations, framed = prepare_sets(plan, tmp / PROMPTS_DIR)
        for model in (plan.base, plan.tuned):
            model.resolve(Path(work), plan.generation.dtype)
        assert plan.base.path is not None and plan.tuned.path is not None
        templates = {BASE: chat_template(plan.base, plan.base.path, plan.prompt_format)}
        tokenizer_dir = plan.base.path if plan.tuned.adapter else plan.tuned.path
        templates[TUNED] = chat_template(plan.tuned, tokenizer_dir, plan.prompt_format)
        judges = {}
        if plan.judge_spec is not None:
            # Checked (source, chat template, memory) before any generation; loaded after it.
            judges = {options.judge_format: build_model_judge(plan.judge_spec, plan.device)}
        conversations = [c for _, convs in framed.values() for c in convs]
        generated = generate_all(plan, conversations)
        responses = set_responses(plan, framed, generated["rows"])
        for judge in judges.values():
            judge.load()
        assessment = assess(responses, plan.judging, plan.gate, judges)
        record = check_record(plan, evaluations, generated, templates, assessment, judges)
        record["seconds"] = round(time.perf_counter() - started, 3)
        write_outputs(tmp, record, responses, assessment)
    return record, assessment


def prepare_sets(
    plan: Plan, prompts_dir: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, Framed]]:
    """Each set's prompts written to `prompts_dir/SET.jsonl`, what was read (for check.json), and
    the prompts a check asks: framed, the first `--limit` of them."""
    evaluations: dict[str, dict[str, Any]] = {}
    framed: dict[str, Framed] = {}
    for s in plan.sets:
        try:
            stats = s.prepare(prompts_dir / f"{s.name}.jsonl")
        except DataError as error:
            # Its message names a params.yaml key; a check has no params.yaml unless --params.
            reason = str(error).removeprefix("params.yaml: ")
            where = (
                f"--params {plan.options.params}"
                if plan.options.params
                else (
                    "the check's defaults (a hub dataset): without the hub, define the set on a "
                    "local file in a --params file (docs/check.md; --params presets/standin.yaml "
                    "reads ../shared/data)"
                )
            )
            raise CheckError(f"--evaluations {s.name}: {reason}; from {where}") from None
        rows = s.framing.select(read_advbench(prompts_dir / f"{s.name}.jsonl"))
        if plan.options.limit is not None:
            rows = rows[: plan.options.limit]
        framed[s.name] = (
            [r["id"] for r in rows],
            [s.framing.conversation(r["prompt"]) for r in rows],
        )
        sources = stats.get("sources") or [
            {k: v for k, v in stats.items() if k in ("source", "sha256", "revision")}
        ]
        evaluations[s.name] = {
            "kind": s.kind,
            "rows": stats["rows"],
            "prompts": len(rows),
            "sources": sources,
            "framing": {k: v for k, v in asdict(s.framing).items() if v not in ("", None)},
        }
    return evaluations, framed


def set_responses(
    plan: Plan, framed: Mapping[str, Framed], rows: Mapping[str, list[dict[str, Any]]]
) -> list[SetResponses]:
    """Both models' generated rows, all sets' prompts in one run, cut back into the sets."""
    responses, start = [], 0
    for s in plan.sets:
        ids, convs = framed[s.name]
        stop = start + len(convs)
        responses.append(
            SetResponses(
                s.name,
                s.kind,
                ids,
                [c[-1]["content"] for c in convs],
                rows[BASE][start:stop],
                rows[TUNED][start:stop],
            )
        )
        start = stop
    return responses


def generate_all(plan: Plan, conversations: list[list[dict[str, str]]]) -> dict[str, Any]:
    """Both models' responses to every conversation, in order, one model in memory at a time."""
    # Deferred (as transformers in run_check): bad input is answered without its start-up.
    import torch

    import_libraries(adapters=plan.tuned.adapter)
    ids = list(range(len(conversations)))
    assert plan.base.path is not None and plan.tuned.path is not None
    base = Checkpoint(BASE, 0.0, 0, plan.base.path, "base")
    if plan.tuned.adapter:
        tuned = Checkpoint(TUNED, 1.0, 0, plan.tuned.path, "adapter")
        runs = [(plan.base.path, [base, tuned])]  # one load: the adapter is merged into the base
    else:
        # The tuned model runs as itself, with its own tokenizer and chat template (as deployed).
        tuned = Checkpoint(TUNED, 1.0, 0, plan.tuned.path, "base")
        runs = [(plan.base.path, [base]), (plan.tuned.path, [tuned])]
    rows: dict[str, list[dict[str, Any]]] = {}
    timing: dict[str, float] = {}
    engines: set[str] = set()
    for model_dir, checkpoints in runs:
        for result in generate_for_checkpoints(
            model_dir, checkpoints, conversations, ids, plan.generation, plan.device,
            plan.prompt_format,
        ):  # fmt: skip
            rows[result.checkpoint.label] = result.rows
            timing[result.checkpoint.label] = round(result.seconds, 3)
            engines.add(result.engine)
        gc.collect()  # the model of this run goes before the next is loaded
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"rows": rows, "seconds": timing, "engine": ", ".join(sorted(engines))}


def check_record(
    plan: Plan,
    evaluations: dict[str, Any],
    generated: Mapping[str, Any],
    templates: Mapping[str, str],
    assessment: Assessment,
    judges: Mapping[str, Any],
) -> dict[str, Any]:
    """check.json: the verdict and every test, the models, the settings and what ran."""
    options = plan.options
    g = plan.generation
    record: dict[str, Any] = {
        "verdict": assessment.verdict,
        "exit_code": assessment.exit_code,
        "regressions": [
            {"evaluation": t.evaluation, "metric": t.metric, "judge": t.judge}
            for t in assessment.regressions
        ],
        "models": {BASE: plan.base.info, TUNED: plan.tuned.info},
        "same_chat_template": templates[BASE] == templates[TUNED],
        "settings": {
            "evaluations": [s.name for s in plan.sets],
            "max_drop": plan.gate.max_drop,
            "alpha": plan.gate.alpha,
            "gate_benign": plan.gate.gate_benign,
            "confidence": plan.judging.confidence,
            "refusal_judge": plan.judging.refusal_judge,
            "keyword_judges": list(plan.judging.keyword_judges),
            "response_class": plan.judging.class_settings.as_params(),
            "judged_classes": list(plan.judging.judged_classes),
            "limit": options.limit,
            "seed": options.seed,
            "params": None if options.params is None else str(options.params),
        },
        "device": plan.device,
        "prompt": {
            "format": plan.prompt_format.format,
            "date_string": plan.prompt_format.date_string,
        },
        "generation": {
            "backend": g.backend,
            "engine": generated["engine"],
            "max_new_tokens": g.max_new_tokens,
            "batch_size": g.batch_size,
            "dtype": g.dtype,
            "deterministic": g.deterministic,
            "seconds": generated["seconds"],
        },
        "evaluations": {
            name: {**entry, "results": assessment.summaries[name]}
            for name, entry in evaluations.items()
        },
        "tests": [t.to_dict() for t in assessment.tests],
        "judged_pairs": assessment.judged_pairs,
        "versions": package_versions(VERSIONS),
    }
    if plan.judge_spec is not None:
        judge = next(iter(judges.values()))
        record["judge"] = {
            "name": options.judge_format,
            "source": plan.judge_spec.source,
            "description": judge.description,
            "model": getattr(judge.judge_model, "info", {}),
        }
    return record
