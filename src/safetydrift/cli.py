"""The `safetydrift` command: presets, rescoring without a model, reports, the grid, and the
safety check of a fine-tuned model."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetydrift.files import write_json
from safetydrift.params import apply_preset, available_presets, get, load_params
from safetydrift.process import enable_bytecode_cache
from safetydrift.repro import combine, markdown_table, timed_repro
from safetydrift.restore import report_restored, restore_uncached_outputs
from safetydrift.stage import USER_ERRORS, run_user_command

# The heavier subcommands import their own modules inside their handlers: importing them all
# here (ray, matplotlib, mlflow, scipy among them) adds about 1.5 s to every command, `--help`
# and the one-line errors of bad input included (measured on the 2-core CI machine,
# 2026-12-02). The modules above cost `--help` a few ms together (same machine, 2026-12).
#
# `response_classes` and `judges` (which `--help` needs too) are imported once `main` has
# enabled the bytecode cache: on an image that ships no .pyc files (the GPU image), importing
# them before would compile them and difflib again in every command (~50 ms of compiling on
# the CI machine).


def _preset(args: argparse.Namespace) -> None:
    if args.name is None:
        print("\n".join(available_presets()))
        return
    target = apply_preset(args.name, force=args.force)
    print(f"{target} is now the `{args.name}` preset")


def _response_class_settings(params_path: str | None) -> Any:
    # After the bytecode cache (top of module)
    from safetydrift.response_classes import PARAMS_KEY, ResponseClassSettings

    if params_path is None:
        return ResponseClassSettings()
    return ResponseClassSettings.from_params(get(load_params(params_path), PARAMS_KEY, None))


def _judge(args: argparse.Namespace) -> None:
    from safetydrift.rescore import judge_file  # ~0.15 s (NumPy), for this command only

    summary = judge_file(
        args.file,
        args.judge,
        prompt_column=args.prompt_column,
        response_column=args.response_column,
        output=args.output,
        finish_column=args.finish_column,
        response_class_settings=_response_class_settings(args.params),
    )
    print(json.dumps(summary))


def _review_export(args: argparse.Namespace) -> None:
    # ~0.15 s (NumPy), for this command only
    from safetydrift.review import classify_generations, export_review_sample, read_generations

    rows = classify_generations(
        read_generations(args.generations), _response_class_settings(args.params)
    )
    sample = export_review_sample(rows, args.per_stratum, args.seed, args.output)
    print(json.dumps({"rows": len(rows), "sampled": len(sample), "output": str(args.output)}))


def _review_import(args: argparse.Namespace) -> None:
    from safetydrift.review import import_review_labels  # ~0.15 s (NumPy), this command only

    print(json.dumps(import_review_labels(args.file, args.output)))


def _chrf(args: argparse.Namespace) -> None:
    from safetydrift.rescore import chrf_file  # ~0.15 s (NumPy), for this command only

    summary = chrf_file(
        args.file,
        hypothesis_column=args.hypothesis_column,
        reference_column=args.reference_column,
        n_resamples=args.bootstrap_resamples,
        seed=args.seed,
    )
    print(json.dumps(summary))


def _report(args: argparse.Namespace) -> None:
    # The DVC stage's own script, so that the command and `dvc repro` write the same report.
    script = Path("stages/report.py")
    if not script.exists():
        raise FileNotFoundError(f"{script}: no such file; run `safetydrift report` in the project")
    sys.exit(subprocess.call([sys.executable, str(script)]))


def _repro(args: argparse.Namespace) -> None:
    dvc_args = args.dvc_args[1:] if args.dvc_args[:1] == ["--"] else args.dvc_args
    sys.exit(timed_repro(dvc_args, Path(args.timings), write_lock_once=args.write_lock_once))


def _restore(args: argparse.Namespace) -> None:
    restored, unrestorable = restore_uncached_outputs(Path.cwd())
    print(report_restored(restored, unrestorable) or "nothing to restore: every output is there")
    sys.exit(1 if unrestorable else 0)


def _grid(args: argparse.Namespace) -> None:
    # ~40 ms (the grid's plan reads the training settings, models, evaluation sets): half again
    # the time of `--help`, which needs none of it.
    from safetydrift.disk import describe
    from safetydrift.grid.run import disk_estimate, run_grid, write_summary

    jobs = args.jobs if args.jobs is not None else int(get(load_params(), "runtime.jobs", 1))
    if args.estimate:
        print(describe(disk_estimate(Path.cwd(), args.cells, jobs)))
        return
    run = run_grid(
        Path.cwd(),
        args.cells,
        jobs=jobs,
        timings_dir=args.timings,
        check_disk=not args.skip_disk_check,
        gpus=args.gpus,
        gpus_per_cell_share=args.gpus_per_cell,
        retries=args.retries,
        address=args.address,
        durations=args.durations,
    )
    summary = write_summary(run, args.summary)
    print(markdown_table(summary))
    print(
        f"grid: {run.wall_seconds} s end to end with {run.parallel} cell(s) at a time; "
        f"timings in {args.timings}/ and {args.summary}"
    )
    if run.failed:
        print(f"failed: {' '.join(run.failed)}", file=sys.stderr)
        sys.exit(1)


def _timings(args: argparse.Namespace) -> None:
    combined = combine(args.files)
    print(markdown_table(combined))
    if args.output:
        write_json(args.output, combined)


def _compare(args: argparse.Namespace) -> None:
    from safetydrift.compare.pairing import Settings  # ~0.95 s with the two below: SciPy
    from safetydrift.compare.revisions import compare_paths
    from safetydrift.compare.table import format_table

    settings = Settings(
        margin=args.margin,
        chrf_margin=args.chrf_margin,
        alpha=args.alpha,
        confidence=args.confidence,
        n_resamples=args.bootstrap_resamples,
        seed=args.seed,
    )
    report = compare_paths(args.a, args.b, settings, judges=args.judge)
    print(format_table(report))
    if args.json:
        write_json(args.json, report.to_dict())


def _check(args: argparse.Namespace) -> None:
    # ~1.6 s (SciPy, the hub client), for this command only
    from safetydrift.check import (
        CHECK_JSON,
        CHECK_MD,
        EXIT_ERROR,
        CheckOptions,
        markdown,
        parse_evaluations,
        run_check,
    )

    # Exit status 1 means a regression, so nothing else may end with it: bad input and errors
    # end with 2.
    try:
        options = CheckOptions(
            base=args.base,
            tuned=args.tuned,
            adapter=args.adapter,
            evaluations=None if args.evaluations is None else parse_evaluations(args.evaluations),
            max_drop=args.max_drop,
            out=args.out,
            force=args.force,
            params=args.params,
            limit=args.limit,
            device=args.device,
            seed=args.seed,
            alpha=args.alpha,
            refusal_judge=args.refusal_judge,
            gate_benign=args.gate_benign,
            judge_model=args.judge_model,
            judge_format=args.judge_format,
            judge_revision=args.judge_revision,
            rubric_dir=args.rubric_dir,
            base_revision=args.base_revision,
            tuned_revision=args.tuned_revision,
            backend=args.backend,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            dtype=args.dtype,
            prompt_format=args.prompt_format,
            date_string=args.date_string,
        )
        record, assessment = run_check(options)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except Exception:
        traceback.print_exc()
        print(
            "error: the check could not be completed (above); nothing was written", file=sys.stderr
        )
        sys.exit(EXIT_ERROR)
    print(markdown(record, assessment).split("\n## ")[0].rstrip())
    print(f"\nwritten: {args.out / CHECK_JSON}, {args.out / CHECK_MD}")
    sys.exit(assessment.exit_code)


def build_parser() -> argparse.ArgumentParser:
    # After the bytecode cache (top of module)
    from safetydrift.judges import judge_names
    from safetydrift.response_classes import RESPONSE_CLASS_JUDGE

    parser = argparse.ArgumentParser(prog="safetydrift", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    preset = commands.add_parser("preset", help="make params.yaml one of presets/NAME.yaml")
    preset.add_argument("name", nargs="?", help="preset name; without it, list the presets")
    preset.add_argument(
        "--force",
        action="store_true",
        help="replace a params.yaml that differs from every preset (kept as params.yaml.bak)",
    )
    preset.set_defaults(handler=_preset)

    judge = commands.add_parser("judge", help="judge saved responses for refusal (no model)")
    judge.add_argument("file", help="a .jsonl or .csv file of responses")
    judge.add_argument(
        "--judge",
        action="append",
        required=True,
        choices=[*judge_names(with_aliases=True), RESPONSE_CLASS_JUDGE],
        help="judge name; repeat for several",
    )
    judge.add_argument(
        "--prompt-column", default="prompt", help="the requests (response-class needs them)"
    )
    judge.add_argument("--response-column", default="response")
    judge.add_argument(
        "--finish-column", help="finish reasons (`length` = cut at the token limit), optional"
    )
    judge.add_argument(
        "--params", help="read response-class thresholds (refusal.response_class) from this file"
    )
    judge.add_argument("--output", help="write per-row verdicts here (.jsonl or .csv)")
    judge.set_defaults(handler=_judge)

    review = commands.add_parser(
        "review", help="human review of responses: export a sample, import the labels"
    )
    review_commands = review.add_subparsers(dest="review_command", required=True)
    export = review_commands.add_parser(
        "export", help="a stratified sample of generations per (cell, response class) as CSV"
    )
    export.add_argument(
        "--generations",
        nargs="+",
        required=True,
        type=Path,
        help="generation .jsonl files, or folders searched for them (cell = folder name)",
    )
    export.add_argument("--per-stratum", type=int, required=True)
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--params", help="read response-class thresholds from this file")
    export.add_argument("--output", type=Path, required=True, help="the review CSV to write")
    export.set_defaults(handler=_review_export)
    labels = review_commands.add_parser(
        "import", help="check a filled-in review CSV's labels and write them as JSON Lines"
    )
    labels.add_argument("file", type=Path, help="the review CSV with its human_label column")
    labels.add_argument("--output", type=Path, required=True, help="the labels .jsonl to write")
    labels.set_defaults(handler=_review_import)

    chrf = commands.add_parser("chrf", help="corpus chrF of saved translations (no model)")
    chrf.add_argument("file", help="a .jsonl or .csv file with hypotheses and references")
    chrf.add_argument("--hypothesis-column", default="response")
    chrf.add_argument("--reference-column", default="reference")
    chrf.add_argument("--bootstrap-resamples", type=int, default=1000)
    chrf.add_argument("--seed", type=int, default=0)
    chrf.set_defaults(handler=_chrf)

    report = commands.add_parser("report", help="write reports/ from whatever metrics exist now")
    report.set_defaults(handler=_report)

    repro = commands.add_parser(
        "repro", help="`dvc repro` that also records every stage's wall time (DVC args after --)"
    )
    repro.add_argument("--timings", default="reports/timings.json", help="where to write them")
    repro.add_argument(
        "--write-lock-once",
        action="store_true",
        help="write dvc.lock when DVC ends, not after every stage (restoring many stages from "
        "the run-cache; `safetydrift grid` restores cells so)",
    )
    repro.add_argument("dvc_args", nargs=argparse.REMAINDER, help="arguments for `dvc repro`")
    repro.set_defaults(handler=_repro)

    restore = commands.add_parser(
        "restore",
        help="copy back the metrics a failed `dvc repro` deleted, as dvc.lock records them",
    )
    restore.set_defaults(handler=_restore)

    grid = commands.add_parser(
        "grid", help="the base model, the grid's cells (N at a time) and the report, timed"
    )
    grid.add_argument("cells", nargs="*", help="cells such as lora-5e-05-42 (default: all)")
    grid.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="cells side by side on a machine without GPUs; with GPUs, the default share is "
        "the GPUs divided by this, at most one each (default: params' `runtime.jobs`)",
    )
    grid.add_argument(
        "--gpus",
        help="GPUs of this machine the cells run on, e.g. 0,1 (default: CUDA_VISIBLE_DEVICES, "
        "else all)",
    )
    grid.add_argument(
        "--gpus-per-cell",
        type=float,
        default=None,
        metavar="SHARE",
        help="the share of a GPU each cell holds: 0.2 runs five cells on each GPU (default: "
        "see --jobs; `train.num_processes` whole GPUs for a cell trained on several)",
    )
    grid.add_argument(
        "--retries",
        type=int,
        default=1,
        help="times a failed cell runs again, after the others (default: 1)",
    )
    grid.add_argument(
        "--address",
        help="join this Ray cluster (`auto`: the one `ray start` began on this machine) "
        "instead of starting Ray here; see docs/running.md",
    )
    grid.add_argument(
        "--estimate",
        action="store_true",
        help="print the disk the cells will fill and the free space, and run nothing",
    )
    grid.add_argument(
        "--skip-disk-check",
        action="store_true",
        help="train even when the disk estimate says the outputs will not fit",
    )
    grid.add_argument(
        "--durations",
        type=Path,
        metavar="DIR",
        help="a previous grid's --timings directory: side by side, the cells then start in the "
        "order whose schedule of its measured times is shortest (default: slowest methods "
        "first, the base model last)",
    )
    grid.add_argument("--timings", type=Path, default=Path("reports/timings"))
    grid.add_argument("--summary", type=Path, default=Path("reports/grid-timings.json"))
    grid.set_defaults(handler=_grid)

    timings = commands.add_parser(
        "timings", help="sum the stage timings of several `safetydrift repro` runs"
    )
    timings.add_argument("files", nargs="+", type=Path, help="timings JSON files")
    timings.add_argument("--output", type=Path, help="also write the combined record here")
    timings.set_defaults(handler=_timings)

    compare = commands.add_parser(
        "compare",
        help="paired tests of results B against A (folders or git revisions): McNemar, "
        "paired bootstrap, Holm, equivalence",
    )
    compare.add_argument("a", help="results folder (metrics/, evals/, ...) or git revision")
    compare.add_argument("b", help="results folder or git revision, compared against A")
    compare.add_argument(
        "--margin", type=float, default=0.05, help="refusal equivalence margin (0.05: 5 points)"
    )
    compare.add_argument(
        "--chrf-margin", type=float, default=1.0, help="chrF equivalence margin in chrF points"
    )
    compare.add_argument("--alpha", type=float, default=0.05, help="level of every test")
    compare.add_argument("--confidence", type=float, default=0.95, help="level of the intervals")
    compare.add_argument(
        "--judge", action="append", help="only this judge's verdicts; repeat for several"
    )
    compare.add_argument("--bootstrap-resamples", type=int, default=1000)
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--json", type=Path, help="also write every comparison here")
    compare.set_defaults(handler=_compare)

    check = commands.add_parser(
        "check",
        help="is a fine-tuned model less safe than its base? generate, judge, paired tests; "
        "exit 0 pass, 1 regression, 2 bad input",
    )
    check.add_argument(
        "--base", required=True, help="the base model: local folder, hub id or .gguf"
    )
    check.add_argument(
        "--tuned",
        required=True,
        help="the fine-tuned model (with --adapter: a PEFT adapter folder)",
    )
    check.add_argument("--adapter", action="store_true", help="TUNED is a PEFT adapter on BASE")
    check.add_argument(
        "--evaluations",
        help="sets, comma-separated: advbench (default), advbench-plain, harmbench, strongreject, "
        "benign-edgy, ialpaca, benign-pairs, or a set defined in --params",
    )
    check.add_argument(
        "--max-drop",
        type=float,
        help="largest worsening of a gated rate that passes (default 0.05: 5 points)",
    )
    check.add_argument("--out", type=Path, default=Path("check"), help="output folder (check/)")
    check.add_argument("--force", action="store_true", help="replace the earlier check in --out")
    check.add_argument(
        "--params",
        type=Path,
        help="a params file (a preset, params.yaml, or just the keys to change) over the "
        "defaults: decoding, framing, judges, evaluation sets",
    )
    check.add_argument("--limit", type=int, help="only the first N prompts of each set")
    check.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when there is one)")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--alpha", type=float, help="level of the tests (default 0.05)")
    check.add_argument(
        "--refusal-judge",
        choices=[*judge_names(with_aliases=True), RESPONSE_CLASS_JUDGE],
        help="judge of the gated refusal rate (default keywords-kempermann2025, the paper's)",
    )
    check.add_argument(
        "--gate-benign",
        action="store_true",
        help="fail on over-refusal of benign sets too (default: reported only)",
    )
    check.add_argument("--judge-model", help="a model judge of harm: local folder, hub id or .gguf")
    check.add_argument(
        "--judge-format",
        default="harmbench",
        help="how the judge model is asked: harmbench (default), llama-guard, strongreject",
    )
    check.add_argument("--judge-revision", help="hub revision of --judge-model")
    check.add_argument(
        "--rubric-dir", help="StrongREJECT rubric files (--judge-format strongreject)"
    )
    check.add_argument("--base-revision", help="hub revision of --base")
    check.add_argument("--tuned-revision", help="hub revision of --tuned")
    check.add_argument("--backend", help="generation engine: static (default), hf, vllm")
    check.add_argument("--max-new-tokens", type=int, help="default 256")
    check.add_argument("--batch-size", type=int, help="prompts decoded together (default 64)")
    check.add_argument("--dtype", help="bfloat16 (default), float16, float32")
    check.add_argument(
        "--prompt-format",
        help="chat-template (default: each model's own), chatml, authors-llama3, or a format "
        "string holding {user} and {assistant}",
    )
    check.add_argument(
        "--date-string",
        help="the date a chat template that writes today's date is rendered with, e.g. "
        "'26 Jul 2024' (Llama 3's): the prompts stay the same every day",
    )
    check.set_defaults(handler=_check)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    # `grid` and `repro` start DVC and the stages: they share the cache too.
    enable_bytecode_cache()
    args = build_parser().parse_args(argv)
    run_user_command(args.handler, args)


if __name__ == "__main__":
    main()
