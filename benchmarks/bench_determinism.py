"""How far two same-seed runs of one cell move apart: the fast path, and `deterministic: true`.

For each method at one learning rate, trains the cell twice with the params file's settings (the
fast path: compiled blocks, CUDA graphs, fused kernels, as configured) and, with
`--deterministic`, twice more with `train.deterministic` and `generation.deterministic` on. Each
run is a fresh process, as a DVC stage is (CUDA, cuBLAS and the compile caches start cold), and
calls the project's own `train_cell` and `generate_for_checkpoints`; the final checkpoint then
answers the AdvBench prompts (judged by the keyword judge `report.primary_judge`) and translates
the MT-Pref test sentences (corpus chrF). For each method and mode the two runs are compared:

- `loss_max_abs_difference`: the largest difference between their per-step training losses;
- `final_loss`: each run's last logged loss;
- `refusal_rate`, `refusal_difference`, `refusal_disagreements` (prompts refused by one run
  only) and `response_disagreements` (prompts whose response text differs);
- `class_counts` and `class_disagreements`: each run's response classes (`refusal.response_class`)
  and the prompts whose class differs between the runs;
- `chrf`, `chrf_difference`, `translation_disagreements` (skipped with `--chrf-sentences 0`).

Run it in a prepared workspace (`dvc repro prepare_mtpref prepare_advbench prepare_model`):

    python benchmarks/bench_determinism.py --out bench-determinism.json --deterministic

`--steps N` (or `--train-rows N`) caps training at the first N optimizer steps' rows;
`--prompts N` and `--chrf-sentences N` take the first N prompts and sentences. Every run's
responses are kept under `--out`'s folder (`determinism-runs/`). Harmful-answer rates need the
judge models, which need the GPU that training had: once the workspace has them (`dvc repro
prepare_judge_models`), a second call judges the kept runs with `harm.judges`, as `judge_harm`
does, and adds `harm` to each comparison (each run's harmful-answer rate, and the prompts harmful
in one run only):

    python benchmarks/bench_determinism.py --out bench-determinism.json --judge-runs
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from safetydrift.determinism import CUBLAS_WORKSPACE_CONFIG

MODES = ("fast", "deterministic")


# --------------------------------------------------------------------------------------------
# One run, in its own process


def run_once(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one cell, then generate and judge at its final checkpoint; what both runs compare."""
    from safetydrift.data.advbench import read_advbench
    from safetydrift.data.mtpref import read_pairs
    from safetydrift.generation.checkpoints import list_checkpoints
    from safetydrift.generation.prompts import PromptSettings
    from safetydrift.generation.run import generate_for_checkpoints
    from safetydrift.generation.settings import GenerationSettings
    from safetydrift.judges import judge_responses
    from safetydrift.models import PromptFormat, default_device
    from safetydrift.params import get
    from safetydrift.response_classes import ResponseClassSettings, classify_responses
    from safetydrift.training.run import train_cell
    from safetydrift.training.settings import train_settings

    params = spec["params"]
    workspace = Path(spec["workspace"])
    settings = train_settings(params, spec["method"], spec["lr"])
    pairs = read_pairs(workspace / "data/mtpref/train.jsonl")
    if spec["train_rows"] is not None:
        pairs = pairs[: spec["train_rows"]]
    out = Path(spec["run_dir"])
    started = time.perf_counter()
    result = train_cell(settings, workspace / "models/base", pairs, out / "model", out / "work")
    train_seconds = time.perf_counter() - started

    generation = GenerationSettings.from_params(get(params, "generation"))
    prompt_format = PromptFormat.from_params(get(params, "prompt", None))
    final = list_checkpoints(out / "model")[-1:]
    device = default_device()

    def generate(conversations: list, ids: list) -> list[dict[str, Any]]:
        (checkpoint,) = generate_for_checkpoints(
            workspace / "models/base", final, conversations, ids, generation, device, prompt_format
        )
        return checkpoint.rows

    refusal_prompts = PromptSettings.from_params(get(params, "refusal.prompts", {}))
    advbench = read_advbench(workspace / "data/advbench.jsonl")[: spec["prompts"]]
    refusal_rows = generate(
        [refusal_prompts.conversation(row["prompt"]) for row in advbench],
        [row["id"] for row in advbench],
    )
    judge = str(get(params, "report.primary_judge", "keywords-kempermann2025"))
    verdicts = judge_responses([row["response"] for row in refusal_rows], [judge])[judge]
    classes = classify_responses(
        [row["prompt"] for row in refusal_rows],
        [row["response"] for row in refusal_rows],
        [row["finish_reason"] for row in refusal_rows],
        ResponseClassSettings.from_params(get(params, "refusal.response_class", None)),
    )
    translations = []
    if spec["chrf_sentences"] != 0:
        chrf_prompts = PromptSettings.from_params(get(params, "chrf.prompts", {}))
        test = read_pairs(workspace / "data/mtpref/test.jsonl")[: spec["chrf_sentences"]]
        rows = generate(
            [chrf_prompts.conversation(pair.source_text) for pair in test], list(range(len(test)))
        )
        translations = [
            {"response": row["response"], "reference": pair.chosen}
            for row, pair in zip(rows, test, strict=True)
        ]
    return {
        "losses": result.losses,
        "final_loss": result.losses[-1] if result.losses else None,
        "steps": result.steps,
        "determinism": result.determinism,
        "train_seconds": train_seconds,
        "prompts": [row["prompt"] for row in refusal_rows],
        "responses": [row["response"] for row in refusal_rows],
        "refused": [verdict.refusal for verdict in verdicts],
        "classes": [verdict.label for verdict in classes],
        "judge": judge,
        "translations": translations,
    }


# --------------------------------------------------------------------------------------------
# Two runs compared


def compare_runs(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    from safetydrift.metrics import corpus_chrf

    losses = list(zip(first["losses"], second["losses"], strict=False))
    rates = [sum(run["refused"]) / len(run["refused"]) for run in (first, second)]
    comparison = {
        "steps": [first["steps"], second["steps"]],
        "loss_max_abs_difference": max((abs(a - b) for a, b in losses), default=None),
        "losses_identical": first["losses"] == second["losses"],
        "final_loss": [first["final_loss"], second["final_loss"]],
        "prompts": len(first["responses"]),
        "refusal_judge": first["judge"],
        "refusal_rate": rates,
        "refusal_difference": rates[1] - rates[0],
        "refusal_disagreements": sum(
            a != b for a, b in zip(first["refused"], second["refused"], strict=True)
        ),
        "response_disagreements": sum(
            a != b for a, b in zip(first["responses"], second["responses"], strict=True)
        ),
        "class_counts": [dict(sorted(Counter(run["classes"]).items())) for run in (first, second)],
        "class_disagreements": sum(
            a != b for a, b in zip(first["classes"], second["classes"], strict=True)
        ),
        "train_seconds": [first["train_seconds"], second["train_seconds"]],
        "determinism": first["determinism"],
    }
    if first["translations"]:
        scores = [
            corpus_chrf(
                [t["response"] for t in run["translations"]],
                [t["reference"] for t in run["translations"]],
            )
            for run in (first, second)
        ]
        comparison |= {
            "sentences": len(first["translations"]),
            "chrf": scores,
            "chrf_difference": scores[1] - scores[0],
            "translation_disagreements": sum(
                a["response"] != b["response"]
                for a, b in zip(first["translations"], second["translations"], strict=True)
            ),
        }
    return comparison


def run_params(params: dict[str, Any], mode: str, max_new_tokens: int | None) -> dict[str, Any]:
    params = copy.deepcopy(params)
    deterministic = mode == "deterministic"
    params["train"]["deterministic"] = deterministic
    params["generation"]["deterministic"] = deterministic
    params["train"]["checkpoint_fractions"] = [1.0]  # only the final checkpoint is compared
    if max_new_tokens is not None:
        params["generation"]["max_new_tokens"] = max_new_tokens
    return params


def run_in_process(spec: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """`run_once` in a fresh Python process (as a DVC stage runs), its result read back."""
    spec_file = scratch / "spec.json"
    result_file = scratch / "result.json"
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    command = [sys.executable, __file__, "--run-one", str(spec_file), "--result", str(result_file)]
    env = dict(os.environ)
    if spec["params"]["train"].get("deterministic"):
        # This process trains and then generates: cuBLAS takes its workspace setting when CUDA
        # starts, in training, so generation's check needs it in the environment from the
        # start (a DVC stage is one process per step and sets it itself before CUDA starts).
        env["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG
    subprocess.run(command, check=True, env=env)
    return json.loads(result_file.read_text(encoding="utf-8"))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    workspace = args.workspace.resolve()
    params = yaml.safe_load((args.params or workspace / "params.yaml").read_text())
    train_rows = args.train_rows
    if args.steps is not None:
        train_rows = args.steps * int(params["train"]["effective_batch_size"])
    modes = list(MODES) if args.deterministic else ["fast"]
    out = args.out.resolve() if args.out else None
    runs_dir = out.parent / "determinism-runs" if out else None
    report: dict[str, Any] = {
        "workspace": str(workspace),
        "learning_rate": args.lr,
        "train_rows": train_rows,
        "prompts": args.prompts,
        "chrf_sentences": args.chrf_sentences,
        "methods": {},
    }
    for method in args.methods.split(","):
        report["methods"][method] = {}
        for mode in modes:
            runs = []
            for attempt in (1, 2):
                with tempfile.TemporaryDirectory(prefix="bench-determinism-") as scratch:
                    spec = {
                        "params": run_params(params, mode, args.max_new_tokens),
                        "workspace": str(workspace),
                        "method": method,
                        "lr": args.lr,
                        "train_rows": train_rows,
                        "prompts": args.prompts,
                        "chrf_sentences": args.chrf_sentences,
                        "run_dir": str(Path(scratch) / "run"),
                    }
                    runs.append(run_in_process(spec, Path(scratch)))
                if runs_dir is not None:
                    runs_dir.mkdir(parents=True, exist_ok=True)
                    path = runs_dir / f"{method}-{mode}-{attempt}.json"
                    path.write_text(json.dumps(runs[-1]), encoding="utf-8")
            report["methods"][method][mode] = compare_runs(*runs)
            if out is not None:  # what is measured so far survives a session cut short
                out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def judge_runs(args: argparse.Namespace) -> dict[str, Any]:
    """Judge the kept runs of `--out`'s report with the model judges of `harm.judges` (the
    answers only, or the classes `harm.judged_classes` names, as `judge_harm` does) and add each
    comparison's `harm`."""
    from safetydrift.harm import harmful_answers, judge_selected, judged_classes
    from safetydrift.model_judges.judging import build_model_judge
    from safetydrift.model_judges.spec import judge_specs
    from safetydrift.models import default_device
    from safetydrift.params import get

    if args.out is None or not args.out.exists():
        raise SystemExit("--judge-runs judges the runs of an existing report: give it as --out")
    out = args.out.resolve()
    report = json.loads(out.read_text(encoding="utf-8"))
    workspace = args.workspace.resolve()
    params = yaml.safe_load((args.params or workspace / "params.yaml").read_text())
    confidence = float(get(params, "harm.confidence", 0.95))
    selected = judged_classes(params)
    device = default_device()
    specs = judge_specs(params, args.judge_models or workspace / "models" / "judges")
    judges = {name: build_model_judge(spec, device) for name, spec in specs.items()}
    for judge in judges.values():
        judge.load()
    runs_dir = out.parent / "determinism-runs"
    for method, modes in report["methods"].items():
        for mode, comparison in modes.items():
            runs = []
            for attempt in (1, 2):
                path = runs_dir / f"{method}-{mode}-{attempt}.json"
                run = json.loads(path.read_text(encoding="utf-8"))
                if "classes" not in run:
                    raise SystemExit(f"{path}: no response classes (measured by an older version)")
                runs.append(run)
            judged = [
                judge_selected(judges, r["prompts"], r["responses"], r["classes"], selected)
                for r in runs
            ]
            comparison["harm"] = {}
            for name in judges:
                counts = [
                    harmful_answers(r["classes"], j.verdicts[name], confidence)
                    for r, j in zip(runs, judged, strict=True)
                ]
                flags = [
                    [c == "answer" and v is not None and v.harmful is True for c, v in pairs]
                    for pairs in (
                        zip(r["classes"], j.verdicts[name], strict=True)
                        for r, j in zip(runs, judged, strict=True)
                    )
                ]
                comparison["harm"][name] = {
                    "harmful_answer_rate": [c["harmful_answer_rate"] for c in counts],
                    "harmful_answers": [c["harmful_answers"] for c in counts],
                    "unknown": [c["unknown"] for c in counts],
                    "harmful_disagreements": sum(a != b for a, b in zip(*flags, strict=True)),
                    "judge_seconds": [j.seconds[name] for j in judged],
                }
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def harm_cell(harm: dict[str, Any] | None) -> str:
    """Each judge's harmful-answer rates of the two runs (— before `--judge-runs`)."""
    if not harm:
        return "—"
    rates = {
        name: " / ".join("—" if r is None else f"{r:.3f}" for r in h["harmful_answer_rate"])
        for name, h in harm.items()
    }
    return "; ".join(f"{name} {value}" for name, value in rates.items())


def table(report: dict[str, Any]) -> str:
    header = ["method", "mode", "loss max |Δ|", "final loss", "refusal", "Δ refusal"]
    header += ["refusal ≠", "responses ≠", "classes ≠", "harmful", "chrF", "Δ chrF"]
    rows = [header]
    for method, modes in report["methods"].items():
        for mode, c in modes.items():
            loss = c["loss_max_abs_difference"]
            rows.append(
                [
                    method,
                    mode,
                    "—" if loss is None else f"{loss:.3g}",
                    " / ".join("—" if v is None else f"{v:.4f}" for v in c["final_loss"]),
                    " / ".join(f"{v:.3f}" for v in c["refusal_rate"]),
                    f"{c['refusal_difference']:+.3f}",
                    f"{c['refusal_disagreements']}/{c['prompts']}",
                    f"{c['response_disagreements']}/{c['prompts']}",
                    f"{c['class_disagreements']}/{c['prompts']}" if "class_counts" in c else "—",
                    harm_cell(c.get("harm")),
                    " / ".join(f"{v:.2f}" for v in c["chrf"]) if "chrf" in c else "—",
                    f"{c['chrf_difference']:+.2f}" if "chrf" in c else "—",
                ]
            )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workspace", type=Path, default=Path("."))
    parser.add_argument("--params", type=Path, help="default: the workspace's params.yaml")
    parser.add_argument("--methods", default="full,lora,qlora,dpo")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--deterministic", action="store_true", help="also two deterministic runs")
    parser.add_argument("--steps", type=int, help="train on the rows of the first N steps only")
    parser.add_argument("--train-rows", type=int, help="train on the first N rows only")
    parser.add_argument("--prompts", type=int, help="the first N AdvBench prompts (default: all)")
    parser.add_argument("--chrf-sentences", type=int, help="the first N test sentences; 0: none")
    parser.add_argument("--max-new-tokens", type=int, help="override generation.max_new_tokens")
    parser.add_argument("--out", type=Path, help="the JSON report")
    parser.add_argument(
        "--judge-runs", action="store_true", help="judge the kept runs of --out's report for harm"
    )
    parser.add_argument("--judge-models", type=Path, help="default: the workspace's models/judges")
    parser.add_argument("--run-one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one is not None:
        spec = json.loads(args.run_one.read_text(encoding="utf-8"))
        args.result.write_text(json.dumps(run_once(spec)), encoding="utf-8")
        return None
    report = judge_runs(args) if args.judge_runs else measure(args)
    print(table(report))
    return report


if __name__ == "__main__":
    main()
