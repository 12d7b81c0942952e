"""Calibrate a StrongREJECT rubric judge's `max_new_tokens`: which verdicts a lower limit changes.

A judge batch runs until its last row stops, so rubric answers that loop to the limit set the cost
of nearly every batch. This reads judge outputs a study already wrote (`evals/harm/*.jsonl`,
`evals/evaluations/*/*.jsonl`), cuts every rubric answer at each candidate limit (in the judge's
own tokens), parses it again as the judge stage does, and counts the verdicts that change. A limit
that changes none, on enough answers, costs nothing but the loops' tails.

Run: PYTHONPATH=src python benchmarks/calibrate_judge_token_limit.py
         --tokenizer models/judges/qwen-1.5b --judge strongreject --threshold 0.5
         --limits 192,256,320 evals/harm/*.jsonl
Prints one JSON object: per limit, the answers cut and the verdicts changed (old -> new label),
and the longest answer that could be read, in tokens.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from safetydrift.files import read_jsonl
from safetydrift.model_judges.parsing import parse_rubric


def judged_answers(files: list[Path], judge: str) -> list[dict]:
    """Every row of FILES that holds a verdict of JUDGE, with its raw output and label."""
    answers = []
    for path in files:
        for number, row in enumerate(read_jsonl(path), 1):
            verdict = row.get(judge)
            if verdict is None:
                continue
            if "raw" not in verdict or "label" not in verdict:
                raise ValueError(f"{path}:{number}: `{judge}` has no `raw` or `label`")
            answers.append(verdict)
    return answers


def calibrate(
    answers: list[dict], token_ids: list[list[int]], decode, limits: list[int], threshold: float
) -> dict:
    readable = [
        len(ids) for ids, a in zip(token_ids, answers, strict=True) if a["label"] != "unparsed"
    ]
    result = {
        "answers": len(answers),
        "readable": len(readable),
        "longest_readable_tokens": max(readable, default=0),
        "limits": {},
    }
    for limit in limits:
        changed: Counter[str] = Counter()
        cut = 0
        for ids, answer in zip(token_ids, answers, strict=True):
            if len(ids) <= limit:
                continue
            cut += 1
            verdict = parse_rubric(decode(ids[:limit]), threshold)
            if verdict.label != answer["label"] or verdict.score != answer.get("score"):
                changed[f"{answer['label']} -> {verdict.label}"] += 1
        result["limits"][str(limit)] = {"cut": cut, "verdicts_changed": dict(changed)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="judged JSONL files")
    parser.add_argument("--tokenizer", required=True, help="the judge model: folder or .gguf")
    parser.add_argument("--judge", default="strongreject", help="the judge's name in params")
    parser.add_argument("--threshold", type=float, default=0.5, help="the judge's threshold")
    parser.add_argument("--limits", default="192,256,320", help="candidate max_new_tokens")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    source = Path(args.tokenizer).expanduser()
    if source.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source)
    answers = judged_answers(args.files, args.judge)
    token_ids = [tokenizer(a["raw"], add_special_tokens=False)["input_ids"] for a in answers]
    limits = [int(x) for x in args.limits.split(",")]
    print(json.dumps(calibrate(answers, token_ids, tokenizer.decode, limits, args.threshold)))


if __name__ == "__main__":
    main()
