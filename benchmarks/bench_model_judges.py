"""How long a model judge of harm takes for one cell: its checkpoints' saved responses, judged.

A cell has several checkpoints (four in the study) of the same 520 AdvBench requests. The judge
model is checked and loaded once, then every checkpoint's rows are judged in one batched, greedy,
length-sorted `judge_batch`; finally all checkpoints' rows together in one call, the other way a
stage could do it. Rows come from a generations JSONL (`prompt`, `response`, as the refusal stage
writes them; `--checkpoints` copies of it stand for the checkpoints), or from AdvBench requests with
synthetic responses (even rows: AdvBench's `target` opening and a long, generic body; odd rows: a
refusal).

    python benchmarks/bench_model_judges.py --judge strongreject-rubric --source models/judge \
        --advbench ../shared/data/advbench_harmful_behaviors.csv --backend static --out judge.json
    python benchmarks/bench_model_judges.py --judge guard --format llama-guard --source ... \
        --rows generations/cell/ckpt-100.jsonl --max-new-tokens 8

It prints the seconds of checks, loading and each call, seconds per 520 rows, seconds per cell,
and how many outputs were unparsed or cut off by --max-new-tokens (raise it if the rubric's are).
A `.gguf` source is dequantized on load: prepare it once with `prepare_judge_model` (as the
pipeline would) to time the judging alone; --prepare-to DIR does that here first.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

from safetydrift.model_judges.judging import build_model_judge
from safetydrift.model_judges.loading import prepare_judge_model
from safetydrift.model_judges.spec import JUDGE_NAMES, JudgeModelSpec
from safetydrift.model_judges.verdicts import harm_summary

ADVBENCH_ROWS = 520
REFUSAL = "I'm sorry, but I can't help with that. It could cause serious harm to people."
BODY = (
    ". Here is an overview of the steps involved. First, gather the materials and tools that "
    "are listed below and make sure that you understand each of them. Second, prepare the "
    "setting carefully, following the order given, and check every part before going on. "
    "Third, carry out the main procedure step by step, writing down what happens at each stage "
    "so that it can be repeated. Finally, review the outcome and adjust the earlier steps where "
    "the result was not as expected; repeat until it works reliably."
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--judge", required=True, choices=JUDGE_NAMES)
    parser.add_argument("--format", help="guard: llama-guard or harmbench")
    parser.add_argument("--source", required=True, help="hub id, model directory or .gguf file")
    parser.add_argument("--revision")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--backend", default="static", choices=("static", "hf"))
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--max-new-tokens", type=int, help="default: the judge's own default")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--rubric-dir", default="../shared/data/strongreject")
    parser.add_argument("--chat-template", help="for a judge model without one")
    rows = parser.add_mutually_exclusive_group(required=True)
    rows.add_argument("--rows", type=Path, help="generations JSONL with prompt and response")
    rows.add_argument("--advbench", type=Path, help="AdvBench CSV (goal, target)")
    parser.add_argument("--limit", type=int, help="use only the first N rows")
    parser.add_argument("--checkpoints", type=int, default=4, help="checkpoints in a cell")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--prepare-to", type=Path, help="dequantize/save the judge here first")
    parser.add_argument(
        "--keep-stopped-rows",
        action="store_true",
        help="static backend: rows that stopped stay in the batch (as before `compact_rows`)",
    )
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()

    prompts, responses = read_rows(args)
    values = {
        "name": args.judge,
        "source": args.source,
        "revision": args.revision,
        "dtype": args.dtype,
        "backend": args.backend,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "threshold": args.threshold,
        "chat_template": args.chat_template,
        "format": args.format,
    }
    if args.judge == "strongreject-rubric":
        values["rubric_dir"] = args.rubric_dir
    spec = JudgeModelSpec.from_params(values, "bench")
    result: dict = {"judge": args.judge, "format": args.format, "source": args.source}
    if args.prepare_to:
        started = time.perf_counter()
        prepare_judge_model(spec, args.prepare_to)
        result["prepare_seconds"] = time.perf_counter() - started
        spec = JudgeModelSpec.from_params({**values, "source": str(args.prepare_to)}, "bench")
        print(f"prepared {args.source} into {args.prepare_to}: {result['prepare_seconds']:.1f} s")

    started = time.perf_counter()
    judge = build_model_judge(spec, args.device)
    result["check_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    judge.load()
    result["load_seconds"] = time.perf_counter() - started
    engine = judge.judge_model.engine
    engine.settings = replace(engine.settings, compact_rows=not args.keep_stopped_rows)
    result["compact_rows"] = engine.settings.compact_rows
    print(
        f"{len(prompts)} rows x {args.checkpoints} checkpoints, {spec.backend}, {spec.dtype}, "
        f"up to {spec.new_tokens} new tokens; checks {result['check_seconds']:.1f} s, "
        f"load {result['load_seconds']:.1f} s",
        flush=True,
    )
    calls = []
    for checkpoint in range(args.checkpoints):
        started = time.perf_counter()
        verdicts = judge.judge_batch(prompts, responses)
        calls.append(
            describe(
                f"checkpoint {checkpoint}",
                verdicts,
                time.perf_counter() - started,
                decoding(engine),
            )
        )
    started = time.perf_counter()
    together = judge.judge_batch(prompts * args.checkpoints, responses * args.checkpoints)
    calls.append(
        describe(
            "all checkpoints in one call", together, time.perf_counter() - started, decoding(engine)
        )
    )
    per_checkpoint = [c["seconds"] for c in calls[:-1]]
    # The first call carries graph capture and kernel selection; a stage pays it once a cell.
    result.update(
        calls=calls,
        rows=len(prompts),
        checkpoints=args.checkpoints,
        cell_seconds_per_checkpoint_calls=sum(per_checkpoint),
        cell_seconds_one_call=calls[-1]["seconds"],
        summary=harm_summary(verdicts),
    )
    print(
        f"cell ({args.checkpoints} x {len(prompts)} rows): {sum(per_checkpoint):.1f} s as one "
        f"call per checkpoint, {calls[-1]['seconds']:.1f} s as one call "
        f"(+ {result['load_seconds']:.1f} s loading)"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")


def decoding(engine) -> dict | None:
    """The static decoder's prefill and decode seconds, steps and row-steps of the last call
    (None for the hf backend); each call's are the difference of the running sums."""
    decoder = getattr(engine, "_decoder", None)
    if decoder is None:
        return None
    now = asdict(decoder.stats)
    before = getattr(engine, "_bench_stats", {key: 0 for key in now})
    engine._bench_stats = now
    return {key: round(now[key] - before[key], 3) for key in now}


def describe(what: str, verdicts, seconds: float, stats: dict | None = None) -> dict:
    labels = Counter(v.label for v in verdicts)
    cut = sum(1 for v in verdicts if v.finish_reason == "length")
    per_520 = seconds / len(verdicts) * ADVBENCH_ROWS
    print(
        f"{what}: {seconds:.2f} s, {per_520:.2f} s per {ADVBENCH_ROWS} rows; "
        f"labels {dict(labels)}; cut at max_new_tokens: {cut}; decoder {stats}",
        flush=True,
    )
    return {
        "decoder": stats,
        "what": what,
        "rows": len(verdicts),
        "seconds": seconds,
        "seconds_per_520_rows": per_520,
        "labels": dict(labels),
        "cut_at_max_new_tokens": cut,
        "example_raw": verdicts[0].raw if verdicts else None,
    }


def read_rows(args) -> tuple[list[str], list[str]]:
    if args.rows:
        with args.rows.open(encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        missing = [i for i, r in enumerate(records) if "prompt" not in r or "response" not in r]
        if missing:
            raise SystemExit(f"{args.rows}: row {missing[0]} lacks `prompt` or `response`")
        records = records[: args.limit]
        return [r["prompt"] for r in records], [r["response"] for r in records]
    with args.advbench.open(newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))[: args.limit]
    if not records or not {"goal", "target"} <= set(records[0]):
        raise SystemExit(f"{args.advbench}: expected the columns goal and target")
    prompts = [r["goal"] for r in records]
    responses = [
        r["target"] + BODY if index % 2 == 0 else REFUSAL for index, r in enumerate(records)
    ]
    return prompts, responses


if __name__ == "__main__":
    main()
