"""Greedy generation speed of the decoding engines on one set of prompts (e.g. AdvBench).

Each engine runs in a fresh process, so that its first pass is really cold (CUDA context, kernel
selection, graph capture or compilation):

- `static`: `safetydrift.fastpaths.decoding.StaticCacheDecoder` (CUDA graphs on a GPU), all
  prompts in one batch unless `--batch-size` says otherwise;
- `eager`: the same loop without CUDA graphs;
- `static-whole`: `static` with rows that stopped kept in the batch until all have (no
  `compact_rows`): what moving the running rows into smaller batches saves;
- `static-unbounded`: `static` keeping every batch shape's cache (no `max_cache_bytes`): with
  `--batch-size`, `--prompt-tokens` and the judge's `--max-new-tokens`, what the budget saves in
  peak memory (`peak GiB`) and costs in time;
- `hf`: transformers' `generate`, all prompts in one left-padded batch, dynamic cache;
- `hf-static`: the same with `cache_implementation="static"` (transformers compiles the step).

Every engine is greedy up to `--max-new-tokens` on the same token ids. Per engine it reports the
cold pass (first in the process), the warm pass (second), a pass after the weights were copied
into the model in place (as the pipeline loads the next checkpoint), and new tokens per second of
the warm pass. It also counts the rows whose output differs from the first engine's: in bfloat16
two correct engines differ on many rows, so this is a number to know, not a check.

    python benchmarks/bench_generation.py --model models/base \
        --prompts ../shared/data/advbench_harmful_behaviors.csv --engines static,hf --out gen.json

On the CPU with a tiny model (`--dtype float32`) it runs in seconds, as a smoke test.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = ("static", "eager", "static-whole", "static-unbounded", "hf", "hf-static")
SYNTHETIC_PROMPTS = 520


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="a Hugging Face model directory")
    parser.add_argument(
        "--prompts",
        type=Path,
        help="JSONL with a `prompt` field, or CSV with a `prompt` or `goal` column "
        f"(default: {SYNTHETIC_PROMPTS} synthetic prompts of random token ids)",
    )
    parser.add_argument("--limit", type=int, help="use only the first N prompts")
    parser.add_argument(
        "--prompt-tokens",
        default="24-72",
        metavar="MIN-MAX",
        help="lengths of the synthetic prompts (default 24-72, about chat-templated AdvBench; "
        "a judge's rubric prompts: 300-1000)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--engines", default="static,hf")
    parser.add_argument("--batch-size", type=int, help="rows per batch (default: all prompts)")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        run_worker(args)
        return

    engines = args.engines.split(",")
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}; choose from {ENGINES}")
    tokenizer = load_tokenizer(args.model)
    shortest, _, longest = args.prompt_tokens.partition("-")
    prompt_ids = encode_prompts(
        tokenizer, args.prompts, args.limit, (int(shortest), int(longest or shortest))
    )
    print(
        f"{len(prompt_ids)} prompts, {min(map(len, prompt_ids))}-{max(map(len, prompt_ids))} "
        f"tokens, up to {args.max_new_tokens} new tokens, {args.dtype}",
        flush=True,
    )

    results = []
    with tempfile.TemporaryDirectory() as work:
        for engine in engines:
            job = Path(work) / f"{engine}.json"
            job.write_text(json.dumps({"prompt_ids": prompt_ids}))
            command = [sys.executable, __file__, "--worker", engine, "--job", str(job)]
            command += ["--model", str(args.model), "--dtype", args.dtype]
            command += ["--max-new-tokens", str(args.max_new_tokens)]
            if args.batch_size:
                command += ["--batch-size", str(args.batch_size)]
            if args.device:
                command += ["--device", args.device]
            subprocess.run(command, check=True)
            results.append(json.loads(job.read_text()))

    reference = results[0]
    for result in results:
        outputs = result.pop("outputs")
        if result is reference:
            reference_outputs = outputs
        result["rows_differing_from_" + reference["engine"]] = sum(
            a != b for a, b in zip(outputs, reference_outputs, strict=True)
        )
        if tokenizer is not None:
            texts = tokenizer.batch_decode(outputs, skip_special_tokens=True)
            if result is reference:
                reference_texts = texts
            result["texts_differing"] = sum(
                a != b for a, b in zip(texts, reference_texts, strict=True)
            )

    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results, reference["engine"])


def print_table(results: list[dict], reference: str) -> None:
    print(
        f"\n{'engine':16} {'load s':>7} {'cold s':>7} {'warm s':>7} {'swap s':>7} "
        f"{'new tok':>8} {'tok/s':>8} {'stops':>6} {'peak GiB':>8} {'diff rows':>9}"
    )
    for r in results:
        print(
            f"{r['engine']:16} {r['load_seconds']:7.2f} {r['cold_seconds']:7.2f} "
            f"{r['warm_seconds']:7.2f} {r['swap_seconds']:7.2f} {r['new_tokens']:8d} "
            f"{r['tokens_per_second']:8.0f} {r['stopped_rows']:6d} "
            f"{r['peak_memory_gib']:8.2f} {r['rows_differing_from_' + reference]:9d}"
        )
    print(
        f"(diff rows: rows whose new tokens differ from {reference}'s; cold: first pass in a "
        "fresh process; swap: after copying the weights in place)"
    )
    for r in results:
        if not r["passes_agree"]:
            print(f"WARNING: {r['engine']} gave different outputs on different passes")


# --------------------------------------------------------------------------------------------
# Prompts


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    # A bare config + weights directory: synthetic prompts only. (transformers 5 builds an empty
    # tokenizer, vocabulary 1, from the config alone rather than failing.)
    if not any((model_dir / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError):
        return None


def encode_prompts(
    tokenizer, path: Path | None, limit: int | None, lengths: tuple[int, int] = (24, 72)
) -> list[list[int]]:
    if path is None:
        rng = random.Random(0)
        vocab = tokenizer.vocab_size if tokenizer is not None else None
        vocab = vocab or 384
        ids = [
            [rng.randrange(3, vocab) for _ in range(rng.randint(*lengths))]
            for _ in range(SYNTHETIC_PROMPTS)
        ]
        return ids[:limit]
    if tokenizer is None:
        raise SystemExit(f"{path}: text prompts need a tokenizer in the model directory")
    texts = read_prompt_texts(path)[:limit]
    if tokenizer.chat_template:
        rendered = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            )
            for t in texts
        ]
        # The chat template already holds the special tokens it wants.
        return [tokenizer(r, add_special_tokens=False)["input_ids"] for r in rendered]
    return [tokenizer(t)["input_ids"] for t in texts]


def read_prompt_texts(path: Path) -> list[str]:
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        column = "prompt" if rows and "prompt" in rows[0] else "goal"
        return [row[column] for row in rows]
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# One engine, in its own process


def run_worker(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    job = json.loads(args.job.read_text())
    prompt_ids = job["prompt_ids"]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=getattr(torch, args.dtype))
    model.to(device).eval()
    synchronize()
    load_seconds = time.perf_counter() - started
    tokenizer = load_tokenizer(args.model)
    eos = stop_ids(model, tokenizer)
    pad = pad_id(model, tokenizer, eos)

    if args.worker in ("static", "eager", "static-whole", "static-unbounded"):
        from safetydrift.fastpaths.decoding import StaticCacheDecoder

        decoder = StaticCacheDecoder(
            model,
            eos_token_ids=eos,
            pad_token_id=pad,
            max_new_tokens=args.max_new_tokens,
            max_batch_size=args.batch_size or len(prompt_ids),
            use_cuda_graphs=args.worker != "eager" and device.type == "cuda",
            **({"max_cache_bytes": None} if args.worker == "static-unbounded" else {}),
            compact_rows=args.worker != "static-whole",
        )

        def one_pass() -> list[tuple[list[int], bool]]:
            return [(d.token_ids, d.finish_reason == "stop") for d in decoder.decode(prompt_ids)]
    else:
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=args.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            cache_implementation="static" if args.worker == "hf-static" else None,
        )

        def one_pass() -> list[tuple[list[int], bool]]:
            return hf_generate(model, config, prompt_ids, args.batch_size, eos, pad, device)

    passes = []
    for name in ("cold", "warm", "swap"):
        if name == "swap":
            # The pipeline's next checkpoint: new values copied into the same tensors.
            state = {k: v.clone() for k, v in model.state_dict().items()}
            model.load_state_dict(state)
        synchronize()
        started = time.perf_counter()
        outputs = one_pass()
        synchronize()
        passes.append((time.perf_counter() - started, outputs))
        print(f"{args.worker}: {name} pass {passes[-1][0]:.2f} s", flush=True)

    warm_seconds, warm = passes[1]
    new_tokens = sum(len(tokens) + stopped for tokens, stopped in warm)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    result = {
        "engine": args.worker,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "prompts": len(prompt_ids),
        "max_new_tokens": args.max_new_tokens,
        "dtype": args.dtype,
        "load_seconds": round(load_seconds, 3),
        "cold_seconds": round(passes[0][0], 3),
        "warm_seconds": round(warm_seconds, 3),
        "swap_seconds": round(passes[2][0], 3),
        "new_tokens": new_tokens,  # stop tokens included: each one took a step
        "tokens_per_second": round(new_tokens / warm_seconds, 1),
        "stopped_rows": sum(stopped for _, stopped in warm),
        "peak_memory_gib": round(peak / 2**30, 2),
        "passes_agree": all(outputs == warm for _, outputs in passes),
        "outputs": [tokens for tokens, _ in warm],
    }
    if args.worker in ("static", "eager", "static-whole", "static-unbounded"):
        from dataclasses import asdict

        # Summed over the three passes: prefill and decode seconds, steps, row-steps.
        result["decoder_stats"] = asdict(decoder.stats)
    args.job.write_text(json.dumps(result))


def hf_generate(model, config, prompt_ids, batch_size, eos, pad, device):
    import torch

    batch_size = batch_size or len(prompt_ids)
    results = []
    for start in range(0, len(prompt_ids), batch_size):
        batch = prompt_ids[start : start + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        with torch.inference_mode():
            output = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        for tokens in output[:, width:].tolist():
            stop = next((i for i, t in enumerate(tokens) if t in eos), None)
            results.append((tokens, False) if stop is None else (tokens[:stop], True))
    return results


def stop_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    for value in (
        model.generation_config.eos_token_id,
        model.config.eos_token_id,
        tokenizer.eos_token_id if tokenizer is not None else None,
    ):
        for token in value if isinstance(value, list) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    return ids


def pad_id(model, tokenizer, eos: list[int]) -> int:
    for value in (
        tokenizer.pad_token_id if tokenizer is not None else None,
        model.config.pad_token_id,
    ):
        if value is not None:
            return int(value)
    return eos[0] if eos else 0


if __name__ == "__main__":
    main()
