"""The `safetydrift` command: presets, rescoring without a model, and the stage entry point."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Errors that come from the user's input (params, data, model paths): shown as one clear line
# instead of a traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    RuntimeError,
    FloatingPointError,
)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("alembic", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_command(function: Callable[..., Any], *args: Any) -> None:
    """Run `function`; a bad-input error exits 1 with its message and no traceback."""
    configure_logging()
    try:
        function(*args)
    except USER_ERRORS as error:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def run_stage(function: Callable[..., Any], *args: Any) -> None:
    """A DVC stage's process: run its function, then end the process (exit status 0).

    Bytecode is cached where the environment forbids writing it, and a finished stage skips the
    interpreter's teardown (`safetydrift.process`). A failed stage exits as `run_command` does.
    """
    from safetydrift.process import enable_bytecode_cache, exit_now

    enable_bytecode_cache()
    run_command(function, *args)
    exit_now(0)


def _preset(args: argparse.Namespace) -> None:
    from safetydrift.params import apply_preset, available_presets

    if args.name is None:
        print("\n".join(available_presets()))
        return
    target = apply_preset(args.name)
    print(f"{target} is now the `{args.name}` preset")


def _judge(args: argparse.Namespace) -> None:
    from safetydrift.rescore import judge_file

    summary = judge_file(
        args.file,
        args.judge,
        prompt_column=args.prompt_column,
        response_column=args.response_column,
        output=args.output,
    )
    print(json.dumps(summary))


def _chrf(args: argparse.Namespace) -> None:
    from safetydrift.rescore import chrf_file

    summary = chrf_file(
        args.file,
        hypothesis_column=args.hypothesis_column,
        reference_column=args.reference_column,
        n_resamples=args.bootstrap_resamples,
        seed=args.seed,
    )
    print(json.dumps(summary))


def _report(args: argparse.Namespace) -> None:
    from safetydrift.params import load_params
    from safetydrift.pipeline import report

    result = report(load_params(args.params))
    if result.missing_cells:
        print(f"missing cells: {', '.join(result.missing_cells)}", file=sys.stderr)


def _repro(args: argparse.Namespace) -> None:
    from safetydrift.timing import timed_repro

    dvc_args = args.dvc_args[1:] if args.dvc_args[:1] == ["--"] else args.dvc_args
    sys.exit(timed_repro(dvc_args, Path(args.timings)))


def _grid(args: argparse.Namespace) -> None:
    from safetydrift.grid import run_grid, write_summary
    from safetydrift.timing import markdown_table

    run = run_grid(Path.cwd(), args.cells, jobs=args.jobs, timings_dir=args.timings)
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
    from safetydrift.timing import combine, markdown_table

    combined = combine(args.files)
    print(markdown_table(combined))
    if args.output:
        from safetydrift.io import write_json

        write_json(args.output, combined)


def _compare(args: argparse.Namespace) -> None:
    from safetydrift.compare import Settings, compare_paths, format_table

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
        from safetydrift.io import write_json

        write_json(args.json, report.to_dict())


def build_parser() -> argparse.ArgumentParser:
    from safetydrift.judges import judge_names

    parser = argparse.ArgumentParser(prog="safetydrift", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    preset = commands.add_parser("preset", help="make params.yaml one of presets/NAME.yaml")
    preset.add_argument("name", nargs="?", help="preset name; without it, list the presets")
    preset.set_defaults(handler=_preset)

    judge = commands.add_parser("judge", help="judge saved responses for refusal (no model)")
    judge.add_argument("file", help="a .jsonl or .csv file of responses")
    judge.add_argument(
        "--judge",
        action="append",
        required=True,
        choices=judge_names(),
        help="judge name; repeat for several",
    )
    judge.add_argument("--prompt-column", default="prompt")
    judge.add_argument("--response-column", default="response")
    judge.add_argument("--output", help="write per-row verdicts here (.jsonl or .csv)")
    judge.set_defaults(handler=_judge)

    chrf = commands.add_parser("chrf", help="corpus chrF of saved translations (no model)")
    chrf.add_argument("file", help="a .jsonl or .csv file with hypotheses and references")
    chrf.add_argument("--hypothesis-column", default="response")
    chrf.add_argument("--reference-column", default="reference")
    chrf.add_argument("--bootstrap-resamples", type=int, default=1000)
    chrf.add_argument("--seed", type=int, default=0)
    chrf.set_defaults(handler=_chrf)

    report = commands.add_parser("report", help="write reports/ from whatever metrics exist now")
    report.add_argument("--params", default="params.yaml")
    report.set_defaults(handler=_report)

    repro = commands.add_parser(
        "repro", help="`dvc repro` that also records every stage's wall time (DVC args after --)"
    )
    repro.add_argument("--timings", default="reports/timings.json", help="where to write them")
    repro.add_argument("dvc_args", nargs=argparse.REMAINDER, help="arguments for `dvc repro`")
    repro.set_defaults(handler=_repro)

    grid = commands.add_parser(
        "grid", help="the base model, the grid's cells (N at a time) and the report, timed"
    )
    grid.add_argument("cells", nargs="*", help="cells such as lora-5e-05 (default: all)")
    grid.add_argument(
        "--jobs", type=int, default=1, help="cells run side by side on the same machine"
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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    from safetydrift.process import enable_bytecode_cache

    # `grid` and `repro` start DVC and the stages: they share the cache too.
    enable_bytecode_cache()
    args = build_parser().parse_args(argv)
    run_command(args.handler, args)


if __name__ == "__main__":
    main()
