"""How long the report's paired chrF tests take for a grid of the `standin` study's size.

The report tests every checkpoint's chrF against the base model's, and every two methods' at the
same learning rate and checkpoint, by a paired bootstrap over the same test sentences
(`safetydrift.report.paired.paired_tests`, `report.paired_resamples` resamples). On the H200
(`reports/standin/`) the whole report stage took 168 s, after every cell had finished: the grid's
last step.

The translations here are made from the stand-in data's test-sized slice: the references are
its preferred translations and each system's hypotheses drop a share of each reference's words,
a share that differs by system, so every system has its own sentence statistics, as the
grid's checkpoints do. What is timed is `paired_tests`, as the report calls it, for chrF alone
(no refusal or harm files: those tests are not made).

Run: PYTHONPATH=src python benchmarks/bench_report_chrf.py [--sentences 975] [--resamples 10000]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from safetydrift.cells import BASE_CELL, Cell, checkpoint_label
from safetydrift.compare.pairing import Settings
from safetydrift.report.paired import BASE_CHECKPOINT, PromptOutcomes, paired_tests

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mtpref-standin.jsonl"


def translations(references: list[str], keep: float, seed: int) -> dict[int, tuple[str, str]]:
    draw = random.Random(seed)
    return {
        number: (" ".join(w for w in reference.split() if draw.random() < keep), reference)
        for number, reference in enumerate(references)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=975, help="test sentences (standin: 975)")
    parser.add_argument("--resamples", type=int, default=10000, help="report.paired_resamples")
    parser.add_argument("--methods", default="full,lora,qlora,dpo")
    parser.add_argument("--rates", default="1e-4,5e-5,1e-5,5e-6")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()

    with args.data.open(encoding="utf-8") as lines:
        rows = [json.loads(line) for line, _ in zip(lines, range(args.sentences), strict=False)]
    references = [row["chosen"] for row in rows]
    cells = [
        Cell(method, float(rate), 42)
        for method in args.methods.split(",")
        for rate in args.rates.split(",")
    ]
    fractions = (0.25, 0.5, 0.75, 1.0)
    outcomes = PromptOutcomes()
    outcomes.translations[(BASE_CELL, BASE_CHECKPOINT)] = translations(references, 0.5, 0)
    for number, (cell, fraction) in enumerate(
        (cell, fraction) for cell in cells for fraction in fractions
    ):
        keep = 0.55 + 0.4 * (number % 17) / 17
        key = (cell.name, checkpoint_label(fraction))
        outcomes.translations[key] = translations(references, keep, number + 1)

    settings = Settings(n_resamples=args.resamples, seed=0)
    started = time.perf_counter()
    tests = paired_tests(outcomes, cells, fractions, settings, "keywords", None)
    seconds = time.perf_counter() - started
    chrf_tests = tests.family_size("chrf")
    print(
        json.dumps(
            {
                "sentences": len(references),
                "systems": len(outcomes.translations),
                "chrf_tests": chrf_tests,
                "resamples": args.resamples,
                "seconds": round(seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
