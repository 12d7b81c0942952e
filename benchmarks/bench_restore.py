"""How long the grid's restore of one cell takes with a dvc.lock of the study's size: `dvc repro`
from the run-cache writing dvc.lock after every stage, against `safetydrift.grid.lock_once`,
which writes it once.

The project built here has the shape of the `standin` grid's pipeline: CELLS cells of eight
chained stages, each stage depending on 30 source files and its predecessor's output (so each
dvc.lock entry is as long as the study's: 16,043 lines for 14 cells on the H200). Every cell runs
once (filling the run-cache), then the last cell's outputs and lock entries are forgotten and
restored, each way, ROUNDS times.

Run: PYTHONPATH=src python benchmarks/bench_restore.py [--cells 14] [--rounds 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

STAGES = ("train", "gen_refusal", "eval_refusal", "judge_harm", "gen_chrf", "eval_chrf",
          "gen_eval", "judge_eval")  # fmt: skip
SOURCES = 30


def build(root: Path, cells: int) -> list[str]:
    """The project; the names of the last cell's stages."""
    (root / "src").mkdir(parents=True)
    for number in range(SOURCES):
        (root / "src" / f"module_{number}.py").write_text(f"VALUE = {number}\n" * 40)
    # One matrix stage per kind, over the cells, as the study's dvc.yaml has them.
    stages, previous = {}, None
    for stage in STAGES:
        out = f"out/{stage}-${{item.cell}}.txt"
        source = f"open('{previous}').read()" if previous else "''"
        stages[stage] = {
            "matrix": {"cell": [f"cell{cell}" for cell in range(cells)]},
            "cmd": f"python -c \"import os; os.makedirs('out', exist_ok=True); "
            f"open('{out}', 'w').write({source} + '{stage} ')\"",
            "deps": [f"src/module_{n}.py" for n in range(SOURCES)]
            + ([previous] if previous else []),
            "outs": [out],
        }
        previous = out
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=root, check=True)
    return [f"{stage}@cell{cells - 1}" for stage in STAGES]


def forget(root: Path, names: list[str], lock: str) -> None:
    """The last cell as a restore finds it: in the run-cache, not in the workspace or dvc.lock."""
    data = yaml.safe_load(lock)
    for name in names:
        del data["stages"][name]
        (root / data_out(name)).unlink(missing_ok=True)
    (root / "dvc.lock").write_text(yaml.safe_dump(data, sort_keys=False))


def data_out(name: str) -> str:
    stage, cell = name.split("@")
    return f"out/{stage}-{cell}.txt"


def restore(root: Path, module: str, target: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", module, "repro", "-q", target], cwd=root, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=14)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to build (default: a temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        root = Path(directory) / "project"
        names = build(root, args.cells)
        lock = (root / "dvc.lock").read_text()
        times: dict[str, list[float]] = {"dvc": [], "safetydrift.grid.lock_once": []}
        for _ in range(args.rounds):
            for module, seconds in times.items():
                forget(root, names, lock)
                seconds.append(restore(root, module, names[-1]))
                status = subprocess.run([sys.executable, "-m", "dvc", "status", "-q"], cwd=root)
                assert status.returncode == 0, f"{module}: dvc status is not clean"
        result = {
            "cells": args.cells,
            "dvc_lock_lines": lock.count("\n"),
            "restore_seconds": {
                ("dvc repro" if module == "dvc" else "lock_once"): {
                    "median": round(statistics.median(seconds), 2),
                    "all": [round(s, 2) for s in seconds],
                }
                for module, seconds in times.items()
            },
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
